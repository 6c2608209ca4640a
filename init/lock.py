"""One ``detour-init`` at a time changes a network namespace.

``apply`` and ``cleanup`` read the installed rules, compute a transition and restore it; two
runs interleaving those steps each verify against the other's rules, fail, and roll back over
each other. So they take a lock first, for the namespace they change.

The lock is an abstract unix socket name. Abstract names belong to the network namespace,
so the lock is per pod network even for two containers that share the pod's network but not
a filesystem (a lock file would be per mount namespace), and the kernel frees the name when
its holder exits however it exits, ``kill -9`` included: no stale lock survives a crash.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable

LOCK_NAME = b"\0detour-init.lock"
DEFAULT_WAIT = 30.0
_RETRY_EVERY = 0.02


class LockTimeout(RuntimeError):
    """Another detour-init kept this namespace's lock for longer than the wait allowed."""


def holder_pid(name: bytes = LOCK_NAME) -> int | None:
    """The pid holding ``name`` (the listener's credentials, read from a connection to it);
    None if nobody holds it or it vanished meanwhile."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(name)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        probe.close()
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid


class NamespaceLock:
    """Held from ``__enter__`` to ``__exit__``; waits up to ``wait`` seconds for a holder.

    ``on_wait`` is told the holder's pid once, when this run first has to wait, so the
    operator sees why it pauses.
    """

    def __init__(
        self,
        wait: float = DEFAULT_WAIT,
        name: bytes = LOCK_NAME,
        on_wait: Callable[[int | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.name = name
        self.on_wait = on_wait
        self.clock = clock
        self._socket: socket.socket | None = None

    def __enter__(self) -> NamespaceLock:
        deadline = self.clock() + self.wait
        told = False
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.name)
            except OSError as err:
                sock.close()
                if err.errno != errno.EADDRINUSE:
                    raise
            else:
                sock.listen(8)  # so a waiter can ask who holds it (SO_PEERCRED)
                self._socket = sock
                return self
            if self.clock() >= deadline:
                pid = holder_pid(self.name)
                who = f"pid {pid}" if pid else "a process that has just exited"
                raise LockTimeout(
                    f"another detour-init ({who}) is changing this network namespace: "
                    f"gave up after waiting {self.wait:g}s (--wait)"
                )
            if not told and self.on_wait is not None:
                self.on_wait(holder_pid(self.name))
                told = True
            time.sleep(_RETRY_EVERY)

    def __exit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
