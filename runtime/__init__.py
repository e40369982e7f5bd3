"""strata's container runtime: run a command in new namespaces on a strata union rootfs.

The command line is `runtime.cli` (the `strata run/create/start/exec/ps/stop/kill/rm/logs/inspect`
subcommands). A container is made by `runtime.create`, run by `runtime.monitor` (its processes:
`runtime.pid1`, talking over `runtime.control`, signals relayed by `runtime.signals`), started,
stopped and removed by `runtime.lifecycle`, joined by `runtime.exec`; `runtime.images` holds the
image lookup that the image store extends.
"""
