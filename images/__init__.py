"""strata's image store: content-addressed layers, image records, `load`/`import` of archives.

- `store`: the layout under the state root, image records, tags, removal and pruning;
- `extract`: safe extraction of one layer tar (the hostile-archive rules live there);
- `load`: docker-archive / OCI archive / OCI layout input with every digest verified;
- `cli`: the `strata` subcommands and the runtime's image resolver.
"""
