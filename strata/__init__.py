"""The `strata` command: the one module above the union, the runtime, the image store and the
bench, gathering their subcommands into one program (see `strata.cli`).

Only the command lives here. The packages below keep their own top-level names (`unionfs`,
`runtime`, `images`, `bench`), one folder per layer of the house.
"""
