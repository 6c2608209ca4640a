"""Fixtures for the container tests: the image built once per session, podman with the
project's containers.conf, and containers removed at teardown even when a test failed."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from support.lab import REPO
from support.prereq import require

IMAGE = os.environ.get("DETOUR_IMAGE", "localhost/detour:dev")
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"
BUILD = REPO / "deploy" / "build.sh"
_names = itertools.count()


def podman_env() -> dict[str, str]:
    """podman reads only the project's containers.conf (ulimits and runc; see the file)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "DETOUR_IMAGE": IMAGE}


def podman(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


@pytest.fixture(scope="session")
def image() -> str:
    """localhost/detour:dev, built (or found up to date) by deploy/build.sh once per session.

    The first run on a machine debootstraps the base rootfs (about a minute, cached in
    build/deploy/); later runs take a few seconds.
    """
    require(os.geteuid() == 0, "root (rootful podman, network namespaces)")
    for tool in ("podman", "debootstrap", "runc"):
        require(shutil.which(tool) is not None, f"the {tool} command (make setup)")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(BUILD)], capture_output=True, text=True, timeout=900, env=podman_env()
    )
    if done.returncode != 0:
        pytest.fail(f"deploy/build.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    print(f"\n{done.stdout.rstrip()}\n(images ready in {time.monotonic() - started:.1f} s)")
    return IMAGE


@dataclass
class Containers:
    """Names of the containers a test started; all force-removed at teardown."""

    names: list[str] = field(default_factory=list)

    def name(self, role: str) -> str:
        name = f"dt-{role}-{os.getpid()}-{next(_names)}"
        self.names.append(name)
        return name

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, timeout=60)


@pytest.fixture
def containers():
    made = Containers()
    yield made
    made.remove_all()
