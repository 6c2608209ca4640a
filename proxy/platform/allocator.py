"""Which memory allocator the sidecar's processes use (``detour-proxy --allocator``).

``python`` (the default) is CPython's own: small objects in 1 MiB arenas of 16 KiB pools,
the fastest here. An arena goes back to the system only once every object in it is freed, so
after a burst of connections closes, the pools it used stay resident (measured: 10,000 idle
connections over two workers, 25 MB of empty pools per worker kept around 12 MB of live
objects) and the next burst reuses them.

``jemalloc`` is for an operator who wants that memory back, as Envoy's ``shrink_heap``
overload action gives it back from tcmalloc: every allocation goes to jemalloc
(``PYTHONMALLOC=malloc`` with ``libjemalloc.so.2`` preloaded), whose background thread
returns pages unused for a second. Measured on the same run: about three quarters of what
the connections cost was returned within seconds, for +3.7% user-space instructions per
HTTP/1.1 request, +4.7% per HTTP/2 request and +1.6% per new L4 connection
(bench/instructions.py).

Both must be in place before the interpreter starts, so the sidecar re-executes itself once
with them set; its workers inherit the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ALLOCATORS = ("python", "jemalloc")
# Debian's libjemalloc2 (the first that exists wins).
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
# Dirty pages (freed, still resident) unused for a second are purged and returned at once
# (no muzzy stage); a background thread does it, so an idle worker gives memory back without
# allocating anything.
JEMALLOC_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true"


class AllocatorError(ValueError):
    """An allocator that cannot be used here: the message names the flag and the value."""


def find_jemalloc(candidates: tuple[str, ...] = JEMALLOC_PATHS) -> str | None:
    return next((path for path in candidates if Path(path).is_file()), None)


def environment_for(
    allocator: str, environ: Mapping[str, str], jemalloc: str | None
) -> dict[str, str] | None:
    """The variables to set so that ``allocator`` is in use after an exec, or None if the
    environment already asks for it (also for ``python``: nothing to change)."""
    if allocator not in ALLOCATORS:
        raise AllocatorError(f"--allocator={allocator}: expected one of {', '.join(ALLOCATORS)}")
    if allocator == "python":
        return None
    if jemalloc is None:
        raise AllocatorError(
            f"--allocator={allocator}: libjemalloc.so.2 not found in "
            f"{', '.join(JEMALLOC_PATHS)} (apt-get install libjemalloc2)"
        )
    preload = environ.get("LD_PRELOAD", "").split()
    wanted = {"PYTHONMALLOC": "malloc", "MALLOC_CONF": JEMALLOC_CONF}
    if jemalloc in preload and all(environ.get(k) == v for k, v in wanted.items()):
        return None
    return {**wanted, "LD_PRELOAD": " ".join([jemalloc, *(p for p in preload if p != jemalloc)])}


def jemalloc_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether jemalloc is mapped into this process (what LD_PRELOAD did, not what it asked)."""
    return "libjemalloc" in maps.read_text()


def use(allocator: str, may_exec: bool = True) -> None:
    """Make this process (and the workers it starts) use ``allocator``: re-executes the
    interpreter with the same arguments when the environment must change (only if
    ``may_exec``: a caller that is not the process's own command line gets the error).
    Raises AllocatorError when it cannot, also when a re-executed process still lacks it."""
    changes = environment_for(allocator, os.environ, find_jemalloc())
    if changes is not None and not may_exec:
        raise AllocatorError(
            f"--allocator={allocator}: must be chosen when the process starts (set "
            + " ".join(f"{key}={value!r}" for key, value in changes.items())
            + ")"
        )
    if changes is None:
        if allocator == "jemalloc" and not jemalloc_loaded():
            raise AllocatorError(
                f"--allocator={allocator}: LD_PRELOAD asks for jemalloc but it is not loaded"
            )
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **changes})
