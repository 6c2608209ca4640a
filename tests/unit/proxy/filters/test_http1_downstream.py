"""``Http1ConnectionManager`` and ``Http1Body`` on real loopback sockets: an HTTP/1.1 client
(a raw socket) → the connection manager → a real Pipeline → ``Http1Try`` → a scripted HTTP/1.1
upstream (a raw socket server). Each test asserts what the client and the upstream saw on the
wire, and the Exchange the manager reported to ``exchange_done``."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from proxy.outcomes import Flag
from proxy.upstream.connector import UPSTREAM_CX_HTTP1_TOTAL, UPSTREAM_CX_POOL_REUSE

from .loopback import (
    EOF,
    RESET,
    H1Upstream,
    Message,
    Sidecar,
    Wire,
    chunked,
    h1_request,
    h1_response,
    mesh_yaml,
    read_body,
    read_head,
    read_request,
    read_response,
    run,
)


async def echo_path(wire: Wire, _index: int) -> None:
    """An upstream that answers every request on its connection with ``path=<target>``."""
    while True:
        try:
            asked = await read_request(wire)
        except EOFError:
            return
        await wire.send(h1_response(200, b"path=" + asked.target))


def test_keep_alive_requests_reuse_one_upstream_connection() -> None:
    """Three requests in order on one client connection are three exchanges, answered in
    order, and travel on one pooled upstream connection (one connect, two reuses)."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            for path in (b"/one", b"/two", b"/three"):
                await client.send(h1_request(b"GET", path))
                answer = await read_response(client)
                assert (answer.status, answer.body) == (200, b"path=" + path)
                assert answer.header(b"connection") is None  # still keep-alive
            exchanges = [await sidecar.exchange(n) for n in (1, 2, 3)]
            assert [e.request.target for e in exchanges] == [b"/one", b"/two", b"/three"]
            assert [(e.status, e.flags, e.tries) for e in exchanges] == [(200, [], 1)] * 3
            assert upstream.accepted == 1
            assert sidecar.counter(UPSTREAM_CX_HTTP1_TOTAL) == 1
            assert sidecar.counter(UPSTREAM_CX_POOL_REUSE) == 2
            assert len(sidecar.managers) == 1
            client.close()

    run(scenario)


def test_a_chunked_request_body_with_trailers_reaches_the_upstream_whole() -> None:
    """A chunked upload sent in several writes is re-framed chunked towards the upstream:
    every byte, then the trailer section; its size is the exchange's request_bytes."""

    async def scenario() -> None:
        received: list[Message] = []

        async def serve(wire: Wire, _index: int) -> None:
            received.append(await read_request(wire))
            await wire.send(h1_response(201, b"stored"))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"POST", b"/upload", (b"Transfer-Encoding", b"chunked")))
            await client.send(b"6\r\nhello \r\n")
            await client.send(b"8\r\nchunked \r\n5\r\nwor")
            await client.send(b"ld\r\n0\r\nx-checksum: 42\r\nx-signed-by: me\r\n\r\n")
            answer = await read_response(client)
            assert (answer.status, answer.body) == (201, b"stored")
            exchange = await sidecar.exchange()
            (upload,) = received
            assert upload.chunked and upload.body == b"hello chunked world"
            assert upload.trailers == [(b"x-checksum", b"42"), (b"x-signed-by", b"me")]
            assert exchange.request_bytes == len(b"hello chunked world")
            assert (exchange.status, exchange.flags) == (201, [])
            client.close()

    run(scenario)


def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    """A client that sends ``Expect: 100-continue`` and holds its body gets the interim 100
    from the sidecar (once the upstream has the head), then sends the body, which reaches the
    upstream; the Expect field itself is not forwarded (the sidecar answered it)."""

    async def scenario() -> None:
        heads: list[Message] = []
        got_head = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            head = await read_head(wire)
            heads.append(head)
            got_head.set()
            await read_body(wire, head)
            await wire.send(h1_response(200, b"got " + head.body))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(
                h1_request(b"PUT", b"/", (b"Expect", b"100-continue"), (b"Content-Length", b"4"))
            )
            interim = await read_head(client)  # the body is not sent yet: no deadlock
            assert interim.status == 100
            assert got_head.is_set()
            assert not client.buffer  # nothing but the 100 so far
            await client.send(b"ping")
            answer = await read_response(client)
            assert (answer.status, answer.body) == (200, b"got ping")
            (head,) = heads
            assert head.header(b"expect") is None
            assert head.header(b"content-length") == b"4"
            exchange = await sidecar.exchange()
            assert (exchange.status, exchange.request_bytes) == (200, 4)
            client.close()

    run(scenario)


