"""Fixtures for the image store tests: the runtime's `strata` fixture (a private state root, and a
teardown that fails the test if a mount or process is left behind) and archive builders."""

from __future__ import annotations

from tests.runtime.conftest import strata as strata
