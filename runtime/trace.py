"""Start-up timing marks for measuring (`STRATA_TRACE=1 strata run ...`): each mark is one line
`strata-trace <epoch ms> <pid> <what>` on stderr, comparable across the runtime's processes."""

from __future__ import annotations

import os
import time

ENABLED = bool(os.environ.get("STRATA_TRACE"))


def mark(what: str) -> None:
    if ENABLED:
        os.write(2, f"strata-trace {time.time() * 1000:.1f} {os.getpid()} {what}\n".encode())
