"""strata's container runtime: run a command in new namespaces on a strata union rootfs.

The command line is `runtime.cli` (the `strata run/create/start/exec/ps/stop/kill/rm/logs/inspect`
subcommands); `runtime.container` holds the lifecycle, `runtime.images` the image lookup that the
image store extends.
"""
