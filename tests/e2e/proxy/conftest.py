"""Fixtures for the sidecar's end-to-end tests: a fresh mesh lab per test.

A module that sets ``OUTBOUND = True`` tests outbound interception: each of its tests that uses
the lab runs once per interception mode (iptables, eBPF), the same test body both times —
except those marked ``@interception_agnostic`` (support/mesh_lab.py), which run once.
"""

from __future__ import annotations

import pytest
from support.mesh_lab import INTERCEPTIONS, MeshLab


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "interception" not in metafunc.fixturenames:
        return
    if getattr(metafunc.module, "OUTBOUND", False) and not getattr(
        metafunc.function, "interception_agnostic", False
    ):
        metafunc.parametrize("interception", INTERCEPTIONS, indirect=True)


@pytest.fixture
def interception(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "iptables")


@pytest.fixture
def mesh_lab(interception: str):
    lab = MeshLab.create(interception)
    try:
        yield lab
    finally:
        lab.destroy()
