"""The L4 relay (RelayHalf + link) over real loopback sockets, on uvloop (and asyncio).

A tiny in-process proxy stands in for the sidecar: its listener's protocol is a RelayHalf
that, once accepted, connects upstream (the upstream half's ``peer`` set before connecting, as
the session does) and calls ``link``. Clients and upstream servers are plain non-blocking
sockets driven with ``loop.sock_*``, so the test controls exactly when each side reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from proxy.platform.transport import HIGH_WATER, LOW_WATER, PAUSED_PEER_CHECK
from proxy.platform.transport import reset as reset_transport
from proxy.transport.relay import RelayHalf, link

TIMEOUT = 10.0
ONE_READ = 256 * 1024  # the largest single read of uvloop (256000) and asyncio (262144)
BUFFER_BOUND = 2 * HIGH_WATER + ONE_READ


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """uvloop is what the sidecar runs; the stdlib loop is checked too, for portability."""
    return request.param


@pytest.fixture
def run(loop_kind: str) -> Callable[[Awaitable[None]], None]:
    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    return lambda coro: runner(asyncio.wait_for(coro, 60))


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for a condition, failing with ``what`` if it does not hold within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# --- the in-process proxy --------------------------------------------------------------------


class Upstream(RelayHalf):
    """The upstream half, counting flow-control callbacks."""

    def __init__(self, on_lost) -> None:
        super().__init__(on_lost)
        self.paused_writing = 0
        self.resumed_writing = 0
        self.max_peer_buffer = 0

    def pause_writing(self) -> None:
        self.paused_writing += 1
        super().pause_writing()

    def resume_writing(self) -> None:
        self.resumed_writing += 1
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        peer = self.peer
        if peer is not None and not peer.lost:
            self.max_peer_buffer = max(self.max_peer_buffer, peer.transport.get_write_buffer_size())


class Downstream(RelayHalf):
    """The accepted half: starts the upstream connect, and records what the relay holds."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy.half_lost)
        self.proxy = proxy
        self.upstream: Upstream | None = None
        self.linked = asyncio.Event()
        self.max_peer_buffer = 0  # the upstream half's write buffer after each write to it
        self.max_early = 0
        self.paused_writing = 0
        self.resumed_writing = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.proxy.pause_on_accept:
            transport.pause_reading()  # as the worker does; uvloop ignores it at this point
        self.proxy.accepted.append(self)
        self.proxy.tasks.append(asyncio.get_running_loop().create_task(self.proxy.connect(self)))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.max_early = max(self.max_early, sum(map(len, self.early)))
        peer = self.peer
        if peer is not None and not peer.lost:
            self.max_peer_buffer = max(self.max_peer_buffer, peer.transport.get_write_buffer_size())

    def pause_writing(self) -> None:
        self.paused_writing += 1
        super().pause_writing()

    def resume_writing(self) -> None:
        self.resumed_writing += 1
        super().resume_writing()


class Proxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        gate: Callable[[Downstream], Awaitable[None]] | None = None,
        upstream_sndbuf: int | None = None,
        pause_on_accept: bool = True,
    ) -> None:
        self.upstream_address = upstream
        self.gate = gate
        self.upstream_sndbuf = upstream_sndbuf
        self.pause_on_accept = pause_on_accept
        self.accepted: list[Downstream] = []
        self.tasks: list[asyncio.Task] = []
        self.lost: list[tuple[RelayHalf, Exception | None]] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Downstream(self), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for half in [*self.accepted, *(d.upstream for d in self.accepted if d.upstream)]:
            if not half.lost and half.transport is not None:
                half.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def connect(self, down: Downstream) -> None:
        loop = asyncio.get_running_loop()
        if self.gate is not None:
            await self.gate(down)
        up = Upstream(self.half_lost)
        up.peer = down  # upstream bytes may arrive before link(), as in the session
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.upstream_sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.upstream_sndbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, self.upstream_address)
        await loop.create_connection(lambda: up, sock=sock)
        down.upstream = up
        if down.lost:
            up.transport.abort()
            return
        link(down, up)
        down.linked.set()

    def half_lost(self, half: RelayHalf, exc: Exception | None) -> None:
        self.lost.append((half, exc))

    def exc_of(self, half: RelayHalf) -> Exception | None:
        return next(exc for h, exc in self.lost if h is half)


