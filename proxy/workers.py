"""Worker processes: one uvloop data path per core, supervised, sharing ports via SO_REUSEPORT.

The supervisor binds one set of listening sockets per worker (all with SO_REUSEPORT, so the
kernel spreads new connections over them) and starts each worker as a fresh interpreter
(``python -m proxy.workers``) that inherits its sockets and a control socket. A fresh
interpreter rather than ``fork()``: the supervisor runs an event loop, and a forked child
would inherit its loop, signal wakeup fd and running-loop state. When a worker dies, the
supervisor starts a new one on the same sockets, so connections queued meanwhile are served.

The control channel carries length-prefixed pickles (both ends are this program): the
supervisor sends ``mesh``, ``stats``, ``stop_accepting`` and ``drain``; the worker answers each.
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

from proxy.config.model import Mesh
from proxy.worker import INBOUND_TPROXY, INBOUND_V4, INBOUND_V6, OUTBOUND, ListenSpec, Worker

log = logging.getLogger("detour.proxy")
_FRAME = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
LISTENER_KINDS = {"outbound": OUTBOUND, "inbound4": INBOUND_V4, "inbound6": INBOUND_V6}


async def send(writer: asyncio.StreamWriter, message: dict) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_FRAME.pack(len(payload)) + payload)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"control frame of {size} bytes refused")
    return pickle.loads(await reader.readexactly(size))


# --- supervisor side ----------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One worker as the supervisor sees it: its sockets, its process and its channel."""

    index: int
    listeners: list[tuple[ListenSpec, str]]  # (spec, kind name)
    access_log: str
    log_format: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
        await self.request({"op": "mesh", "mesh": mesh})

    async def request(self, message: dict) -> dict:
        async with self._lock:
            await send(self._writer, message)
            return await receive(self._reader)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def close_channel(self) -> None:
        if self._writer is not None:
            self._writer.close()


# --- worker side --------------------------------------------------------------------------


async def serve(control: socket.socket, listeners: list[ListenSpec], access_log: str) -> int:
    reader, writer = await asyncio.open_connection(sock=control)
    first = await receive(reader)
    worker = Worker(first["mesh"], access_log)
    await worker.start(listeners)
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
            await worker.drain(30.0)
            return 0
        op = message["op"]
        if op == "mesh":
            worker.apply_mesh(message["mesh"])
            await send(writer, {"ok": True})
        elif op == "stats":
            worker.refresh_gauges()
            await send(
                writer,
                {
                    "stats": worker.stats.snapshot(),
                    "clusters": [row for c in worker.clusters.values() for row in c.rows()],
                    "sessions": len(worker.sessions),
                },
            )
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
    # A TPROXY inbound listener also connects to the app transparently, from the client.
    info = INBOUND_TPROXY if transparent and kind.startswith("inbound") else LISTENER_KINDS[kind]
    return ListenSpec(sock, info, transparent=transparent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.workers")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--access-log", default="text")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    from proxy.cli import setup_logging

    setup_logging(args.log_format, f"worker {args.index}")
    import uvloop

    control = socket.socket(fileno=args.control_fd)
    listeners = [_parse_listen(value) for value in args.listen]
    return uvloop.run(serve(control, listeners, args.access_log))


if __name__ == "__main__":
    sys.exit(main())
