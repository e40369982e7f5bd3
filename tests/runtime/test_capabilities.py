"""runtime.capabilities: the sets as docker computes them from --cap-add/--cap-drop."""

from __future__ import annotations

import pytest

from runtime import capabilities
from unionfs.errors import UsageError


def test_capability_sets_follow_docker() -> None:
    assert capabilities.mask(capabilities.DEFAULT) == 0x800405FB
    assert capabilities.resolve([], []) == capabilities.DEFAULT
    assert capabilities.resolve(["net_admin", "CAP_NET_RAW"], ["chown"]) == (
        capabilities.DEFAULT | {"NET_ADMIN", "NET_RAW"}
    ) - {"CHOWN"}
    assert capabilities.resolve(["KILL"], ["ALL"]) == {"KILL"}
    assert capabilities.resolve(["ALL"], ["MKNOD"]) == capabilities.available() - {"MKNOD"}
    assert capabilities.resolve(["KILL"], ["ALL"], privileged=True) == capabilities.available()
    assert capabilities.sorted_names({"SETFCAP", "CHOWN"}) == ["CAP_CHOWN", "CAP_SETFCAP"]
    assert capabilities.recorded(None) == capabilities.DEFAULT
    assert capabilities.recorded(["CAP_KILL"]) == {"KILL"}


@pytest.mark.parametrize("name", ["NET_WIZARD", "CAP_", "", "cap_all_of_them"])
def test_unknown_capabilities_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="unknown capability") as info:
        capabilities.resolve([name], [])
    assert info.value.exit_code == 125
