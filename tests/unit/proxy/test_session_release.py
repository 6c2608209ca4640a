"""A finished session is freed by reference counting, not left to the cycle collector.

Left in reference cycles (a half's ``on_lost`` is its session's method, an HTTP channel and
its manager point at each other), a connection that lived long enough to reach the oldest
generation stayed allocated until a full collection: after 5,000 idle keep-alive
connections closed, a worker kept ~146,000 objects (23 MB) and the collection that freed them
paused whatever was in flight. Here, with the collector off, every session of a closed TCP
relay, of a closed HTTP/1.1 keep-alive connection and of a closed HTTP/2 connection must be
gone once the loop lets go of it.
The real worker on uvloop, real sockets; only the original-destination lookup is patched (no
iptables here), as in test_inprocess_worker.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import weakref
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
import uvloop

import proxy.session
import proxy.worker
from proxy.config.model import Endpoint, Mesh, Service, ServicePort
from proxy.platform.sockets import listening_socket
from proxy.worker import OUTBOUND, ListenSpec
from proxy.workers import InProcessWorker

TIMEOUT = 5.0
VIP = "240.240.0.7"
CONNECTIONS = 20


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 origin: "ok" to every request."""
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()


async def _h2_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Two requests on one HTTP/2 connection (prior knowledge), each answered 200 "ok"."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for stream_id in (1, 3):
        headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "web")]
        client.send_headers(stream_id, headers, end_stream=True)
        writer.write(client.data_to_send())
        status, body, ended = None, b"", False
        while not ended:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert data, "the sidecar closed the HTTP/2 connection"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    client.acknowledge_received_data(len(event.data), stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    ended = True
            writer.write(client.data_to_send())
        assert (status, body) == (b"200", b"ok")
    client.close_connection()
    writer.write(client.data_to_send())


def _tracked_sessions(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Weak references to every session the worker starts."""
    refs: list[weakref.ref] = []
    start = proxy.session.Session.start

    def tracking_start(self: proxy.session.Session) -> None:
        refs.append(weakref.ref(self))
        start(self)

    monkeypatch.setattr(proxy.session.Session, "start", tracking_start)
    return refs


async def _served(protocol: str, monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """CONNECTIONS connections through a worker, each used and then closed by its client; the
    weak references to their sessions once the worker has accounted every one as closed."""
    origin = await asyncio.start_server(_echo if protocol == "tcp" else _http, "127.0.0.1", 0)
    origin_port = origin.sockets[0].getsockname()[1]
    destination = ("127.0.0.1", origin_port) if protocol == "tcp" else (VIP, 8080)
    monkeypatch.setattr(proxy.worker, "original_destination", lambda _sock: destination)
    sessions = _tracked_sessions(monkeypatch)
    service = Service(
        name="web",
        namespace="default",
        vips=(ipaddress.ip_address(VIP),),
        ports=(ServicePort("http", 8080, "http", origin_port),),
        endpoints=(Endpoint(ipaddress.ip_address("127.0.0.1")),),
    )
    listener = listening_socket("127.0.0.1", 0)
    worker = InProcessWorker(0, [(ListenSpec(listener, OUTBOUND), "outbound")], "off")
    await worker.start(Mesh(services=(service,)))
    port = listener.getsockname()[1]
    for _ in range(CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if protocol == "tcp":
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
        elif protocol == "h2":
            await _h2_requests(reader, writer)
        else:
            for _request in range(2):  # keep-alive: the second on the same connection
                writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"ok"
        writer.close()
        await writer.wait_closed()
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while worker.worker.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert not worker.worker.sessions, "every connection was accounted as closed"
    await asyncio.sleep(0.05)  # the loop's last callbacks for the closed transports
    assert await worker.drain(TIMEOUT) == 0
    origin.close()
    return sessions


@pytest.mark.parametrize("protocol", ["tcp", "http", "h2"])
def test_a_closed_connections_session_is_freed_without_the_cycle_collector(
    protocol: str, monkeypatch: pytest.MonkeyPatch, collector_off: None
) -> None:
    sessions = uvloop.run(asyncio.wait_for(_served(protocol, monkeypatch), 30))
    assert len(sessions) == CONNECTIONS
    alive = [ref() for ref in sessions if ref() is not None]
    assert alive == [], f"{len(alive)} of {CONNECTIONS} sessions wait for the collector"
