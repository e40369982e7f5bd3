"""`python -m unionfs` is `strata mount`."""

import sys

from .cli import mount_main

sys.exit(mount_main(sys.argv[1:]))
