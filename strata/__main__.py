"""`python -m strata` is `strata`."""

import sys

from .entry import strata_main

sys.exit(strata_main())
