"""Fixtures for the sidecar's end-to-end tests: a fresh mesh lab per test."""

from __future__ import annotations

import pytest
from support.mesh_lab import MeshLab


@pytest.fixture
def mesh_lab():
    lab = MeshLab.create()
    try:
        yield lab
    finally:
        lab.destroy()
