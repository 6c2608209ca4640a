"""Driving detour-ebpf from tests: the CLI as a user runs it, and the pinned maps read back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.lab import VENV_BIN
from support.prereq import require

DETOUR_EBPF = str(VENV_BIN / "detour-ebpf")


def bcc_ready() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return Path(f"/lib/modules/{os.uname().release}/build/include").is_dir()


def require_ebpf() -> None:
    """bcc, headers, root and the CLI: fail under CI when any is missing."""
    require(os.geteuid() == 0, "root (BPF, namespaces, cgroups)")
    require(bcc_ready(), "bcc (python3-bpfcc) and kernel headers (make setup)")
    require(Path(DETOUR_EBPF).exists(), f"{DETOUR_EBPF} (run make setup)")


def require_bpftool() -> str:
    path = shutil.which("bpftool")
    require(path is not None, "bpftool (make setup installs it)")
    return str(path)


def ebpf(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([DETOUR_EBPF, *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"detour-ebpf {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done


def pins_of(cgroup: Path) -> Path:
    from interceptor.loader import PIN_ROOT, pin_name, resolve_cgroup

    mount, path = resolve_cgroup(str(cgroup), Path("/proc/mounts").read_text())
    return PIN_ROOT / pin_name(mount, path)


def counters(cgroup: Path) -> dict[str, int]:
    from interceptor.loader import read_counters

    return read_counters(pins_of(cgroup))


def entries(cgroup: Path) -> dict[str, int]:
    """Entry counts of the state maps, read from the pinned maps."""
    from interceptor.loader import read_entries

    return read_entries(pins_of(cgroup))
