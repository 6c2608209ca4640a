"""Fixtures for vagrant/: the vagrant command (installed from Debian when missing) and an
environment that keeps every vagrant state out of the user's home and the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.lab import REPO
from support.prereq import require

VAGRANT_DIR = REPO / "vagrant"
# What `vagrant validate` needs: vagrant itself and the libvirt provider plugin (without the
# plugin vagrant cannot check the `config.vm.provider :libvirt` block). VirtualBox's provider
# is part of vagrant; VirtualBox itself is not needed to validate.
PACKAGES = ("vagrant", "vagrant-libvirt")


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    """Replaces tests/e2e's (namespaces, iptables, make setup): these tests need none of it."""


def _installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return "install ok installed" in done.stdout


@pytest.fixture(scope="session")
def vagrant_cli() -> str:
    """The vagrant command. The Debian packages are installed here (apt-get, root) rather than
    by `make setup` because only these tests and vagrant/ users need them (~100 MB of Ruby);
    when they are present this costs one dpkg-query per package."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if missing:
        require(os.geteuid() == 0, f"root, to apt-get install {' '.join(missing)}")
        require(shutil.which("apt-get") is not None, "apt-get (Debian)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    path = shutil.which("vagrant")
    require(path is not None, "the vagrant command (Debian package vagrant)")
    return path


def vagrant_env(tmp: Path, **variables: str) -> dict[str, str]:
    """os.environ without any DETOUR_VM_* of the caller, plus ``variables``; vagrant's home
    and the machine state (.vagrant) under ``tmp``; no update check."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETOUR_VM_")}
    env.update(
        VAGRANT_HOME=str(tmp / "vagrant.d"),
        VAGRANT_DOTFILE_PATH=str(tmp / "dot-vagrant"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_CWD=str(VAGRANT_DIR),
    )
    env.update(variables)
    return env


def run_vagrant(
    vagrant: str, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [vagrant, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=VAGRANT_DIR,
        timeout=timeout,
    )