# --- plain-socket peers ----------------------------------------------------------------------


def listener(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited on accept
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    return sock


async def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def accept(server: socket.socket) -> socket.socket:
    sock, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(server), TIMEOUT)
    sock.setblocking(False)
    return sock


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    chunks, got = [], 0
    while got < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, min(size - got, 1 << 20)), TIMEOUT)
        if not chunk:
            raise AssertionError(f"EOF after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def recv_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), TIMEOUT):
        chunks.append(chunk)
    return b"".join(chunks)


async def end_of(sock: socket.socket) -> str:
    """How the peer ended the connection: "eof" (FIN) or "reset" (RST)."""
    try:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), TIMEOUT)
    except ConnectionResetError:
        return "reset"
    assert data == b"", f"unexpected data {data[:20]!r}"
    return "eof"


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def echo(conn: socket.socket) -> None:
    """Echo until EOF, then shut down the write side."""
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(conn, 1 << 20):
        await loop.sock_sendall(conn, data)
    conn.shutdown(socket.SHUT_WR)


async def echo_server(server: socket.socket, conns: list[socket.socket], count: int = 1) -> None:
    """Accept ``count`` connections (one accept at a time) and echo each."""
    echoes = []
    for _ in range(count):
        conn = await accept(server)
        conns.append(conn)
        echoes.append(asyncio.get_running_loop().create_task(echo(conn)))
    await asyncio.gather(*echoes)


async def linked_pair(
    proxy: Proxy, server: socket.socket
) -> tuple[socket.socket, socket.socket, Downstream]:
    """A client connected through the proxy to ``server``, with one byte exchanged each way."""
    loop = asyncio.get_running_loop()
    address = await proxy.start()
    client = await connect(address)
    upstream = await accept(server)
    await loop.sock_sendall(client, b"?")
    assert await recv_exactly(upstream, 1) == b"?"
    await loop.sock_sendall(upstream, b"!")
    assert await recv_exactly(client, 1) == b"!"
    (down,) = proxy.accepted
    await asyncio.wait_for(down.linked.wait(), TIMEOUT)
    return client, upstream, down


# --- bytes round trip ------------------------------------------------------------------------


def test_several_mib_round_trip_intact(run) -> None:
    size = 8 * 1024 * 1024 + 12345
    data = payload(size)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        conns: list[socket.socket] = []
        echo = loop.create_task(echo_server(server, conns))
        proxy = Proxy(server.getsockname())
        client = await connect(await proxy.start())

        async def send() -> None:
            await loop.sock_sendall(client, data)
            client.shutdown(socket.SHUT_WR)

        sender = loop.create_task(send())
        received = await recv_until_eof(client)
        await asyncio.wait_for(sender, TIMEOUT)
        await asyncio.wait_for(echo, TIMEOUT)
        assert len(received) == size
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        (down,) = proxy.accepted
        assert down.received == size
        assert down.upstream is not None and down.upstream.received == size
        # Both directions finished: the relay closes both halves by itself, cleanly.
        await until(lambda: len(proxy.lost) == 2, "both halves to be closed")
        assert {exc for _, exc in proxy.lost} == {None}
        client.close()
        conns[0].close()
        server.close()
        await proxy.close()

    run(main())


def test_many_connections_in_parallel(run) -> None:
    count, size = 20, 200_000

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        conns: list[socket.socket] = []
        echoes = loop.create_task(echo_server(server, conns, count))
        proxy = Proxy(server.getsockname())
        address = await proxy.start()

        async def one(seed: int) -> bool:
            data = payload(size, seed)
            client = await connect(address)
            sender = loop.create_task(loop.sock_sendall(client, data))
            got = await recv_exactly(client, size)
            await sender
            client.close()
            return got == data

        assert all(await asyncio.gather(*(one(seed) for seed in range(count))))
        await asyncio.wait_for(echoes, TIMEOUT)
        for conn in conns:
            conn.close()
        server.close()
        await proxy.close()

    run(main())