def test_an_http11_request_without_host_gets_400_and_the_connection_closes() -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request without Host is refused with 400 and
    ``Connection: close``; nothing reaches the upstream and the client sees the close."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/", host=None))
            answer = await read_response(client)
            assert answer.status == 400
            assert answer.header(b"connection") == b"close"
            rest, ended = await client.read_to_end()
            assert rest == b"" and ended in (EOF, RESET)
            await sidecar.finished()
            assert upstream.accepted == 0

    run(scenario)


def test_a_request_refused_by_the_codec_is_reported_as_an_exchange() -> None:
    """A refused head is still a request the access log and the metrics should count."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/", host=None))
            assert (await read_response(client)).status == 400
            await client.read_to_end()
            await sidecar.finished()
            assert [(e.status, e.flags) for e in sidecar.exchanges] == [
                (400, [Flag.DOWNSTREAM_PROTOCOL_ERROR])
            ]

    run(scenario)


def test_an_http10_request_without_host_gets_400_from_the_manager() -> None:
    """HTTP/1.0 may omit Host (the codec lets it through); the manager refuses it as Envoy
    does: 400 "missing host header", flag DPE, the connection closed, no upstream try."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/", host=None, version=b"HTTP/1.0"))
            answer = await read_response(client)
            assert (answer.status, answer.body) == (400, b"missing host header")
            _rest, ended = await client.read_to_end()
            assert ended in (EOF, RESET)
            exchange = await sidecar.exchange()
            assert (exchange.status, exchange.flags, exchange.tries) == (
                400,
                [Flag.DOWNSTREAM_PROTOCOL_ERROR],
                0,
            )
            await sidecar.finished()
            assert upstream.accepted == 0

    run(scenario)


def test_an_oversized_request_head_gets_431_and_the_connection_closes() -> None:
    """A head over the 60 KiB limit (Envoy's max_request_headers_kb) is refused with 431
    before anything is forwarded, and the connection is closed after the reply."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/", (b"X-Big", b"a" * (61 * 1024))))
            answer = await read_response(client)
            assert answer.status == 431
            assert answer.header(b"connection") == b"close"
            _rest, ended = await client.read_to_end()
            assert ended in (EOF, RESET)  # RST when our unread bytes were still queued
            await sidecar.finished()
            assert upstream.accepted == 0

    run(scenario)


def test_a_head_trickled_past_the_request_headers_timeout_gets_408() -> None:
    """A slowloris client keeps sending, a byte at a time, so the idle timeout never fires:
    the head deadline counts from its first byte and is not moved by progress. 408, the
    connection closed, nothing forwarded, reported as an exchange and counted once."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with (
            H1Upstream(echo_path) as upstream,
            Sidecar(mesh_yaml(upstream.port), head_timeout=0.3) as sidecar,
        ):
            client = await Wire.connect(sidecar.address)
            started = loop.time()
            with contextlib.suppress(ConnectionError):
                for byte in b"GET / HTTP/1.1\r\nHost: backend\r\nX-Slow: " + b"a" * 100:
                    await client.send(bytes([byte]))
                    await asyncio.sleep(0.02)
                    if sidecar.head_timeouts:
                        break
            answer = await read_response(client)
            assert answer.status == 408
            assert answer.body == b"request header timeout"
            assert answer.header(b"connection") == b"close"
            assert 0.3 <= loop.time() - started < 1.0
            exchange = await sidecar.exchange()
            assert (exchange.status, exchange.request.target) == (408, b"-")
            await sidecar.finished()
            assert sidecar.head_timeouts == 1
            assert upstream.accepted == 0

    run(scenario)


