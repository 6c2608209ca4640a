"""End-to-end tests run as root in namespaces they create; CI must be able to run them all."""

from __future__ import annotations

import pytest
from support.lab import DETOUR_INIT, namespaces
from support.prereq import require, require_root_and_tools


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    require_root_and_tools("setpriv", "iptables-legacy-save", "iptables-nft-save", "curl")
    from pathlib import Path

    require(Path(DETOUR_INIT).exists(), f"{DETOUR_INIT} (run make setup)")


@pytest.fixture
def lab():
    """A factory of namespaces, all deleted when the test ends."""
    with namespaces() as make:
        yield make