# --- bytes sent before the upstream exists ---------------------------------------------------


async def until_early_bytes(down: Downstream) -> None:
    """Hold the upstream connect until the client's first bytes are buffered in the relay."""
    await until(lambda: down.early, "the client's early bytes")


def test_client_that_speaks_first_gets_everything_through(run, loop_kind: str) -> None:
    # The sidecar does not pause in connection_made (CPython 3.11's own loop would ignore
    # every later pause after that); the relay holds early bytes itself.
    pause_on_accept = False
    size = 3 * 1024 * 1024
    data = payload(size, 2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname(), gate=until_early_bytes, pause_on_accept=pause_on_accept)
        client = await connect(await proxy.start())
        sender = loop.create_task(loop.sock_sendall(client, data))
        await until(lambda: proxy.accepted and proxy.accepted[0].early, "early bytes")
        (down,) = proxy.accepted
        # One read is buffered and reading stops until the upstream is linked.
        assert not down.transport.is_reading()
        upstream = await accept(server)
        got = await recv_exactly(upstream, size)
        assert got == data
        assert down.max_early <= ONE_READ
        assert down.early == []
        await sender
        # And the other direction works too.
        await loop.sock_sendall(upstream, b"pong")
        assert await recv_exactly(client, 4) == b"pong"
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_client_that_sends_and_half_closes_before_the_upstream_exists(run) -> None:
    data = b"request before upstream\n" * 100

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname(), gate=until_early_bytes)
        client = await connect(await proxy.start())
        await loop.sock_sendall(client, data)
        client.shutdown(socket.SHUT_WR)
        upstream = await accept(server)
        assert await recv_until_eof(upstream) == data  # the bytes, then the EOF
        await loop.sock_sendall(upstream, b"reply")
        upstream.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(client) == b"reply"
        await until(lambda: len(proxy.lost) == 2, "both halves to be closed")
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_client_that_only_half_closes_before_the_upstream_exists(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()

        async def until_eof(down: Downstream) -> None:
            await until(lambda: down.eof, "the client's EOF")

        proxy = Proxy(server.getsockname(), gate=until_eof)
        client = await connect(await proxy.start())
        client.shutdown(socket.SHUT_WR)
        upstream = await accept(server)
        assert await recv_until_eof(upstream) == b""
        await loop.sock_sendall(upstream, b"banner")
        upstream.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(client) == b"banner"
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_server_that_speaks_first(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname())
        client = await connect(await proxy.start())
        upstream = await accept(server)
        await loop.sock_sendall(upstream, b"220 ready\r\n")
        assert await recv_exactly(client, 11) == b"220 ready\r\n"
        await loop.sock_sendall(client, b"QUIT\r\n")
        assert await recv_exactly(upstream, 6) == b"QUIT\r\n"
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


# --- half-close and close --------------------------------------------------------------------


def test_half_close_client_eof_reaches_upstream_which_can_still_reply(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, _down = await linked_pair(proxy, server)
        await loop.sock_sendall(client, b"request body")
        client.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(upstream) == b"request body"  # EOF seen upstream
        # The other direction is still open: a reply of several chunks goes through.
        reply = payload(1024 * 1024, 3)
        await loop.sock_sendall(upstream, reply)
        assert await recv_exactly(client, len(reply)) == reply
        assert proxy.lost == []  # nothing closed yet: only one direction is finished
        upstream.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(client) == b""
        await until(lambda: len(proxy.lost) == 2, "both halves to be closed")
        assert {exc for _, exc in proxy.lost} == {None}
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_half_close_upstream_eof_reaches_client_which_can_still_send(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, _down = await linked_pair(proxy, server)
        await loop.sock_sendall(upstream, b"greeting")
        upstream.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(client) == b"greeting"
        await loop.sock_sendall(client, b"still talking")
        assert await recv_exactly(upstream, 13) == b"still talking"
        assert proxy.lost == []
        client.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(upstream) == b""
        await until(lambda: len(proxy.lost) == 2, "both halves to be closed")
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_orderly_close_of_the_upstream_delivers_buffered_data_then_closes(run) -> None:
    size = 2 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, _down = await linked_pair(proxy, server)
        data = payload(size, 4)
        await loop.sock_sendall(upstream, data)
        upstream.close()  # a full close: FIN, exactly like a shutdown as far as TCP tells
        assert await recv_until_eof(client) == data
        # A FIN only ends one direction: the relay waits for the client to finish its own.
        assert proxy.lost == []
        client.close()
        await until(lambda: len(proxy.lost) == 2, "both halves to be closed")
        server.close()
        await proxy.close()

    run(main())


# --- resets ----------------------------------------------------------------------------------


def test_client_reset_closes_the_upstream(run) -> None:
    async def main() -> None:
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, down = await linked_pair(proxy, server)
        reset(client)
        assert await end_of(upstream) in {"eof", "reset"}
        await until(lambda: len(proxy.lost) == 2, "both halves to be lost")
        assert isinstance(proxy.exc_of(down), ConnectionResetError)
        assert down.upstream is not None and down.upstream.lost
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_upstream_reset_closes_the_client(run) -> None:
    async def main() -> None:
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, down = await linked_pair(proxy, server)
        reset(upstream)
        assert await end_of(client) in {"eof", "reset"}
        await until(lambda: len(proxy.lost) == 2, "both halves to be lost")
        assert isinstance(proxy.exc_of(down.upstream), ConnectionResetError)
        assert down.lost
        client.close()
        server.close()
        await proxy.close()

    run(main())


async def paused_by_a_stalled_upstream(
    proxy: Proxy, server: socket.socket, size: int
) -> tuple[socket.socket, socket.socket, Downstream, asyncio.Task]:
    """A linked pair whose client keeps sending while the upstream reads nothing, until the
    downstream half is paused by backpressure."""
    loop = asyncio.get_running_loop()
    client, upstream, down = await linked_pair(proxy, server)
    sender = loop.create_task(loop.sock_sendall(client, payload(size, 5)))
    await until(lambda: not down.transport.is_reading(), "the downstream to be paused")
    assert down.upstream.transport.get_write_buffer_size() > 0
    return client, upstream, down, sender


def test_reset_while_paused_aborts_the_upstream_once_reading_resumes(run) -> None:
    """Abort, not close: what the relay had queued for the upstream is dropped, not flushed."""
    size = 16 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener(rcvbuf=16 * 1024)
        proxy = Proxy(server.getsockname(), upstream_sndbuf=16 * 1024)
        client, upstream, down, sender = await paused_by_a_stalled_upstream(proxy, server, size)
        sender.cancel()
        reset(client)
        got = 0
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(upstream, 1 << 20), TIMEOUT):
                got += len(chunk)
        except ConnectionResetError:
            pass
        await until(lambda: len(proxy.lost) == 2, "both halves to be lost")
        assert isinstance(proxy.exc_of(down), ConnectionResetError)
        assert got < size
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_reset_while_paused_is_noticed_without_the_upstream_reading(run) -> None:
    """The downstream half is paused (the upstream reads nothing) when the client resets: the
    loop does not watch a paused socket, yet the relay learns of the reset within a few
    checks, and the upstream then gets what was relayed followed by the end of the stream."""
    size = 16 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener(rcvbuf=16 * 1024)
        proxy = Proxy(server.getsockname(), upstream_sndbuf=16 * 1024)
        client, upstream, down, sender = await paused_by_a_stalled_upstream(proxy, server, size)
        sender.cancel()
        reset(client)
        try:
            await until(
                lambda: down.lost, "the paused client half to see the reset", 6 * PAUSED_PEER_CHECK
            )
            assert isinstance(proxy.exc_of(down), ConnectionResetError)
            assert not down.upstream.lost  # what it relayed is still on its way
            got = 0
            while chunk := await asyncio.wait_for(loop.sock_recv(upstream, 1 << 20), TIMEOUT):
                got += len(chunk)
            assert 0 < got < size
            await until(lambda: len(proxy.lost) == 2, "the upstream half to close too")
        finally:
            upstream.close()
            server.close()
            await proxy.close()

    run(main())


def test_a_paused_half_that_is_not_reset_stays_paused(run) -> None:
    """The checks of a paused side change nothing while its peer is merely slow."""

    async def main() -> None:
        server = listener(rcvbuf=16 * 1024)
        proxy = Proxy(server.getsockname(), upstream_sndbuf=16 * 1024)
        client, upstream, down, sender = await paused_by_a_stalled_upstream(
            proxy, server, 16 * 1024 * 1024
        )
        watch = down.upstream.paused_peer_check
        assert watch is not None
        try:
            await until(lambda: watch.checks >= 3, "three checks of the paused client half")
            assert not down.transport.is_reading()
            assert proxy.lost == []
        finally:
            sender.cancel()
            client.close()
            upstream.close()
            server.close()
            await proxy.close()

    run(main())


@pytest.mark.parametrize("side", ["client", "upstream"])
def test_a_reset_on_one_side_closes_the_other_after_flushing(run, side: str) -> None:
    """As Envoy's tcp_proxy (close with FlushWrite): the other side gets what was already
    relayed, then a normal close. A RST would make its kernel drop a reply still unread
    (a server that answers and closes with the request unread resets; its answer must
    still reach the client)."""

    async def main() -> None:
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, _down = await linked_pair(proxy, server)
        resetter, other = (client, upstream) if side == "client" else (upstream, client)
        reset(resetter)
        ending = await end_of(other)
        other.close()
        server.close()
        await proxy.close()
        assert ending == "eof"

    run(main())


# --- backpressure ----------------------------------------------------------------------------


def test_slow_upstream_pauses_the_downstream_and_memory_stays_bounded(run) -> None:
    size = 24 * 1024 * 1024
    data = payload(size, 6)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener(rcvbuf=64 * 1024)
        proxy = Proxy(server.getsockname(), upstream_sndbuf=64 * 1024)
        address = await proxy.start()
        client = await connect(address)
        upstream = await accept(server)  # ...which reads nothing for now
        sent = 0

        async def send() -> None:
            nonlocal sent
            view = memoryview(data)
            for offset in range(0, size, 65536):
                await loop.sock_sendall(client, view[offset : offset + 65536])
                sent = offset + len(view[offset : offset + 65536])

        sender = loop.create_task(send())
        await until(lambda: proxy.accepted and proxy.accepted[0].upstream, "the upstream half")
        (down,) = proxy.accepted
        up = down.upstream
        await until(lambda: up.paused_writing >= 1, "the upstream half's buffer to fill")
        assert not down.transport.is_reading()  # the downstream is paused
        await until(lambda: sent > 0, "the client to make progress")
        # The client is stalled well short of the end: the relay does not swallow everything.
        stalled_at = down.received
        assert stalled_at < size // 2
        assert not sender.done()
        assert up.transport.get_write_buffer_size() <= BUFFER_BOUND
        assert down.max_peer_buffer <= BUFFER_BOUND

        # The reader drains: everything arrives, reading resumed, the buffer stayed bounded.
        got = await recv_exactly(upstream, size)
        await asyncio.wait_for(sender, TIMEOUT)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert up.resumed_writing >= 1
        assert down.max_peer_buffer <= BUFFER_BOUND
        await until(lambda: up.transport.get_write_buffer_size() == 0, "the buffer to flush")
        assert down.transport.is_reading()
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_slow_client_pauses_the_upstream_and_memory_stays_bounded(run) -> None:
    size = 24 * 1024 * 1024
    data = payload(size, 7)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = listener()
        proxy = Proxy(server.getsockname())
        address = await proxy.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setblocking(False)
        await loop.sock_connect(client, address)
        upstream = await accept(server)
        (down,) = proxy.accepted
        await asyncio.wait_for(down.linked.wait(), TIMEOUT)
        up = down.upstream
        sender = loop.create_task(loop.sock_sendall(upstream, data))
        await until(lambda: down.paused_writing >= 1, "the downstream half's buffer to fill")
        assert not up.transport.is_reading()
        assert up.received < size // 2
        assert down.transport.get_write_buffer_size() <= BUFFER_BOUND
        assert up.max_peer_buffer <= BUFFER_BOUND

        got = await recv_exactly(client, size)
        await asyncio.wait_for(sender, TIMEOUT)
        assert got == data
        assert down.resumed_writing >= 1
        assert up.max_peer_buffer <= BUFFER_BOUND
        await until(lambda: down.transport.get_write_buffer_size() == 0, "the buffer to flush")
        assert up.transport.is_reading()
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


def test_write_buffer_limits_are_the_relay_constants(run) -> None:
    async def main() -> None:
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, down = await linked_pair(proxy, server)
        for half in (down, down.upstream):
            assert half.transport.get_write_buffer_limits() == (LOW_WATER, HIGH_WATER)
        client.close()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())


# --- link() contract, with stand-in transports -----------------------------------------------


class FakeTransport:
    """Just enough transport for link(): records calls, can pretend its buffer is full."""

    def __init__(self, protocol: RelayHalf, fill_on_write: bool = False) -> None:
        self.protocol = protocol
        self.fill_on_write = fill_on_write
        self.reading = True
        self.written: list[bytes] = []
        self.eof_written = False

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return HIGH_WATER + 1 if self.fill_on_write and self.written else 0

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, chunks) -> None:
        self.written.extend(chunks)
        if self.fill_on_write:  # above the high-water mark: the transport says so at once
            self.protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