def test_heads_split_across_reads_in_time_and_idle_keep_alive_are_not_cut() -> None:
    """The deadline is per head: each head of a keep-alive connection sent in two parts within
    it is served, and time spent idle between requests (no head begun) does not count."""

    async def scenario() -> None:
        async with (
            H1Upstream(echo_path) as upstream,
            Sidecar(mesh_yaml(upstream.port), head_timeout=0.3) as sidecar,
        ):
            client = await Wire.connect(sidecar.address)
            for path in (b"/one", b"/two", b"/three"):
                head = h1_request(b"GET", path)
                await client.send(head[:10])
                await asyncio.sleep(0.2)
                await client.send(head[10:])
                answer = await read_response(client)
                assert (answer.status, answer.body) == (200, b"path=" + path)
                await asyncio.sleep(0.4)  # idle longer than the head deadline
            assert sidecar.head_timeouts == 0
            client.close()

    run(scenario)


def test_a_client_that_resets_mid_upload_resets_the_upstream_connection() -> None:
    """The client resets while its body is being forwarded: its request's task is cancelled,
    the upstream try is aborted with a RST (the upstream never sees the rest of the body nor
    a FIN it could take for the end), and the exchange is flagged DC."""

    async def scenario() -> None:
        total = 1_000_000
        bodies: list[tuple[int, str]] = []  # (body bytes the upstream got, how it ended)
        got_start = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            await read_head(wire)
            await wire.read_exactly(1000)
            got_start.set()
            rest, ended = await wire.read_to_end()
            bodies.append((1000 + len(rest), ended))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            length = (b"Content-Length", str(total).encode())
            await client.send(h1_request(b"POST", b"/upload", length) + b"x" * 1000)
            await got_start.wait()
            client.reset()
            exchange = await sidecar.exchange()
            await upstream.done()
            ((size, ended),) = bodies
            assert ended == RESET and size < total
            assert exchange.flags == [Flag.DOWNSTREAM_CONNECTION_TERMINATION]
            assert exchange.status == 0 and not exchange.head_sent
            assert exchange.retries == 0  # a client that left is never retried
            await sidecar.finished()

    run(scenario)


def test_drain_puts_connection_close_on_the_response_in_flight() -> None:
    """``drain()`` while a request is in flight: its response carries ``Connection: close``
    and the connection closes after it (Envoy's HTTP/1 drain)."""

    async def scenario() -> None:
        got_request = asyncio.Event()
        release = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            got_request.set()
            await release.wait()
            await wire.send(h1_response(200, b"last"))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/"))
            await got_request.wait()
            manager = await sidecar.manager()
            assert not manager.between_requests
            manager.drain()
            release.set()
            answer = await read_response(client)
            assert (answer.status, answer.body) == (200, b"last")
            assert answer.header(b"connection") == b"close"
            assert await client.read_to_end() == (b"", EOF)
            await sidecar.finished()

    run(scenario)


def test_drain_closes_an_idle_keep_alive_connection() -> None:
    """``drain()`` between requests closes the connection at once with a FIN, which the
    client's pool notices before it reuses the connection."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/"))
            assert (await read_response(client)).status == 200
            manager = await sidecar.manager()
            assert manager.between_requests  # the response's last byte left after that
            manager.drain()
            assert await client.read_to_end() == (b"", EOF)
            await sidecar.finished()
            assert len(sidecar.exchanges) == 1

    run(scenario)


def test_a_client_half_close_after_its_request_still_gets_the_answer() -> None:
    """A FIN after the request is not taken as leaving (BusyBox wget half-closes): the
    response is delivered, then the connection closes."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/half"))
            client.shutdown_write()
            answer = await read_response(client)
            assert (answer.status, answer.body) == (200, b"path=/half")
            assert await client.read_to_end() == (b"", EOF)
            exchange = await sidecar.exchange()
            assert (exchange.status, exchange.flags) == (200, [])

    run(scenario)


