"""Compile, load, attach, pin and detach Detour's eBPF interception programs (bcc).

Three programs, one per hook, compiled as one bcc module so they share two LRU hash maps
(see bpf/maps.h):

- ``connect4`` (cgroup/connect4): records the app's destination under the socket cookie and
  rewrites it to 127.0.0.1:15001; skips uid 1337 (the proxy) and 127.0.0.0/8.
- ``sockops`` (sockops, ACTIVE_ESTABLISHED): once the kernel has picked the client's source
  port, re-keys the record by (client local ip, local port).
- ``getsockopt`` (cgroup/getsockopt): answers getsockopt(SOL_IP, SO_ORIGINAL_DST) on the
  proxy's accepted socket by looking its peer (= the client's local end) up in that map.

The programs are attached with the legacy BPF_PROG_ATTACH (BPF_F_ALLOW_MULTI), which keeps
them attached after this process exits; programs and maps are pinned under
``/sys/fs/bpf/detour/<name>`` (name = the cgroup path relative to the cgroup2 mount,
percent-encoded), which is how ``detach`` and ``status`` find them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

BPF_DIR = Path(__file__).resolve().parent / "bpf"
PIN_ROOT = Path("/sys/fs/bpf/detour")
BPFFS = Path("/sys/fs/bpf")
PROXY_UID = 1337
PROXY_PORT = 15001
BPF_F_ALLOW_MULTI = 2

# bcc 0.26: BPFProgType / BPFAttachType numbers (the kernel's enums).
PROG_CGROUP_SOCK_ADDR = 18
PROG_SOCK_OPS = 13
PROG_CGROUP_SOCKOPT = 25
ATTACH_INET4_CONNECT = 10
ATTACH_SOCK_OPS = 3
ATTACH_GETSOCKOPT = 21


@dataclass(frozen=True)
class Program:
    key: str  # pin name suffix and source file stem
    function: str
    prog_type: int
    attach_type: int
    # CGROUP_SOCK_ADDR and CGROUP_SOCKOPT must be loaded with their expected attach type
    expected_attach_type: int


PROGRAMS = (
    Program(
        "connect4",
        "detour_connect4",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_INET4_CONNECT,
        ATTACH_INET4_CONNECT,
    ),
    Program("sockops", "detour_sockops", PROG_SOCK_OPS, ATTACH_SOCK_OPS, -1),
    Program(
        "getsockopt", "detour_getsockopt", PROG_CGROUP_SOCKOPT, ATTACH_GETSOCKOPT, ATTACH_GETSOCKOPT
    ),
)
MAPS = ("origin_by_cookie", "origin_by_client")


class InterceptorError(Exception):
    """A clear, user-facing reason why an operation cannot proceed."""


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


def preflight(euid: int, kernel_release: str, bcc_importable: bool) -> None:
    """Refuse early, with what to do, when loading cannot work."""
    if euid != 0:
        raise InterceptorError(
            "must run as root: loading and attaching BPF needs CAP_BPF and "
            "CAP_NET_ADMIN/CAP_SYS_ADMIN"
        )
    if not bcc_importable:
        raise InterceptorError(
            "bcc is not importable: install python3-bpfcc (Debian) and use "
            "a Python that sees system site-packages"
        )
    build = Path(f"/lib/modules/{kernel_release}/build")
    if not (build / "include").is_dir():
        raise InterceptorError(
            f"kernel headers not found at {build}: install "
            f"linux-headers-{kernel_release} or link them (make setup)"
        )


def source_text() -> str:
    return "\n".join((BPF_DIR / f"{p.key}.c").read_text() for p in PROGRAMS)


# ---------------------------------------------------------------- kernel side


def _bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def _lib():
    from bcc.libbcc import lib

    c_uint_p = ctypes.POINTER(ctypes.c_uint)
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_obj_pin.restype = ctypes.c_int
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.bpf_prog_detach2.restype = ctypes.c_int
    lib.bpf_prog_query.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint,
        c_uint_p,
        c_uint_p,
        c_uint_p,
    ]
    lib.bpf_prog_query.restype = ctypes.c_int
    lib.bpf_obj_get_info.argtypes = [ctypes.c_int, ctypes.c_void_p, c_uint_p]
    lib.bpf_obj_get_info.restype = ctypes.c_int
    return lib


def _check(res: int, what: str) -> int:
    if res < 0:
        raise InterceptorError(f"{what}: {os.strerror(-res)}")
    return res


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


def _prog_id(lib, fd: int) -> int:
    info = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint(ctypes.sizeof(info))
    _check(
        lib.bpf_obj_get_info(fd, ctypes.cast(info, ctypes.c_void_p), ctypes.byref(size)),
        "reading program info",
    )
    return int.from_bytes(bytes(info[4:8]), sys.byteorder)  # struct bpf_prog_info: type, id


def _attached_ids(lib, cgroup_fd: int, attach_type: int) -> list[int]:
    ids = (ctypes.c_uint * 64)()
    count = ctypes.c_uint(64)
    flags = ctypes.c_uint(0)
    _check(
        lib.bpf_prog_query(
            cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)
        ),
        "querying the cgroup's programs",
    )
    return list(ids[: count.value])


def _context(cgroup: str, must_exist: bool = True) -> tuple[Path, Path, Path]:
    preflight(os.geteuid(), os.uname().release, _bcc_importable())
    mount, path = resolve_cgroup(cgroup, Path("/proc/mounts").read_text())
    if must_exist and not (path / "cgroup.procs").is_file():
        raise InterceptorError(f"cgroup not found: {path} (create it with mkdir first)")
    return mount, path, PIN_ROOT / pin_name(mount, path)


def attach(cgroup: str, proxy_uid: int = PROXY_UID, proxy_port: int = PROXY_PORT) -> Path:
    """Load the programs, attach them to ``cgroup`` and pin them; returns the pin dir."""
    if sys.byteorder != "little":
        raise InterceptorError("only little-endian hosts are supported (bpf/maps.h)")
    _mount, path, pins = _context(cgroup)
    if pins.exists():
        raise InterceptorError(f"already attached to {path} (pins in {pins}); detach first")
    from bcc import BPF

    lib = _lib()
    cflags = [f"-I{BPF_DIR}", f"-DPROXY_UID={proxy_uid}", f"-DPROXY_PORT={proxy_port}"]
    try:
        module = BPF(text=source_text(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile errors
        raise InterceptorError(f"compiling the BPF programs failed: {exc}") from exc
    attached: list[tuple[Program, int]] = []
    cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ensure_bpffs()
        pins.mkdir(parents=True)
        for program in PROGRAMS:
            try:
                fn = module.load_func(
                    program.function, program.prog_type, attach_type=program.expected_attach_type
                )
            except Exception as exc:
                raise InterceptorError(f"loading {program.key} failed: {exc}") from exc
            _check(
                lib.bpf_prog_attach(fn.fd, cgroup_fd, program.attach_type, BPF_F_ALLOW_MULTI),
                f"attaching {program.key} to {path}",
            )
            attached.append((program, fn.fd))
            _check(
                lib.bpf_obj_pin(fn.fd, str(pins / f"prog_{program.key}").encode()),
                f"pinning {program.key}",
            )
        for name in MAPS:
            _check(
                lib.bpf_obj_pin(module.get_table(name).map_fd, str(pins / f"map_{name}").encode()),
                f"pinning map {name}",
            )
    except BaseException:
        for program, fd in attached:
            lib.bpf_prog_detach2(fd, cgroup_fd, program.attach_type)
        _remove_pins(pins)
        raise
    finally:
        os.close(cgroup_fd)
        module.cleanup()
    return pins


def _remove_pins(pins: Path) -> None:
    if not pins.is_dir():
        return
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


@contextlib.contextmanager
def _directory_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _pinned_programs(lib, pins: Path) -> Iterator[tuple[Program, int]]:
    """(program, fd) for each of our programs pinned under ``pins``; each fd is closed as the
    loop moves on."""
    for program in PROGRAMS:
        pin = pins / f"prog_{program.key}"
        if not pin.exists():
            continue
        fd = _check(lib.bpf_obj_get(str(pin).encode()), f"opening {pin}")
        try:
            yield program, fd
        finally:
            os.close(fd)


def detach(cgroup: str) -> None:
    """Detach what ``attach`` attached to ``cgroup`` and remove its pins."""
    _mount, path, pins = _context(cgroup, must_exist=False)
    if not pins.is_dir():
        raise InterceptorError(f"nothing attached to {path} by detour-ebpf (no {pins})")
    lib = _lib()
    if path.is_dir():  # a removed cgroup took its attachments with it
        with _directory_fd(path) as cgroup_fd:
            for program, fd in _pinned_programs(lib, pins):
                res = lib.bpf_prog_detach2(fd, cgroup_fd, program.attach_type)
                if res < 0 and -res != 2:  # ENOENT: already detached
                    _check(res, f"detaching {program.key} from {path}")
    _remove_pins(pins)


@dataclass(frozen=True)
class Attachment:
    cgroup: Path
    pins: Path
    programs: dict[str, bool]  # program key -> still attached to the cgroup

    @property
    def healthy(self) -> bool:
        return all(self.programs.values())


def status() -> list[Attachment]:
    """Every attachment pinned under PIN_ROOT, checked against the kernel."""
    preflight(os.geteuid(), os.uname().release, _bcc_importable())
    mounts = cgroup2_mounts(Path("/proc/mounts").read_text())
    if not PIN_ROOT.is_dir() or not mounts:
        return []
    lib = _lib()
    found = []
    for pins in sorted(PIN_ROOT.iterdir()):
        cgroup = cgroup_from_pin_name(mounts[0], pins.name)
        programs = {p.key: False for p in PROGRAMS}
        if cgroup.is_dir():
            with _directory_fd(cgroup) as cgroup_fd:
                for program, fd in _pinned_programs(lib, pins):
                    ids = _attached_ids(lib, cgroup_fd, program.attach_type)
                    programs[program.key] = _prog_id(lib, fd) in ids
        found.append(Attachment(cgroup, pins, programs))
    return found
