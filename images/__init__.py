"""strata's images: the content-addressed layer store and the commands that fill and use it.

images/README.md describes the store's layout, the checks and `build`. The modules:

- `store`: the layout under the state root, image records, tags, removal and pruning;
- `extract`: safe extraction of one layer tar (the hostile-archive rules live there);
- `tarsplit`: a layer's tar without file contents, so `save` gives back the exact bytes;
- `load`: docker-archive / OCI archive / OCI layout input with every digest verified;
- `save`: an image as an OCI or docker archive, its layers rebuilt and checked;
- `commit`: a container's upper dir as a changeset layer of a new image;
- `pause`: freezing a running container while `commit` reads it;
- `build`: `strata build`, one step per Dockerfile instruction, with a build cache;
- `dockerfile`: the Dockerfile parser and Docker's variable substitution (pure);
- `context`: the build context: `.dockerignore`, COPY/ADD sources and their content hash;
- `cli`: the `strata` subcommands (load, save, import, commit, build, images, rmi, tag,
  history, image) and the runtime's image resolver.
"""
