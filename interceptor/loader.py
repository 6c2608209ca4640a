"""Compile, load, attach, pin, configure and detach Detour's eBPF interception programs (bcc).

One program per hook (sources in bpf/, each commented with what it reads and writes), compiled
as one bcc module so they share the maps of bpf/maps.h. The cgroup programs are attached with
the legacy BPF_PROG_ATTACH (BPF_F_ALLOW_MULTI), the sk_msg program to the local_socks
sockhash; attachments outlive this process. Programs and maps are pinned under
``/sys/fs/bpf/detour/<name>`` (name = the cgroup path relative to the cgroup2 mount,
percent-encoded), which is how ``detach``, ``status`` and a second ``attach`` (which only
rewrites the configuration maps) find them again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from detour_common.capabilities import CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, effective_capabilities
from interceptor import kernel
from interceptor.errors import InterceptorError
from interceptor.settings import EbpfConfig, decode_counters, describe_settings, map_contents

__all__ = ["InterceptorError"]

BPF_DIR = Path(__file__).resolve().parent / "bpf"
PIN_ROOT = Path("/sys/fs/bpf/detour")
BPFFS = Path("/sys/fs/bpf")

# The kernel's enum bpf_prog_type / bpf_attach_type numbers (bcc 0.26 has no names for some).
PROG_SOCK_OPS, PROG_SK_MSG, PROG_CGROUP_SOCK_ADDR, PROG_CGROUP_SOCKOPT = 13, 16, 18, 25
ATTACH_SOCK_OPS, ATTACH_SK_MSG_VERDICT = 3, 7
ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT = 10, 11
ATTACH_UDP4_SENDMSG, ATTACH_UDP6_SENDMSG = 14, 15
ATTACH_UDP4_RECVMSG, ATTACH_UDP6_RECVMSG = 19, 20
ATTACH_GETSOCKOPT = 21
ATTACH_INET4_GETPEERNAME, ATTACH_INET6_GETPEERNAME = 29, 30


@dataclass(frozen=True)
class Program:
    key: str  # source file stem and pin name suffix; the function is detour_<key>
    prog_type: int
    attach_type: int
    # CGROUP_SOCK_ADDR and CGROUP_SOCKOPT programs must be loaded with their attach type
    expected_attach_type: int = -1
    target: str = "cgroup"  # or "local_socks": attached to that sockhash, not to the cgroup

    @property
    def function(self) -> str:
        return f"detour_{self.key}"


PROGRAMS = (
    Program("connect4", PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_CONNECT, ATTACH_INET4_CONNECT),
    Program("connect6", PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_CONNECT, ATTACH_INET6_CONNECT),
    Program("sockops", PROG_SOCK_OPS, ATTACH_SOCK_OPS),
    Program("getsockopt", PROG_CGROUP_SOCKOPT, ATTACH_GETSOCKOPT, ATTACH_GETSOCKOPT),
    Program("sendmsg4", PROG_CGROUP_SOCK_ADDR, ATTACH_UDP4_SENDMSG, ATTACH_UDP4_SENDMSG),
    Program("sendmsg6", PROG_CGROUP_SOCK_ADDR, ATTACH_UDP6_SENDMSG, ATTACH_UDP6_SENDMSG),
    Program("recvmsg4", PROG_CGROUP_SOCK_ADDR, ATTACH_UDP4_RECVMSG, ATTACH_UDP4_RECVMSG),
    Program("recvmsg6", PROG_CGROUP_SOCK_ADDR, ATTACH_UDP6_RECVMSG, ATTACH_UDP6_RECVMSG),
    Program(
        "getpeername4", PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_GETPEERNAME, ATTACH_INET4_GETPEERNAME
    ),
    Program(
        "getpeername6", PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_GETPEERNAME, ATTACH_INET6_GETPEERNAME
    ),
    Program("sk_msg", PROG_SK_MSG, ATTACH_SK_MSG_VERDICT, target="local_socks"),
)
CONFIG_MAPS = (
    "settings",
    "proxy_owners",
    "exclude_ports",
    "capture_ports",
    "exclude_cidrs",
    "capture_cidrs",
)
MAPS = (*CONFIG_MAPS, "origin_store", "handoff_by_client", "local_socks", "counters")
# Maps whose entry count `status` reports (the bounded, self-cleaning state).
STATE_MAPS = ("handoff_by_client", "local_socks")
_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$')


# ---------------------------------------------------------------- pure helpers (unit tested)


def cgroup2_mounts(mounts_text: str) -> list[Path]:
    """Every cgroup2 mount point listed in /proc/mounts text."""
    found = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            found.append(Path(parts[1]))
    return found


def resolve_cgroup(path: str, mounts_text: str) -> tuple[Path, Path]:
    """(mount point, absolute cgroup dir) for ``path``, absolute or relative to the mount."""
    mounts = cgroup2_mounts(mounts_text)
    if not mounts:
        raise InterceptorError("no cgroup v2 mount in /proc/mounts (mount cgroup2 first)")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = mounts[0] / candidate
    candidate = Path(os.path.normpath(candidate))
    for mount in mounts:
        if candidate == mount or mount in candidate.parents:
            return mount, candidate
    raise InterceptorError(
        f"cgroup {path!r} is not under a cgroup v2 mount ({', '.join(map(str, mounts))})"
    )


def pin_name(mount: Path, cgroup: Path) -> str:
    """The pin directory name for a cgroup: its path below the mount, percent-encoded."""
    relative = str(cgroup.relative_to(mount))
    return quote("/" if relative == "." else relative, safe="")


def cgroup_from_pin_name(mount: Path, name: str) -> Path:
    relative = unquote(name)
    return mount if relative == "/" else mount / relative


def preflight(caps: int, kernel_release: str, bcc_importable: bool, modules: Path) -> None:
    """Refuse early, with what to do, when loading cannot work. ``caps``: the effective
    capability mask. CAP_SYS_ADMIN alone is enough; else CAP_BPF (load, pin, read maps) and
    CAP_NET_ADMIN (networking program types, cgroup attach) are both needed."""
    has = {cap for cap in (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) if caps >> cap & 1}
    if CAP_SYS_ADMIN not in has and not {CAP_BPF, CAP_NET_ADMIN} <= has:
        lacking = [
            name
            for cap, name in ((CAP_BPF, "CAP_BPF"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
            if cap not in has
        ]
        raise InterceptorError(
            f"missing privilege: {' and '.join(lacking)} (or CAP_SYS_ADMIN) are needed to load "
            "and attach BPF programs; run as root or grant those capabilities"
        )
    if not bcc_importable:
        raise InterceptorError(
            "bcc is not importable: install python3-bpfcc (Debian) and use "
            "a Python that sees system site-packages (make setup)"
        )
    build = modules / kernel_release / "build"
    if not (build / "include").is_dir():
        raise InterceptorError(
            f"kernel headers not found at {build}: install "
            f"linux-headers-{kernel_release} or link them there (make setup does)"
        )


def source_text() -> str:
    """All programs as one C text, with our own headers inlined: bcc rewrites map calls
    (``map.lookup(...)``) only in the main file, not in included headers."""
    seen: set[str] = set()

    def expand(path: Path) -> list[str]:
        lines = []
        for line in path.read_text().splitlines():
            match = _INCLUDE.match(line)
            if match is None:
                lines.append(line)
            elif match.group(1) not in seen:
                seen.add(match.group(1))
                lines.extend(expand(BPF_DIR / match.group(1)))
        return lines

    return "\n".join(line for p in PROGRAMS for line in expand(BPF_DIR / f"{p.key}.c"))


# ---------------------------------------------------------------- kernel side


def _bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def _ensure_bpffs() -> None:
    if _is_bpffs(BPFFS):
        return
    done = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
    if done.returncode != 0 or not _is_bpffs(BPFFS):
        raise InterceptorError(
            f"{BPFFS} is not a bpf filesystem and mounting one failed: {done.stderr.strip()}"
        )


def _is_bpffs(path: Path) -> bool:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == str(path) and parts[2] == "bpf":
            return True
    return False


def _preflight_here() -> None:
    caps = effective_capabilities()
    preflight(caps, os.uname().release, _bcc_importable(), Path("/lib/modules"))


def context(cgroup: str, must_exist: bool = True) -> tuple[Path, Path]:
    """(absolute cgroup dir, pin dir) after the checks every command needs."""
    _preflight_here()
    mount, path = resolve_cgroup(cgroup, Path("/proc/mounts").read_text())
    if must_exist and not (path / "cgroup.procs").is_file():
        raise InterceptorError(f"cgroup not found: {path} (create it with mkdir first)")
    return path, PIN_ROOT / pin_name(mount, path)


def attach(cgroup: str, config: EbpfConfig) -> tuple[Path, bool]:
    """Attach to ``cgroup`` with ``config``; (pin dir, True) when it was newly attached, or
    (pin dir, False) when an earlier attachment only had its configuration rewritten."""
    if sys.byteorder != "little":
        raise InterceptorError("only little-endian hosts are supported (bpf/maps.h)")
    path, pins = context(cgroup)
    if pins.exists():
        current = _inspect(path, pins)
        if not current.healthy:
            missing = ", ".join(k for k, ok in current.programs.items() if not ok)
            raise InterceptorError(
                f"{path} has a broken attachment (not attached: {missing}); "
                "run detour-ebpf detach first"
            )
        configure(pins, config)
        return pins, False
    _attach_new(path, pins, config)
    return pins, True


def _attach_new(path: Path, pins: Path, config: EbpfConfig) -> None:
    from bcc import BPF

    try:
        module = BPF(text=source_text())
    except Exception as exc:  # bcc raises bare Exception on compile errors
        raise InterceptorError(f"compiling the BPF programs failed: {exc}") from exc
    attached: list[tuple[Program, int, int]] = []  # program, prog fd, target fd
    try:
        _ensure_bpffs()
        pins.mkdir(parents=True)
        for name in MAPS:
            kernel.pin(_map_fd(module, name), pins / f"map_{name}")
        configure(pins, config)  # before any program runs, so none sees an empty config
        with kernel.directory(path) as cgroup_fd:
            for program in PROGRAMS:
                try:
                    fn = module.load_func(
                        program.function,
                        program.prog_type,
                        attach_type=program.expected_attach_type,
                    )
                except Exception as exc:
                    raise InterceptorError(
                        f"loading {program.key} failed (does this kernel have the hook?): {exc}"
                    ) from exc
                target = cgroup_fd
                if program.target != "cgroup":
                    target = _map_fd(module, program.target)
                flags = kernel.BPF_F_ALLOW_MULTI if program.target == "cgroup" else 0
                kernel.attach(fn.fd, target, program.attach_type, flags, f"{program.key}")
                attached.append((program, fn.fd, target))
                kernel.pin(fn.fd, pins / f"prog_{program.key}")
    except BaseException:
        for program, prog_fd, target in attached:
            kernel.detach(prog_fd, target, program.attach_type, program.key)
        _remove_pins(pins)
        raise
    finally:
        module.cleanup()


def _map_fd(module, name: str) -> int:
    """A map's fd straight from libbcc: bcc's Table() refuses map types it does not know
    (sk_storage is one)."""
    from bcc.libbcc import lib as bcc_lib

    return kernel.check(bcc_lib.bpf_table_fd(module.module, name.encode()), f"finding map {name}")


def configure(pins: Path, config: EbpfConfig) -> None:
    """Make every configuration map hold exactly what ``config`` says: new entries first,
    then stale ones removed, so no moment passes with an exclusion missing."""
    for name, wanted in map_contents(config).items():
        with kernel.pinned(pins / f"map_{name}") as fd:
            for key, value in wanted.items():
                kernel.map_update(fd, key, value, f"{name} in {pins}")
            if name == "settings":
                continue  # an array: its one slot is always there
            for key in kernel.map_keys(fd):
                if key not in wanted:
                    kernel.map_delete(fd, key)


def _remove_pins(pins: Path) -> None:
    if not pins.is_dir():
        return
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


def _pinned_programs(pins: Path) -> Iterator[tuple[Program, int]]:
    """(program, fd) for each of our programs pinned under ``pins``; each fd is closed as the
    loop moves on."""
    for program in PROGRAMS:
        pin = pins / f"prog_{program.key}"
        if pin.exists():
            with kernel.pinned(pin) as fd:
                yield program, fd


def detach(cgroup: str) -> None:
    """Detach what ``attach`` attached to ``cgroup`` and remove its pins (programs and maps
    are freed by the kernel once nothing refers to them)."""
    path, pins = context(cgroup, must_exist=False)
    if not pins.is_dir():
        raise InterceptorError(f"nothing attached to {path} by detour-ebpf (no {pins})")
    cgroup_exists = path.is_dir()  # a removed cgroup took its attachments with it
    for program, fd in _pinned_programs(pins):
        if program.target != "cgroup":
            with kernel.pinned(pins / f"map_{program.target}") as map_fd:
                kernel.detach(fd, map_fd, program.attach_type, f"{program.key} from its map")
        elif cgroup_exists:
            with kernel.directory(path) as cgroup_fd:
                kernel.detach(fd, cgroup_fd, program.attach_type, f"{program.key} from {path}")
    _remove_pins(pins)


@dataclass(frozen=True)
class Attachment:
    cgroup: Path
    pins: Path
    programs: dict[str, bool]  # program key -> still attached to the cgroup
    counters: dict[str, int] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)  # STATE_MAPS -> entry count
    settings: dict[str, str] = field(default_factory=dict)  # the configuration in force

    @property
    def healthy(self) -> bool:
        return all(self.programs.values())


def _inspect(cgroup: Path, pins: Path) -> Attachment:
    programs = {p.key: False for p in PROGRAMS}
    if cgroup.is_dir():
        with kernel.directory(cgroup) as cgroup_fd:
            for program, fd in _pinned_programs(pins):
                if program.target == "cgroup":
                    ids = kernel.attached_ids(cgroup_fd, program.attach_type)
                    programs[program.key] = kernel.prog_id(fd) in ids
                else:
                    with kernel.pinned(pins / f"map_{program.target}") as map_fd:
                        ids = kernel.attached_ids(map_fd, program.attach_type)
                    programs[program.key] = kernel.prog_id(fd) in ids
    return Attachment(
        cgroup, pins, programs, read_counters(pins), read_entries(pins), read_settings(pins)
    )


def read_settings(pins: Path) -> dict[str, str]:
    path = pins / "map_settings"
    if not path.exists():
        return {}
    with kernel.pinned(path) as fd:
        raw = kernel.map_lookup(fd, (0).to_bytes(4, sys.byteorder))
    return describe_settings(raw) if raw else {}


def read_counters(pins: Path) -> dict[str, int]:
    path = pins / "map_counters"
    if not path.exists():
        return {}
    with kernel.pinned(path) as fd:
        values = []
        for index in range(kernel.map_info(fd).max_entries):
            raw = kernel.map_lookup(fd, index.to_bytes(4, sys.byteorder))
            values.append(int.from_bytes(raw, sys.byteorder) if raw else 0)
    return decode_counters(values)


def read_entries(pins: Path) -> dict[str, int]:
    """The number of entries in each state map (what churn must not make grow)."""
    found = {}
    for name in STATE_MAPS:
        path = pins / f"map_{name}"
        if path.exists():
            with kernel.pinned(path) as fd:
                found[name] = len(kernel.map_keys(fd))
    return found


def status() -> list[Attachment]:
    """Every attachment pinned under PIN_ROOT, checked against the kernel."""
    _preflight_here()
    mounts = cgroup2_mounts(Path("/proc/mounts").read_text())
    if not PIN_ROOT.is_dir() or not mounts:
        return []
    return [
        _inspect(cgroup_from_pin_name(mounts[0], pins.name), pins)
        for pins in sorted(PIN_ROOT.iterdir())
    ]
