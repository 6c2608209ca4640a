"""The reliability suite (issue 19): real processes in the lab, each case with its pass
criterion in its docstring and its assertions, and the figures it measured.

Every case records its figures with the ``figure`` fixture; the session ends with them as one
table (and as build/reliability/figures.json). ``make soak`` runs the same cases longer:
``DETOUR_SOAK_SECONDS`` (0 in CI) scales how long each load or fuzz case runs, see
``soak_seconds``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.lab import DETOUR_INIT, Netns, namespaces
from support.mesh_lab import MeshLab
from support.prereq import require, require_root_and_tools

ROOT = Path(__file__).resolve().parents[2]
FIGURES_FILE = ROOT / "build" / "reliability" / "figures.json"
_figures: list[dict] = []

Figure = Callable[[str, float, str, str], None]


def soak_seconds() -> float:
    """How long the soak asks each case to run (``make soak``); 0 in CI, where every case
    uses its own short bound."""
    value = os.environ.get("DETOUR_SOAK_SECONDS", "0")
    try:
        seconds = float(value)
    except ValueError:
        raise pytest.UsageError(f"DETOUR_SOAK_SECONDS={value!r}: expected seconds") from None
    if seconds < 0:
        raise pytest.UsageError(f"DETOUR_SOAK_SECONDS={value!r}: expected 0 or more")
    return seconds


@pytest.fixture(autouse=True)
def _prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("no_lab"):
        return
    require_root_and_tools("setpriv", "iptables-legacy-save", "iptables-nft-save", "curl")
    require(Path(DETOUR_INIT).exists(), f"{DETOUR_INIT} (run make setup)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_lab: a case that needs no namespace (fuzzing)")


@pytest.fixture
def netns() -> Iterator[Callable[[str], Netns]]:
    """A factory of bare namespaces (for init's cases), all deleted when the case ends."""
    with namespaces() as make:
        yield make


@pytest.fixture
def mesh_lab() -> Iterator[MeshLab]:
    lab = MeshLab.create("iptables")
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """``figure(name, value, unit, criterion)``: one row of the suite's table."""
    case = request.node.name

    def record(name: str, value: float, unit: str, criterion: str) -> None:
        _figures.append(
            {"case": case, "figure": name, "value": value, "unit": unit, "criterion": criterion}
        )

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _figures:
        return
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(_figures, indent=1) + "\n")
    terminalreporter.section("reliability figures")
    width = max(len(f"{row['case']} {row['figure']}") for row in _figures)
    for row in _figures:
        label = f"{row['case']} {row['figure']}"
        value = f"{row['value']:g} {row['unit']}"
        terminalreporter.write_line(f"{label:<{width}}  {value:>16}  ({row['criterion']})")
    terminalreporter.write_line(f"written to {FIGURES_FILE.relative_to(ROOT)}")
