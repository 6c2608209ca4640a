"""``--allocator``: the environment each choice needs, and the errors that name the flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.platform.allocator import (
    JEMALLOC_CONF,
    AllocatorError,
    environment_for,
    find_jemalloc,
    jemalloc_loaded,
    use,
)

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def test_python_needs_no_change() -> None:
    assert environment_for("python", {}, None) is None


def test_jemalloc_preloads_the_library_and_routes_every_allocation_to_it() -> None:
    changes = environment_for("jemalloc", {"LD_PRELOAD": "/lib/other.so"}, LIB)
    assert changes == {
        "PYTHONMALLOC": "malloc",
        "MALLOC_CONF": JEMALLOC_CONF,
        "LD_PRELOAD": f"{LIB} /lib/other.so",  # what was preloaded stays
    }


def test_an_environment_that_already_asks_for_jemalloc_is_left_alone() -> None:
    environ = {"PYTHONMALLOC": "malloc", "MALLOC_CONF": JEMALLOC_CONF, "LD_PRELOAD": LIB}
    assert environment_for("jemalloc", environ, LIB) is None


@pytest.mark.parametrize(
    ("allocator", "library", "named"),
    [
        ("tcmalloc", LIB, "--allocator=tcmalloc: expected one of python, jemalloc"),
        ("jemalloc", None, "--allocator=jemalloc: libjemalloc.so.2 not found"),
    ],
)
def test_what_cannot_be_used_is_named(allocator: str, library: str | None, named: str) -> None:
    with pytest.raises(AllocatorError, match=named):
        environment_for(allocator, {}, library)


def test_a_caller_that_is_not_the_command_line_is_told_what_to_set(monkeypatch) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with pytest.raises(AllocatorError, match="must be chosen when the process starts"):
        use("jemalloc", may_exec=False)


def test_make_setup_installs_jemalloc() -> None:
    assert find_jemalloc() is not None


def test_a_process_started_with_it_has_jemalloc_mapped(tmp_path: Path) -> None:
    """What the sidecar checks after it re-executed itself: LD_PRELOAD took effect."""
    environ = environment_for("jemalloc", {}, find_jemalloc())
    assert environ is not None
    code = "from proxy.platform.allocator import jemalloc_loaded; print(jemalloc_loaded())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "True"
    assert jemalloc_loaded() is False  # this test process runs on CPython's allocator
