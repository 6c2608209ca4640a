"""Real peers on 127.0.0.1 around the codec adapters, and a sidecar side wired as the session
wires it, for the tests of ``proxy/filters``.

* ``Sidecar``: a listener whose every accepted transport is handed to
  ``http_connection.http1_manager`` / ``http2_manager`` (as ``Session._serve_http`` does after
  sniffing), with a real ``Pipeline`` over the mesh YAML's clusters, router and a real
  ``Connector``; it records every ``exchange_done`` call.
* ``Wire``: one raw non-blocking TCP socket (a client, or an upstream's accepted side) read and
  written through the loop's ``sock_*`` calls, so a test sees what the kernel sees: bytes in
  order, then EOF (a FIN) or ``ConnectionResetError`` (a RST), never a buffered copy that an
  exception overtakes.
* ``H1Upstream``: a scripted HTTP/1.1 server of raw ``Wire`` connections (one handler coroutine
  per connection, given by the test), counting the connections it accepted.
* ``H2Peer`` / ``H2Upstream``: h2's own ``H2Connection`` as the client or the server, recording
  each stream's head, data, trailers, end and reset.
* Minimal HTTP/1.1 message reading (``read_head``, ``read_body``, ``read_response``), written
  here rather than taken from ``proxy.http`` so that the peers do not share the code under test.

Nothing here sleeps to synchronise: waits are on a ``Signal`` that every change notifies, and
each test bounds its whole run with ``asyncio.timeout`` (``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import uvloop
import yaml
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame

from proxy.config.loader import parse_mesh
from proxy.config.model import Service, ServicePort
from proxy.filters import http_connection
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.forward import Pipeline
from proxy.pipeline.router import HttpRouter
from proxy.series import Stats
from proxy.stats import Counter, cluster_labels, listener_labels
from proxy.upstream.cluster import ClusterKey, ClusterRuntime, build_clusters
from proxy.upstream.connector import ANY_SOURCE, Connector

Headers = list[tuple[bytes, bytes]]
TEST_TIMEOUT = 5.0  # every scenario as a whole; a wait that never ends fails the test here
SERVICE = "backend"
PORT = 8080


def run(scenario: Callable[[], Awaitable[None]], timeout: float = TEST_TIMEOUT) -> None:
    """Run ``scenario`` on a fresh uvloop (the sidecar's loop), bounded by ``timeout``; any
    exception the loop reports from a callback or an abandoned task fails the test."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        async with asyncio.timeout(timeout):
            await scenario()
        assert not errors, f"the loop reported errors: {errors}"

    uvloop.run(main())


class Signal:
    """Wakes every coroutine waiting in ``until`` whenever ``notify`` is called."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def until(self, predicate: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        while not predicate():
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter


# --- the mesh ------------------------------------------------------------------------------


def mesh_yaml(
    upstream_port: int,
    *,
    protocol: str = "http",
    retries: dict[str, Any] | None = None,
    timeout: str | None = None,
) -> str:
    """One service "backend" on port 8080 (``protocol``), its one endpoint 127.0.0.1 on
    ``upstream_port``, one route with ``retries`` (the model's defaults when None, else a
    back-off of 1-2 ms) and the route ``timeout`` when given."""
    route: dict[str, Any] = {"name": "default"}
    if retries is not None:
        route["retries"] = {"backoff_base": "1ms", "backoff_max": "2ms", **retries}
    if timeout is not None:
        route["timeout"] = timeout
    service: dict[str, Any] = {
        "name": SERVICE,
        "namespace": "default",
        "vip": "10.96.0.10",
        "ports": [
            {"name": "web", "port": PORT, "protocol": protocol, "target_port": upstream_port}
        ],
        "endpoints": [{"address": "127.0.0.1"}],
        "http": [route],
        "traffic_policy": {"connect_timeout": "1s"},
    }
    document = {"workload": {"name": "client", "namespace": "default"}, "services": [service]}
    return str(yaml.safe_dump(document, sort_keys=False))


@dataclass
class Upstreams:
    """What the Pipeline takes from its worker (``forward.Upstreams``)."""

    stats: Stats
    clusters: Mapping[ClusterKey, ClusterRuntime]
    rng: random.Random


# --- the sidecar side ----------------------------------------------------------------------


class _Handover(asyncio.Protocol):
    """Accepts a connection and hands its transport to the sidecar's connection manager at
    once (the session does it after sniffing the first bytes)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sidecar.accept(transport)  # type: ignore[arg-type]


class Sidecar:
    """The HTTP half of a session for every connection to its listener: one Pipeline per
    connection over the mesh's clusters, the connection manager of ``downstream`` ("http1" or
    "http2"), ``manager.run()`` in a task, then ``manager.finish()``."""

    def __init__(
        self, yaml_text: str, downstream: str = "http1", head_timeout: float = 0.0
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.head_timeout = head_timeout  # the request headers timeout (HTTP/1.1 and HTTP/2)
        self.head_timeouts = 0  # how many times it fired
        self.mesh = parse_mesh(yaml_text, "mesh.yaml")
        self.service: Service = self.mesh.services[0]
        self.port: ServicePort = self.service.ports[0]
        self.stats = Stats()
        self.clusters = build_clusters(self.mesh, {}, self.stats, random.Random(1))
        self.upstreams = Upstreams(self.stats, self.clusters, random.Random(2))
        self.connector = Connector(self.loop, self.stats)
        self.router = HttpRouter(self.service)
        self.downstream = downstream
        self.exchanges: list[Exchange] = []
        self.managers: list[http_connection.HttpManager] = []
        self.runs: list[asyncio.Task[None]] = []
        self.changed = Signal()
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def __aenter__(self) -> Sidecar:
        self.server = await self.loop.create_server(lambda: _Handover(self), "127.0.0.1", 0)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for manager in self.managers:
            manager.abort()
        for task in self.runs:
            task.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)
        for cluster in self.clusters.values():
            cluster.retire()

    @property
    def cluster(self) -> ClusterRuntime:
        return self.clusters[(self.service.key, self.port.port, "")]

    def counter(self, metric: Counter) -> int:
        return self.stats.counters.get((metric, cluster_labels(self.cluster.name)), 0)

    def accept(self, transport: asyncio.Transport) -> None:
        client_http2 = self.downstream == "http2"
        new_try = http_connection.new_try_factory(
            self.connector,
            ANY_SOURCE,
            http_connection.upstream_speaks_http2(self.port.protocol, client_http2),
        )
        peer = transport.get_extra_info("peername")[0]
        pipeline = Pipeline(self.upstreams, self.service, self.port, self.router, peer, new_try)
        manager: http_connection.HttpManager
        if client_http2:
            manager = http_connection.http2_manager(
                pipeline,
                transport,
                b"",
                False,
                self.loop,
                self._done,
                self.stats,
                listener_labels("virtualOutbound"),
                self.head_timeout,
                self._head_timed_out,
            )
        else:
            manager = http_connection.http1_manager(
                pipeline,
                transport,
                b"",
                False,
                self.loop,
                self._done,
                self.head_timeout,
                self._head_timed_out,
            )
        self.managers.append(manager)
        self.runs.append(self.loop.create_task(self._run(manager)))
        self.changed.notify()

    async def _run(self, manager: http_connection.HttpManager) -> None:
        try:
            await manager.run()
        finally:
            manager.finish()
            self.changed.notify()

    def _head_timed_out(self) -> None:
        self.head_timeouts += 1

    def _done(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        self.changed.notify()

    async def exchange(self, number: int = 1) -> Exchange:
        """The ``number``-th exchange reported done (waiting for it)."""
        await self.changed.until(lambda: len(self.exchanges) >= number)
        return self.exchanges[number - 1]

    async def manager(self, number: int = 1) -> Any:
        """The connection manager of the ``number``-th accepted connection."""
        await self.changed.until(lambda: len(self.managers) >= number)
        return self.managers[number - 1]

    async def finished(self, number: int = 1) -> None:
        """The ``number``-th connection's ``run`` has returned."""
        await self.changed.until(lambda: len(self.runs) >= number and self.runs[number - 1].done())


# --- raw sockets ---------------------------------------------------------------------------

EOF = "eof"
RESET = "reset"


class Wire:
    """One connected TCP socket, read into a buffer through the loop's ``sock_recv``."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.ended: str | None = None  # EOF or RESET once the peer finished sending

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Wire:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self) -> bool:
        """Read once more; False once the peer has finished (EOF or reset)."""
        if self.ended is not None:
            return False
        try:
            data = await self.loop.sock_recv(self.sock, 65536)
        except ConnectionResetError:
            self.ended = RESET
            return False
        if not data:
            self.ended = EOF
            return False
        self.buffer += data
        return True

    async def read_until(self, marker: bytes) -> bytes:
        """Up to and including ``marker``; raises EOFError when the peer ends first."""
        while (index := self.buffer.find(marker)) < 0:
            if not await self._fill():
                raise EOFError(f"{self.ended} before {marker!r}; got {bytes(self.buffer)!r}")
        return self._take(index + len(marker))

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"{self.ended} after {len(self.buffer)} of {size} bytes")
        return self._take(size)

    async def read_to_end(self) -> tuple[bytes, str]:
        """Everything until the peer ends, and how it ended (EOF or RESET)."""
        while await self._fill():
            pass
        assert self.ended is not None
        return self._take(len(self.buffer)), self.ended

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with a RST (SO_LINGER 0), as a client that gives up does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# --- HTTP/1.1 on a wire --------------------------------------------------------------------


@dataclass
class Message:
    """An HTTP/1.1 message as a peer read it off the wire."""

    start: bytes  # the request line or the status line
    headers: Headers  # names lowercased, in order
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    chunked: bool = False

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return b",".join(values) if values else None

    @property
    def status(self) -> int:
        return int(self.start.split(b" ")[1])

    @property
    def target(self) -> bytes:
        return self.start.split(b" ")[1]


def _fields(block: bytes) -> Headers:
    fields: Headers = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


async def read_head(wire: Wire) -> Message:
    """A start line and its header fields."""
    head = await wire.read_until(b"\r\n\r\n")
    start, _, rest = head[:-4].partition(b"\r\n")
    return Message(start, _fields(rest))


async def read_body(wire: Wire, message: Message, *, to_close: bool = False) -> Message:
    """The body of ``message`` by its framing (Content-Length, chunked with trailers), or
    until the peer closes when ``to_close`` and neither is present."""
    length = message.header(b"content-length")
    encoding = message.header(b"transfer-encoding")
    if encoding is not None and encoding.lower().endswith(b"chunked"):
        message.chunked = True
        body = bytearray()
        while True:
            size = int((await wire.read_until(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                break
            body += await wire.read_exactly(size)
            assert await wire.read_exactly(2) == b"\r\n"
        trailers = b""
        while (line := await wire.read_until(b"\r\n")) != b"\r\n":
            trailers += line
        message.body, message.trailers = bytes(body), _fields(trailers)
    elif length is not None:
        message.body = await wire.read_exactly(int(length))
    elif to_close:
        message.body, _how = await wire.read_to_end()
    return message


async def read_request(wire: Wire) -> Message:
    return await read_body(wire, await read_head(wire))


async def read_response(wire: Wire) -> Message:
    """A final response (interim 1xx heads are skipped), body included."""
    while True:
        head = await read_head(wire)
        if not 100 <= head.status < 200 or head.status == 101:
            break
    if head.status in (101, 204, 304):
        return head
    return await read_body(wire, head, to_close=True)


def h1_request(
    method: bytes,
    target: bytes,
    *headers: tuple[bytes, bytes],
    host: bytes | None = SERVICE.encode(),
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """An HTTP/1.1 request head (with ``Host`` unless ``host`` is None)."""
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def h1_response(status: int, body: bytes = b"", *headers: tuple[bytes, bytes]) -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    lines = [b"HTTP/1.1 %d X" % status, b"Content-Length: %d" % len(body)]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*parts: bytes, trailers: Headers | None = None) -> bytes:
    """``parts`` as chunks, the last chunk, then ``trailers``."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)
    out += b"0\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in trailers or [])
    return out + b"\r\n"


# --- a scripted HTTP/1.1 upstream ----------------------------------------------------------

Handler = Callable[[Wire, int], Awaitable[None]]


class H1Upstream:
    """Accepts connections on 127.0.0.1 and runs ``handler(wire, index)`` for each (index: the
    connection's number from 0). What a handler raises is kept in ``outcomes`` (None for one
    that returned) and raised again when the ``async with`` block ends without an error of
    its own: handlers catch what their scenario expects."""

    def __init__(self, handler: Handler) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.outcomes: list[BaseException | None] = []
        self.changed = Signal()
        self._tasks: list[asyncio.Task[None]] = []
        self._acceptor: asyncio.Task[None] | None = None

    async def __aenter__(self) -> H1Upstream:
        self._acceptor = self.loop.create_task(self._accept())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        assert self._acceptor is not None
        self._acceptor.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._acceptor, *self._tasks, return_exceptions=True)
        self.listener.close()
        failures = [outcome for outcome in self.outcomes if outcome is not None]
        if exc_type is None and failures:  # a handler's assertion or surprise fails the test
            raise failures[0]

    async def _accept(self) -> None:
        while True:
            sock, _peer = await self.loop.sock_accept(self.listener)
            index = self.accepted
            self.accepted += 1
            self.outcomes.append(None)
            self._tasks.append(self.loop.create_task(self._serve(Wire(sock), index)))
            self.changed.notify()

    async def _serve(self, wire: Wire, index: int) -> None:
        try:
            await self.handler(wire, index)
        except Exception as exc:
            self.outcomes[index] = exc
        finally:
            wire.close()
            self.changed.notify()

    async def done(self, index: int = 0) -> None:
        """Connection ``index``'s handler has returned (or raised)."""
        await self.changed.until(lambda: len(self._tasks) > index and self._tasks[index].done())


# --- HTTP/2 peers on h2 --------------------------------------------------------------------


@dataclass
class H2Message:
    """What one peer received on one stream."""

    headers: Headers | None = None
    data: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    ended: bool = False
    reset: int | None = None  # the peer's RST_STREAM error code

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers or []:
            if key == name:
                return value
        return None


class H2Peer(asyncio.Protocol):
    """h2's ``H2Connection`` on a transport, client or server side: every stream's events are
    recorded in ``streams``; received data is acknowledged at once (no flow-control stalls in
    these small exchanges). An h2 ProtocolError (what the sidecar sent broke HTTP/2) is kept in
    ``errors``."""

    def __init__(
        self,
        client_side: bool,
        on_request: Callable[[H2Peer, int], None] | None = None,
        changed: Signal | None = None,
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.streams: dict[int, H2Message] = {}
        self.order: list[int] = []  # stream ids in the order their heads arrived
        self.errors: list[Exception] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.goaway: int | None = None
        self.changed = changed or Signal()
        self._on_request = on_request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.errors.append(exc)
            self.flush()
            self.changed.notify()
            return
        for event in events:
            self._event(event)
        self.flush()
        self.changed.notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.changed.notify()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
            message = self.streams.setdefault(event.stream_id, H2Message())
            message.headers = list(event.headers)
            self.order.append(event.stream_id)
            if isinstance(event, h2.events.RequestReceived) and self._on_request is not None:
                self._on_request(self, event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].data += event.data
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[event.stream_id].trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams.setdefault(event.stream_id, H2Message()).reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.lost:
            self.transport.write(data)

    # --- what the tests do ----------------------------------------------------------------

    def request(
        self,
        headers: Headers,
        body: bytes = b"",
        *,
        trailers: Headers | None = None,
        end: bool = True,
    ) -> int:
        """A new stream (client side): ``headers``, then ``body``, then ``trailers`` (or
        END_STREAM with the last of them when ``end``)."""
        stream_id: int = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = H2Message()
        self.send(stream_id, headers, body, trailers=trailers, end=end)
        return stream_id

    def send(
        self,
        stream_id: int,
        headers: Headers | None,
        body: bytes = b"",
        *,
        trailers: Headers | None = None,
        end: bool = True,
    ) -> None:
        """On ``stream_id``: a head (when given), data, then trailers or END_STREAM."""
        if headers is not None:
            only_head = end and not body and trailers is None
            self.conn.send_headers(stream_id, headers, end_stream=only_head)
            if only_head:
                self.flush()
                return
        if body:
            self.conn.send_data(stream_id, body, end_stream=end and trailers is None)
        if trailers is not None:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        elif end and not body and headers is None:
            self.conn.end_stream(stream_id)
        self.flush()

    async def send_all(self, stream_id: int, data: bytes, *, end: bool = True) -> None:
        """``data`` on ``stream_id`` as the other side's flow-control windows allow, waiting
        for its WINDOW_UPDATEs (what a real peer does with a body larger than a window)."""
        view = memoryview(data)
        conn = self.conn

        def window() -> int:
            return min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)

        while view:
            await self.until(lambda: window() > 0 or self.streams[stream_id].reset is not None)
            if self.streams[stream_id].reset is not None:
                raise ConnectionResetError(f"stream {stream_id} reset")
            size = window()
            chunk, view = view[:size], view[size:]
            conn.send_data(stream_id, chunk.tobytes(), end_stream=end and not view)
            self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def graceful_goaway(self, last_stream_id: int) -> None:
        """GOAWAY NO_ERROR written past h2 (whose state machine would close at once, see
        python-hyper/h2#1181), so that this peer can still finish the streams up to
        ``last_stream_id``, as RFC 9113 §6.8 allows and as Detour's own drain does. What h2
        has queued goes first, in the same write."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send() + frame.serialize())

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection()
            self.flush()
            self.transport.close()

    async def until(self, predicate: Callable[[], object]) -> None:
        await self.changed.until(predicate)


async def h2_client(address: tuple[str, int]) -> H2Peer:
    """An HTTP/2 client (prior knowledge) connected to ``address``."""
    loop = asyncio.get_running_loop()
    peer = H2Peer(client_side=True)
    await loop.create_connection(lambda: peer, *address)
    return peer


class H2Upstream:
    """An HTTP/2 server on 127.0.0.1: one ``H2Peer`` per accepted connection in ``peers``;
    ``on_request(peer, stream_id)`` runs as each request head arrives (it may answer at once,
    or the test answers later). Frames from the sidecar that h2 refuses fail the test when
    the ``async with`` block ends."""

    def __init__(self, on_request: Callable[[H2Peer, int], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_request = on_request
        self.peers: list[H2Peer] = []
        self.changed = Signal()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def _made(self) -> H2Peer:
        def on_request(peer: H2Peer, stream_id: int) -> None:
            if self.on_request is not None:
                self.on_request(peer, stream_id)

        peer = H2Peer(client_side=False, on_request=on_request, changed=self.changed)
        self.peers.append(peer)
        self.changed.notify()
        return peer

    async def __aenter__(self) -> H2Upstream:
        self.server = await self.loop.create_server(self._made, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for peer in self.peers:
            if peer.transport is not None:
                peer.transport.abort()
        assert exc_type is not None or not self.errors, f"HTTP/2 broken: {self.errors}"

    def requests(self) -> list[tuple[H2Peer, int]]:
        """Every request stream so far, in the order of arrival across connections."""
        return [(peer, stream_id) for peer in self.peers for stream_id in peer.order]

    async def request(self, number: int) -> tuple[H2Peer, int]:
        """The ``number``-th request (from 1), waiting for it."""
        await self.changed.until(lambda: len(self.requests()) >= number)
        return self.requests()[number - 1]

    @property
    def errors(self) -> list[Exception]:
        return [error for peer in self.peers for error in peer.errors]


def h2_request(method: bytes, path: bytes, *headers: tuple[bytes, bytes]) -> Headers:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", SERVICE.encode()),
        (b":path", path),
        *headers,
    ]


# --- frames by hand (a client that does not follow the rules) --------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def raw_frame(
    kind: int, flags: int, stream: int, payload: bytes, length: int | None = None
) -> bytes:
    """A frame written by hand: what a client that does not follow the rules sends (its
    ``length`` may lie about the payload)."""
    size = len(payload) if length is None else length
    header = struct.pack("!I", size)[1:] + bytes([kind, flags])
    return header + struct.pack("!I", stream) + payload


def frames_of(data: bytes) -> list[Frame]:
    """The whole frames in ``data`` (the server's side: no preface)."""
    found = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


async def answer_ok(wire: Wire, _index: int) -> None:
    """An origin answering 200 to each request until the sidecar lets go of it."""
    try:
        while True:
            await read_request(wire)
            await wire.send(h1_response(200, b"ok"))
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return


GRPC_MESSAGE = b"\x00\x00\x00\x00\x03abc"  # one length-prefixed message
