"""Workers as the supervisor sees them: in its own process, or one process per worker.

``--concurrency 1`` runs the data path in the supervisor's event loop (``InProcessWorker``):
one Python process, as Envoy with ``--concurrency 1`` is one process, so an idle sidecar costs
one interpreter's memory instead of two. ``--concurrency N`` (N > 1) starts N worker processes
(``WorkerProcess``) sharing the ports via SO_REUSEPORT: the supervisor binds one set of
listening sockets per worker (the kernel spreads new connections over them) and starts each
worker as a fresh interpreter (``python -m proxy.workers``) that inherits its sockets and a
control socket. A fresh interpreter rather than ``fork()``: the supervisor runs an event loop,
and a forked child would inherit its loop, signal wakeup fd and running-loop state.

Both implement ``WorkerHandle``, so the supervisor (``sidecar.py``) drives them the same way.
They differ in what a crash means. A worker process that dies is replaced by the supervisor on
the same sockets (connections queued meanwhile are served), and the admin ports stay up
throughout. In-process there is nothing to restart: an exception in a connection's code costs
that connection only (``Session`` and ``Downstream`` catch it, asyncio contains the rest), but
what ends a process — a crash in C code, the OOM killer, SystemExit — ends the whole sidecar,
as it ends Envoy; the pod's restart policy replaces it. A callback that blocks the loop also
delays admin, readiness and DNS, which share the loop.

The control channel of a worker process carries length-prefixed pickles (both ends are this
program): the supervisor sends ``mesh``, ``stats``, ``stop_accepting`` and ``drain``; the worker
answers each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.access_log import AccessLog
from proxy.config.diff import replaced_indexes, with_replaced
from proxy.config.model import Mesh
from proxy.downstream_limits import DownstreamLimits
from proxy.logs import setup_logging
from proxy.platform.heap import freeze_startup_objects
from proxy.routing import SIDECAR_PORTS
from proxy.session import ListenerInfo
from proxy.worker import (
    INBOUND_TPROXY,
    INBOUND_V4,
    INBOUND_V6,
    OUTBOUND,
    ListenSpec,
    Worker,
    WorkerReport,
)

log = logging.getLogger("detour.proxy")
_FRAME = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
LISTENER_KINDS = {"outbound": OUTBOUND, "inbound4": INBOUND_V4, "inbound6": INBOUND_V6}
# A worker process left without its supervisor drains its open connections this long.
ORPHAN_DRAIN_TIMEOUT = 30.0


def listener_info(kind: str, transparent: bool) -> ListenerInfo:
    """What a listener of ``kind`` does with its connections. A TPROXY inbound listener also
    connects to the app transparently, from the client's own address."""
    return INBOUND_TPROXY if transparent and kind.startswith("inbound") else LISTENER_KINDS[kind]


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_FRAME.pack(len(payload)) + payload)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"control frame of {size} bytes refused")
    return pickle.loads(await reader.readexactly(size))


class WorkerHandle(Protocol):
    """One worker's data path as the supervisor drives it, wherever it runs."""

    index: int
    listeners: list[tuple[ListenSpec, str]]  # (spec, kind name)

    @property
    def alive(self) -> bool:
        """False once a worker process has exited (the supervisor then restarts it)."""

    @property
    def exit_code(self) -> int | None:
        """How a dead worker process ended, for the log."""

    async def start(self, mesh: Mesh) -> None:
        """Serve the listeners with ``mesh``; returns once the worker accepts connections."""

    async def apply_mesh(self, mesh: Mesh) -> None:
        """A reload: new connections route by ``mesh``, open ones keep what they started with."""

    async def report(self) -> WorkerReport:
        """The worker's stats and cluster rows, for the supervisor to sum."""

    async def stop_accepting(self) -> None:
        """Refuse new connections at once (every copy of the listening sockets closes); open
        ones go on."""

    async def drain(self, timeout: float) -> int:
        """Stop accepting, let open connections finish within ``timeout`` seconds; returns how
        many were cut at the deadline."""

    async def stop(self) -> None:
        """Release what is left after a drain or an exit (channel, process), before a restart
        or the supervisor's own exit."""


class InProcessWorker:
    """``--concurrency 1``: the data path runs in the supervisor's own event loop.

    No child, no control socket, no pickling: a reload hands the same frozen ``Mesh`` to the
    worker, and stats are read directly. The listening sockets belong to the event loop's
    servers once started (uvloop closes them when a server closes).
    """

    def __init__(
        self,
        index: int,
        listeners: list[tuple[ListenSpec, str]],
        access_log: str,
        sink: AccessLog | None = None,
        limits: DownstreamLimits = DownstreamLimits(),  # noqa: B008  (frozen)
        own_ports: frozenset[int] = SIDECAR_PORTS,
    ) -> None:
        self.index = index
        self.listeners = listeners
        self.access_log = access_log
        self.sink = sink  # the supervisor's access log: this worker runs in its process
        self.limits = limits
        self.own_ports = own_ports
        self.worker: Worker | None = None

    @property
    def alive(self) -> bool:
        return True  # it lives as long as the supervisor does

    @property
    def exit_code(self) -> int | None:
        return None

    async def start(self, mesh: Mesh) -> None:
        self.worker = Worker(
            mesh, self.access_log, self.sink, self.limits, own_ports=self.own_ports
        )
        await self.worker.start([spec for spec, _kind in self.listeners])

    async def apply_mesh(self, mesh: Mesh) -> None:
        self.worker.apply_mesh(mesh)

    async def report(self) -> WorkerReport:
        return self.worker.report()

    async def stop_accepting(self) -> None:
        self.worker.stop_accepting()

    async def drain(self, timeout: float) -> int:
        return await self.worker.drain(timeout)

    async def stop(self) -> None:
        """Nothing to release: the drain closed the servers and their sockets."""