def halves(fill_upstream: bool = False) -> tuple[RelayHalf, RelayHalf]:
    down, up = RelayHalf(lambda h, e: None), RelayHalf(lambda h, e: None)
    down.connection_made(FakeTransport(down))  # type: ignore[arg-type]
    up.connection_made(FakeTransport(up, fill_on_write=fill_upstream))  # type: ignore[arg-type]
    return down, up


def test_link_flushes_early_bytes_in_order_and_resumes_reading() -> None:
    down, up = halves()
    down.data_received(b"one")
    assert not down.transport.is_reading()
    down.data_received(b"two")  # a read that raced the pause: still kept, in order
    link(down, up)
    assert up.transport.written == [b"one", b"two"]
    assert down.early == []
    assert down.transport.is_reading()
    assert (down.peer, up.peer) == (up, down)


def test_link_passes_an_early_eof_on_without_resuming() -> None:
    down, up = halves()
    down.data_received(b"last words")
    assert down.eof_received() is True
    link(down, up)
    assert up.transport.written == [b"last words"]
    assert up.transport.eof_written
    assert not down.transport.is_reading()


def test_link_keeps_the_downstream_paused_when_the_early_bytes_fill_the_upstream() -> None:
    down, up = halves(fill_upstream=True)
    down.data_received(b"x" * 1000)
    link(down, up)
    assert up.transport.written == [b"x" * 1000]
    assert not down.transport.is_reading()


def test_resetting_a_transport_that_is_already_closed_does_nothing(run) -> None:
    """A session cut at the drain deadline resets its client's transport, which the HTTP
    router may have closed already (the client had gone): that must not raise."""

    async def main() -> None:
        server = listener()
        proxy = Proxy(server.getsockname())
        client, upstream, down = await linked_pair(proxy, server)
        down.transport.get_extra_info("socket")  # as on accept (SO_ORIGINAL_DST): uvloop keeps it
        reset(client)
        await until(lambda: down.lost, "the client half to see the reset")
        reset_transport(down.transport)  # raised ValueError on uvloop (its socket's fd is -1)
        assert down.transport.is_closing()
        upstream.close()
        server.close()
        await proxy.close()

    run(main())
