"""strata's union filesystem: read-only lower layers under one writable upper layer, over FUSE.

The public surface is assembled here; the implementation lives in the modules.
"""

from .config import MountOptions as MountOptions
from .config import UnionConfig as UnionConfig
from .config import WhiteoutFormat as WhiteoutFormat
from .errors import UsageError as UsageError

__version__ = "0.1.0"
