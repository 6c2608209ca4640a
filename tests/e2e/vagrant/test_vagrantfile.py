"""vagrant/Vagrantfile: `vagrant validate` under the variable combinations users are told
about (no box, no VM, no hypervisor needed: a second or two each), and, only when
DETOUR_VM_E2E=1, a real VM from the offline box (vagrant/build-box.sh) under libvirt with TCG.

The full test is opt-in because a TCG VM is slow for every CI run (the box build is ~2 min
the first time, `vagrant up` ~1 min, and it needs libvirtd). It starts virtlogd/libvirtd
itself when they are not running (no systemd needed) and stops only what it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.lab import REPO
from support.prereq import require

from .conftest import run_vagrant, vagrant_env

COMBINATIONS = {
    "default": {},
    "libvirt-tcg-offline-box": {
        "DETOUR_VM_BOX": "local/bookworm",
        "DETOUR_VM_TCG": "1",
        "DETOUR_VM_ISOLATED": "1",
        "DETOUR_VM_POOL": "detour",
        "DETOUR_VM_MEMORY": "1024",
        "DETOUR_VM_CPUS": "1",
    },
    "sizes-only": {"DETOUR_VM_MEMORY": "4096", "DETOUR_VM_CPUS": "4"},
}


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_vagrantfile_validates(vagrant_cli: str, tmp_path: Path, name: str) -> None:
    env = vagrant_env(tmp_path, **COMBINATIONS[name])
    done = run_vagrant(vagrant_cli, env, "validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout


def test_vagrantfile_refuses_a_bad_number(vagrant_cli: str, tmp_path: Path) -> None:
    done = run_vagrant(vagrant_cli, vagrant_env(tmp_path, DETOUR_VM_MEMORY="lots"), "validate")
    assert done.returncode != 0
    assert "DETOUR_VM_MEMORY" in done.stdout + done.stderr


def test_libvirt_plugin_checks_provider_options(vagrant_cli: str, tmp_path: Path) -> None:
    """validate really checks the libvirt block (so the passes above mean something): a
    Vagrantfile with an option vagrant-libvirt does not know is refused."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |c|\n  c.vm.box = "x"\n'
        '  c.vm.provider :libvirt do |lv|\n    lv.cmdline = "x"\n  end\nend\n'
    )
    env = vagrant_env(tmp_path)
    env["VAGRANT_CWD"] = str(bad)
    done = subprocess.run(
        [vagrant_cli, "validate"], capture_output=True, text=True, env=env, cwd=bad, timeout=120
    )
    assert done.returncode != 0, done.stdout
    assert "cmdline" in done.stdout + done.stderr


# ---- opt-in: a real VM --------------------------------------------------------------------

STATE = REPO / "build" / "vagrant"
POOL = "detour"


def _sh(*argv: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def _daemon_running(name: str) -> bool:
    return _sh("pgrep", "-x", name, check=False).returncode == 0


@pytest.fixture
def libvirt():
    """virtlogd and libvirtd (started here, without systemd, only if not running; stopped at
    the end by the pid in their pid file only if started here) and the storage pool."""
    started: list[str] = []
    for daemon in ("virtlogd", "libvirtd"):
        require(
            shutil.which(daemon) is not None, f"{daemon} (apt-get install libvirt-daemon-system)"
        )
        if not _daemon_running(daemon):
            _sh(daemon, "-d")
            started.append(daemon)
    for _ in range(50):
        if _sh("virsh", "-c", "qemu:///system", "version", check=False).returncode == 0:
            break
        time.sleep(0.2)
    if _sh("virsh", "pool-info", POOL, check=False).returncode != 0:
        (STATE / "pool").mkdir(parents=True, exist_ok=True)
        _sh("virsh", "pool-define-as", POOL, "dir", "--target", str(STATE / "pool"))
    if "running" not in _sh("virsh", "pool-info", POOL).stdout:
        _sh("virsh", "pool-start", POOL)
    yield
    for daemon in reversed(started):
        pidfile = Path(f"/run/{daemon}.pid")
        if pidfile.exists():
            _sh("kill", pidfile.read_text().strip(), check=False)


OPT_IN_VM = os.environ.get("DETOUR_VM_E2E") != "1"  # slow (TCG boot): opt-in, not in CI


@pytest.mark.skipif(OPT_IN_VM, reason="opt-in, not run in CI: set DETOUR_VM_E2E=1")
def test_offline_box_boots_under_tcg_with_the_repo_and_iptables(
    vagrant_cli: str, libvirt, tmp_path: Path
) -> None:
    require(os.geteuid() == 0, "root (debootstrap, libvirt)")
    timings: dict[str, float] = {}
    home = STATE / "vagrant.d"  # kept: the box is added once
    env = vagrant_env(
        tmp_path,
        DETOUR_VM_BOX="local/bookworm",
        DETOUR_VM_TCG="1",
        DETOUR_VM_ISOLATED="1",
        DETOUR_VM_POOL=POOL,
        DETOUR_VM_MEMORY="1024",
        DETOUR_VM_CPUS="2",
        DETOUR_VM_NAME="detour-e2e",  # not the user's detour_default
        VAGRANT_HOME=str(home),
    )

    t = time.monotonic()
    _sh("bash", str(REPO / "vagrant" / "build-box.sh"), "--add", timeout=1800, env=env)
    timings["build-box.sh --add"] = time.monotonic() - t
    try:
        t = time.monotonic()
        # `setup` is skipped: an isolated VM cannot reach the mirror or PyPI (vagrant/README.md).
        up = run_vagrant(
            vagrant_cli, env, "up", "--provider=libvirt", "--no-provision", timeout=900
        )
        timings["vagrant up"] = time.monotonic() - t
        assert up.returncode == 0, up.stdout + up.stderr

        t = time.monotonic()
        check = run_vagrant(
            vagrant_cli,
            env,
            "ssh",
            "-c",
            "test -f /detour/Makefile && test -x /detour/vagrant/build-box.sh && "
            "sudo iptables -t nat -L -n && sudo iptables -t nat -A OUTPUT -p tcp --dport 9 "
            "-j REDIRECT --to-ports 15001 && sudo iptables -t nat -S OUTPUT && uname -r && "
            "echo routes: && ip route",
            timeout=120,
        )
        timings["vagrant ssh (checks)"] = time.monotonic() - t
        assert check.returncode == 0, check.stdout + check.stderr
        assert "--to-ports 15001" in check.stdout
        assert "Chain PREROUTING" in check.stdout
        # DETOUR_VM_ISOLATED=1: the isolated libvirt network gives no default route.
        routes = check.stdout.split("routes:", 1)[1]
        assert "default" not in routes, routes
    finally:
        t = time.monotonic()
        run_vagrant(vagrant_cli, env, "destroy", "-f", timeout=300)
        timings["vagrant destroy"] = time.monotonic() - t
        print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in timings.items()))
