"""The few bpf(2) operations the interceptor needs, through the libbpf symbols inside libbcc.

bcc's Python API covers compiling and loading; pinning, attaching to a cgroup or a sockhash,
querying a cgroup and reading pinned maps are not in it, so they are declared here with
ctypes. Every call returns a negative errno on failure, turned into an InterceptorError that
says what was being done.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from interceptor.errors import InterceptorError

BPF_F_ALLOW_MULTI = 2
BPF_ANY = 0
ENOENT = 2


@cache
def lib():
    """libbcc with the argument types of the calls used here (declared once)."""
    from bcc.libbcc import lib as bcc_lib

    uint_p = ctypes.POINTER(ctypes.c_uint)
    signatures = {
        "bpf_obj_pin": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
        "bpf_obj_get": ([ctypes.c_char_p], ctypes.c_int),
        "bpf_prog_attach": (
            [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint],
            ctypes.c_int,
        ),
        "bpf_prog_detach2": ([ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "bpf_prog_query": (
            [ctypes.c_int, ctypes.c_int, ctypes.c_uint, uint_p, uint_p, uint_p],
            ctypes.c_int,
        ),
        "bpf_obj_get_info": ([ctypes.c_int, ctypes.c_void_p, uint_p], ctypes.c_int),
        "bpf_get_next_key": ([ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
        "bpf_lookup_elem": ([ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
        "bpf_update_elem": (
            [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong],
            ctypes.c_int,
        ),
        "bpf_delete_elem": ([ctypes.c_int, ctypes.c_void_p], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(bcc_lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return bcc_lib


def check(result: int, what: str) -> int:
    if result < 0:
        code = -result if result < -1 else ctypes.get_errno() or 1
        raise InterceptorError(f"{what}: {os.strerror(code)}")
    return result


def pin(fd: int, path: Path) -> None:
    check(lib().bpf_obj_pin(fd, str(path).encode()), f"pinning {path}")


@contextlib.contextmanager
def pinned(path: Path) -> Iterator[int]:
    """An fd for the object pinned at ``path``, closed on exit."""
    fd = check(lib().bpf_obj_get(str(path).encode()), f"opening {path}")
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def attach(prog_fd: int, target_fd: int, attach_type: int, flags: int, what: str) -> None:
    check(lib().bpf_prog_attach(prog_fd, target_fd, attach_type, flags), f"attaching {what}")


def detach(prog_fd: int, target_fd: int, attach_type: int, what: str) -> None:
    """Detach; a program that is no longer attached (ENOENT) is not an error."""
    result = lib().bpf_prog_detach2(prog_fd, target_fd, attach_type)
    if result < 0 and -result != ENOENT:
        check(result, f"detaching {what}")


def attached_ids(cgroup_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup for one hook."""
    ids = (ctypes.c_uint * 64)()
    count = ctypes.c_uint(64)
    flags = ctypes.c_uint(0)
    check(
        lib().bpf_prog_query(
            cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)
        ),
        "querying the cgroup's programs",
    )
    return list(ids[: count.value])


def _info(fd: int) -> bytes:
    buffer = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint(ctypes.sizeof(buffer))
    check(
        lib().bpf_obj_get_info(fd, ctypes.cast(buffer, ctypes.c_void_p), ctypes.byref(size)),
        "reading object info",
    )
    return bytes(buffer)


def prog_id(fd: int) -> int:
    """struct bpf_prog_info starts with type, id (u32 each)."""
    return int.from_bytes(_info(fd)[4:8], sys.byteorder)


@dataclass(frozen=True)
class MapInfo:
    """The head of struct bpf_map_info: type, id, key_size, value_size, max_entries."""

    id: int
    key_size: int
    value_size: int
    max_entries: int


def map_info(fd: int) -> MapInfo:
    raw = _info(fd)
    words = [int.from_bytes(raw[i : i + 4], sys.byteorder) for i in range(0, 20, 4)]
    return MapInfo(words[1], words[2], words[3], words[4])


def map_keys(fd: int) -> list[bytes]:
    """Every key of a hash-like map (get_next_key from no key, then from each key)."""
    size = map_info(fd).key_size
    keys: list[bytes] = []
    current = None
    following = ctypes.create_string_buffer(size)
    while True:
        previous = None if current is None else ctypes.create_string_buffer(current, size)
        if lib().bpf_get_next_key(fd, previous, following) < 0:
            return keys
        current = following.raw
        keys.append(current)
        if len(keys) > 1 << 22:  # a map changing under us could loop; no map here is this big
            return keys


def map_lookup(fd: int, key: bytes) -> bytes | None:
    value = ctypes.create_string_buffer(map_info(fd).value_size)
    if lib().bpf_lookup_elem(fd, ctypes.create_string_buffer(key, len(key)), value) < 0:
        return None
    return value.raw


def map_update(fd: int, key: bytes, value: bytes, what: str) -> None:
    check(
        lib().bpf_update_elem(
            fd,
            ctypes.create_string_buffer(key, len(key)),
            ctypes.create_string_buffer(value, len(value)),
            BPF_ANY,
        ),
        f"writing {what}",
    )


def map_delete(fd: int, key: bytes) -> None:
    lib().bpf_delete_elem(fd, ctypes.create_string_buffer(key, len(key)))