def test_response_trailers_reach_only_a_client_with_chunked_framing() -> None:
    """An upstream's chunked response with trailers: an HTTP/1.1 client gets it chunked with
    the trailer field; an HTTP/1.0 client gets the body delimited by the close and no
    trailers (it has no framing that carries them)."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            await wire.send(head + chunked(b"abc", b"def", trailers=[(b"x-digest", b"d1")]))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            modern = await Wire.connect(sidecar.address)
            await modern.send(h1_request(b"GET", b"/"))
            answer = await read_response(modern)
            assert answer.chunked and answer.body == b"abcdef"
            assert answer.trailers == [(b"x-digest", b"d1")]
            old = await Wire.connect(sidecar.address)
            await old.send(h1_request(b"GET", b"/", version=b"HTTP/1.0"))
            head = await read_head(old)
            assert head.status == 200
            assert head.header(b"transfer-encoding") is None
            body, ended = await old.read_to_end()
            assert (body, ended) == (b"abcdef", EOF)
            modern.close()

    run(scenario)


def test_an_upgrade_accepted_with_101_becomes_a_tunnel_both_ways() -> None:
    """A WebSocket-style upgrade: the upstream sees the Upgrade request, its 101 reaches the
    client, then bytes flow both ways unparsed (including what the upstream sent right after
    its 101) until both sides close; the exchange is logged 101."""

    async def scenario() -> None:
        heads: list[Message] = []
        upstream_got: list[bytes] = []
        upstream_ends: list[tuple[bytes, str]] = []

        async def serve(wire: Wire, _index: int) -> None:
            heads.append(await read_head(wire))
            switching = b"HTTP/1.1 101 Switching Protocols\r\n"
            switching += b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            await wire.send(switching + b"server-hello")
            upstream_got.append(await wire.read_exactly(len(b"client-ping")))
            await wire.send(b"pong")
            upstream_ends.append(await wire.read_to_end())

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(
                h1_request(b"GET", b"/ws", (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
            )
            head = await read_head(client)
            assert head.status == 101
            assert head.header(b"upgrade") == b"websocket"
            assert await client.read_exactly(len(b"server-hello")) == b"server-hello"
            await client.send(b"client-ping")
            assert await client.read_exactly(4) == b"pong"
            client.shutdown_write()
            assert await client.read_to_end() == (b"", EOF)
            exchange = await sidecar.exchange()
            (upgrade,) = heads
            assert upgrade.header(b"upgrade") == b"websocket"
            assert upgrade.header(b"connection") == b"upgrade"
            assert upstream_got == [b"client-ping"]
            assert upstream_ends == [(b"", EOF)]  # the client's FIN was passed on
            assert (exchange.status, exchange.flags) == (101, [])
            await sidecar.finished()

    run(scenario)


def test_tunnel_bytes_sent_with_the_101_are_counted() -> None:
    """Every byte the upstream sent after its 101 is counted in response_bytes, also those
    that arrived in the same read as the 101 head."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            await read_head(wire)
            switching = b"HTTP/1.1 101 Switching Protocols\r\n"
            switching += b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            await wire.send(switching + b"server-hello")  # one segment, one read
            await wire.read_to_end()

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(
                h1_request(b"GET", b"/ws", (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
            )
            assert (await read_head(client)).status == 101
            assert await client.read_exactly(len(b"server-hello")) == b"server-hello"
            client.shutdown_write()
            await client.read_to_end()
            exchange = await sidecar.exchange()
            assert exchange.response_bytes == len(b"server-hello")

    run(scenario)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: b\r\nBad Name: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: b\r\n\r\n", 414),
        (b"GET / HTTP/3.0\r\nHost: b\r\n\r\n", 505),
    ],
    ids=["cl-and-te", "two-hosts", "bad-field-name", "long-target", "bad-version"],
)
def test_a_bad_request_head_gets_its_4xx_and_the_connection_closes(
    head: bytes, status: int
) -> None:
    """Heads the codec refuses (smuggling-prone framing, repeated Host, invalid field names,
    an overlong target, an unknown version) get their status with ``Connection: close``, the
    connection closes, and nothing is sent upstream."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(head)
            answer = await read_response(client)
            assert answer.status == status
            assert answer.header(b"connection") == b"close"
            _rest, ended = await client.read_to_end()
            assert ended in (EOF, RESET)
            await sidecar.finished()
            assert upstream.accepted == 0

    run(scenario)


def test_a_malformed_chunked_body_gets_400_and_resets_the_upstream_try() -> None:
    """A chunk-size line that is not hex, found while the body is being forwarded: the client
    gets 400 with ``Connection: close`` (flag DPE), and the upstream try that already had the
    head is reset, so the upstream never takes the truncated body for a request."""

    async def scenario() -> None:
        ends: list[str] = []
        got_start = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            await read_head(wire)
            await wire.read_until(b"abc\r\n")
            got_start.set()
            ends.append((await wire.read_to_end())[1])

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            head = h1_request(b"POST", b"/", (b"Transfer-Encoding", b"chunked"))
            await client.send(head + b"3\r\nabc\r\n")
            await got_start.wait()
            await client.send(b"zz\r\n")
            answer = await read_response(client)
            assert answer.status == 400
            assert answer.header(b"connection") == b"close"
            exchange = await sidecar.exchange()
            await upstream.done()
            assert ends == [RESET]
            assert (exchange.status, exchange.flags) == (400, [Flag.DOWNSTREAM_PROTOCOL_ERROR])
            client.close()

    run(scenario)


def test_pipelined_requests_are_answered_in_order() -> None:
    """Two requests in one write (HTTP/1.1 pipelining): the second waits for the first's
    response, and both answers come back in order on the same connection."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/first") + h1_request(b"GET", b"/second"))
            assert (await read_response(client)).body == b"path=/first"
            assert (await read_response(client)).body == b"path=/second"
            await sidecar.exchange(2)
            assert [e.request.target for e in sidecar.exchanges] == [b"/first", b"/second"]
            client.close()

    run(scenario)