@dataclass
class WorkerProcess:
    """One worker process: its sockets, its process and its control channel."""

    index: int
    listeners: list[tuple[ListenSpec, str]]  # (spec, kind name)
    access_log: str
    log_format: str
    limits: DownstreamLimits = field(default_factory=DownstreamLimits)
    workers: int = 1  # how many share the sidecar's limits
    own_ports: frozenset[int] = SIDECAR_PORTS  # the sidecar's listeners: never a destination
    process: subprocess.Popen | None = None
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _held: Mesh | None = None  # the mesh the process was last given (None: unknown)

    async def start(self, mesh: Mesh) -> None:
        ours, theirs = socket.socketpair()
        fds = [spec.sock.fileno() for spec, _ in self.listeners]
        args = [
            sys.executable,
            "-m",
            "proxy.workers",
            "--control-fd",
            str(theirs.fileno()),
            "--index",
            str(self.index),
            "--access-log",
            self.access_log,
            "--log-format",
            self.log_format,
        ]
        for spec, kind in self.listeners:
            suffix = ":transparent" if spec.transparent else ""
            args += ["--listen", f"{spec.sock.fileno()}={kind}{suffix}"]
        self.process = subprocess.Popen(args, pass_fds=[theirs.fileno(), *fds])
        theirs.close()
        self._reader, self._writer = await asyncio.open_connection(sock=ours)
        await self.request(
            {
                "op": "mesh",
                "mesh": mesh,
                "limits": self.limits,
                "workers": self.workers,
                "own_ports": self.own_ports,
            }
        )
        self._held = mesh

    async def request(self, message: dict) -> Any:
        async with self._lock:
            await send(self._writer, message)
            return await receive(self._reader)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def apply_mesh(self, mesh: Mesh) -> None:
        """The new mesh, or only the services it replaced in the one the process holds (an
        endpoint update: pickling every service for each would cost what the mesh is)."""
        held, self._held = self._held, None  # unknown until the process says it took it
        indexes = replaced_indexes(held, mesh) if held is not None else None
        if indexes is None:
            await self.request({"op": "mesh", "mesh": mesh})
        else:
            services = [(i, mesh.services[i]) for i in indexes]
            await self.request({"op": "replace", "services": services, "source": mesh.source})
        self._held = mesh

    async def report(self) -> WorkerReport:
        return await self.request({"op": "stats"})

    async def stop_accepting(self) -> None:
        self._close_listeners()
        if self.alive:
            await self.request({"op": "stop_accepting"})

    async def drain(self, timeout: float) -> int:
        self._close_listeners()
        if not self.alive:
            return 0
        reply = await self.request({"op": "drain", "timeout": timeout})
        return reply["aborted"]

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.process is not None:
            await asyncio.to_thread(self.process.wait)

    def _close_listeners(self) -> None:
        """Close the supervisor's copies of the listening sockets. A socket listens while any
        process holds it, so without this new connections would queue unanswered until exit
        instead of being refused at once."""
        for spec, _kind in self.listeners:
            spec.sock.close()


# --- worker side --------------------------------------------------------------------------


async def serve(
    control: socket.socket, listeners: list[ListenSpec], access_log: str, sink: AccessLog
) -> int:
    reader, writer = await asyncio.open_connection(sock=control)
    first = await receive(reader)
    worker = Worker(
        first["mesh"], access_log, sink, first["limits"], first["workers"], first["own_ports"]
    )
    await worker.start(listeners)
    freeze_startup_objects()
    await send(writer, {"ok": True, "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    # Ctrl-C or a SIGTERM sent to the whole process group must not cut connections: the
    # supervisor gets the signal too and drains every worker in order.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    while True:
        try:
            message = await receive(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The supervisor is gone: nobody can reload or scrape us; finish what is open.
            await worker.drain(ORPHAN_DRAIN_TIMEOUT)
            return 0
        op = message["op"]
        if op == "mesh":
            worker.apply_mesh(message["mesh"])
            await send(writer, {"ok": True})
        elif op == "replace":
            worker.apply_mesh(with_replaced(worker.mesh, message["services"], message["source"]))
            await send(writer, {"ok": True})
        elif op == "stats":
            await send(writer, worker.report())
        elif op == "stop_accepting":
            worker.stop_accepting()
            await send(writer, {"ok": True})
        elif op == "drain":
            aborted = await worker.drain(message["timeout"])
            await send(writer, {"aborted": aborted})
            return 0


def _parse_listen(value: str) -> ListenSpec:
    fd_text, _, rest = value.partition("=")
    kind, _, flag = rest.partition(":")
    sock = socket.socket(fileno=int(fd_text))
    sock.setblocking(False)
    transparent = flag == "transparent"
    return ListenSpec(sock, listener_info(kind, transparent), transparent=transparent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.workers")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--access-log", default="text")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    process = f"worker {args.index}"
    setup_logging(args.log_format, process)
    import uvloop

    control = socket.socket(fileno=args.control_fd)
    listeners = [_parse_listen(value) for value in args.listen]
    sink = AccessLog(args.log_format, process)
    try:
        return uvloop.run(serve(control, listeners, args.access_log, sink))
    finally:
        sink.flush()


if __name__ == "__main__":
    sys.exit(main())
