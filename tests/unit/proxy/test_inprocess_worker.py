"""The in-process worker (``--concurrency 1``): a bug in one connection's code costs that
connection only. Its event loop also serves admin, readiness and DNS, and there is no worker
process to restart, so the faulty connection must be closed (not left hanging), nothing may
reach the loop's exception handler, and connections open meanwhile or made afterwards are
served as usual.

The bug is injected, on real sockets and the real worker on uvloop: the original-destination
lookup raises for one client (the accept path, ``Downstream.connection_made``), or the route
decision raises for one destination (the session's task).
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

import proxy.worker
from proxy.config.model import Mesh
from proxy.platform.sockets import listening_socket
from proxy.routing import RouteTable
from proxy.worker import OUTBOUND, ListenSpec
from proxy.workers import InProcessWorker

TIMEOUT = 5.0
BROKEN_PORT = 9  # a destination whose route decision the test breaks


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _connect(port: int, source_port: int = 0):
    sock = socket.socket()
    sock.bind(("127.0.0.1", source_port))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _echoes(conn, data: bytes) -> bool:
    reader, writer = conn
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT) == data


async def _closed(conn) -> bool:
    """The proxy closed or reset the connection (never: it stays open, answering nothing)."""
    reader, writer = conn
    writer.write(b"anyone?")
    try:
        return await asyncio.wait_for(reader.read(100), TIMEOUT) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def _faulty_connection_is_contained(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]

    faulty_client = socket.socket()  # its port marks the connection the bug hits
    faulty_client.bind(("127.0.0.1", 0))
    faulty_port = faulty_client.getsockname()[1]
    faulty_client.close()

    def original_destination(sock: socket.socket) -> tuple[str, int]:
        if sock.getpeername()[1] != faulty_port:
            return ("127.0.0.1", echo_port)
        if stage == "accept":
            raise RuntimeError("injected bug in the accept path")
        return ("127.0.0.1", BROKEN_PORT)

    decide = RouteTable.decide

    def broken_decide(self: RouteTable, destination: tuple[str, int] | None):
        if destination is not None and destination[1] == BROKEN_PORT:
            raise RuntimeError("injected bug in the route decision")
        return decide(self, destination)

    monkeypatch.setattr(proxy.worker, "original_destination", original_destination)
    monkeypatch.setattr(RouteTable, "decide", broken_decide)

    listener = listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    worker = InProcessWorker(0, [(ListenSpec(listener, OUTBOUND), "outbound")], "off")
    await worker.start(Mesh())  # no services: ALLOW_ANY to the original destination

    before = await _connect(port)
    assert await _echoes(before, b"first")
    assert await _closed(await _connect(port, faulty_port))
    assert await _echoes(before, b"still relayed"), "a connection open meanwhile goes on"
    after = await _connect(port)
    assert await _echoes(after, b"new"), "new connections are served"

    stats = (await worker.report()).stats
    active = {name: value for name, _labels, value in stats["gauges"]}
    assert active["downstream_cx_active"] == 2, "the faulty connection was accounted for"
    for _reader, writer in (before, after):
        writer.close()
    assert await worker.drain(TIMEOUT) == 0, "the drain finishes: nothing was left hanging"
    echo.close()
    assert escaped == [], "nothing reached the event loop's exception handler"


@pytest.mark.parametrize("stage", ["accept", "route"])
def test_a_bug_in_one_connection_costs_that_connection_only(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvloop.run(asyncio.wait_for(_faulty_connection_is_contained(stage, monkeypatch), 30))