def test_an_upstream_connection_close_is_not_passed_to_the_client() -> None:
    """``Connection: close`` from the upstream is hop-by-hop: the client's connection stays
    open, the upstream's is not pooled, and the next request connects anew."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            await wire.send(h1_response(200, b"bye", (b"Connection", b"close")))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            for _ in range(2):
                await client.send(h1_request(b"GET", b"/"))
                answer = await read_response(client)
                assert (answer.body, answer.header(b"connection")) == (b"bye", None)
            assert upstream.accepted == 2
            assert [e.flags for e in sidecar.exchanges] == [[], []]
            client.close()

    run(scenario)


def test_an_upgrade_the_upstream_declines_leaves_the_connection_http() -> None:
    """An Upgrade request answered with a plain response (no 101): the response is relayed and
    the client's connection goes on speaking HTTP/1.1 for its next request."""

    async def scenario() -> None:
        async with H1Upstream(echo_path) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(
                h1_request(b"GET", b"/ws", (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
            )
            assert (await read_response(client)).body == b"path=/ws"
            await client.send(h1_request(b"GET", b"/plain"))
            assert (await read_response(client)).body == b"path=/plain"
            assert [e.status for e in sidecar.exchanges] == [200, 200]
            client.close()

    run(scenario)


def test_a_client_that_resets_mid_download_resets_the_upstream_connection() -> None:
    """The client resets while a large response is held back by its slow reading: the
    upstream connection is reset too (the upstream's send fails), never pooled, flag DC."""

    async def scenario() -> None:
        failures: list[BaseException] = []

        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            try:
                await wire.send(h1_response(200, b"d" * (16 * 1024 * 1024)))
            except OSError as exc:  # ConnectionResetError / BrokenPipeError
                failures.append(exc)

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(h1_request(b"GET", b"/big"))
            await client.read_exactly(64 * 1024)
            client.reset()
            exchange = await sidecar.exchange()
            await upstream.done()
            assert len(failures) == 1
            assert exchange.flags == [Flag.DOWNSTREAM_CONNECTION_TERMINATION]
            assert exchange.status == 200 and exchange.head_sent
            assert sidecar.cluster.http_pool(asyncio.get_running_loop()).idle_count() == 0

    run(scenario)


def test_bytes_the_client_sends_right_after_its_upgrade_request_reach_the_upstream() -> None:
    """A client that does not wait for the 101 (its first frame in the same write as the
    request): those bytes are held, unparsed, until the upstream accepts the upgrade, then
    relayed to it first."""

    async def scenario() -> None:
        upstream_got: list[bytes] = []
        got_frame = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            await read_head(wire)
            await wire.send(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
            )
            upstream_got.append(await wire.read_exactly(len(b"eager-frame")))
            got_frame.set()
            await wire.read_to_end()

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            upgrade = h1_request(b"GET", b"/", (b"Connection", b"Upgrade"), (b"Upgrade", b"x"))
            await client.send(upgrade + b"eager-frame")
            assert (await read_head(client)).status == 101
            await got_frame.wait()
            assert upstream_got == [b"eager-frame"]
            client.shutdown_write()
            assert await client.read_to_end() == (b"", EOF)
            assert (await sidecar.exchange()).status == 101

    run(scenario)
