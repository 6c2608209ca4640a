"""Missing prerequisites: a skip on a developer's machine, a failure under CI=true."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, what: str) -> None:
    """Stop the test when ``condition`` is false: fail in CI (it must run there), else skip."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {what}")
    pytest.skip(f"prerequisite missing: {what}")  # outside CI only (see above)


def require_root_and_tools(*tools: str) -> None:
    require(os.geteuid() == 0, "root (network namespaces and iptables)")
    for tool in ("ip", *tools):
        require(shutil.which(tool) is not None, f"the {tool} command")
