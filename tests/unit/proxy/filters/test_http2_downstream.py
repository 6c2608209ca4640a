"""``Http2ConnectionManager`` / ``StreamHandler`` / ``StreamBody`` on real loopback sockets: an
h2 client (h2's own ``H2Connection``) → the connection manager → a real Pipeline → ``Http1Try``
(a raw-socket HTTP/1.1 upstream) or ``Http2Try`` (an h2 server peer). Each test asserts what
the client and the upstream saw, frame by frame, and the Exchange reported to
``exchange_done``."""

from __future__ import annotations

import asyncio

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, HeadersFrame

from proxy.outcomes import Flag
from proxy.upstream.connector import UPSTREAM_CX_HTTP2_TOTAL

from .loopback import (
    PREFACE,
    RESET,
    H1Upstream,
    H2Message,
    H2Peer,
    H2Upstream,
    Message,
    Sidecar,
    Wire,
    answer_ok,
    chunked,
    frames_of,
    h1_response,
    h2_client,
    h2_request,
    mesh_yaml,
    raw_frame,
    read_head,
    read_request,
    run,
)

GRPC_HEADERS = ((b"content-type", b"application/grpc"), (b"te", b"trailers"))
GRPC_MESSAGE = b"\x00\x00\x00\x00\x03abc"  # one length-prefixed message


def ended(peer: H2Peer, stream_id: int) -> bool:
    """The stream is over for ``peer``: ended by the other side, or reset."""
    message = peer.streams[stream_id]
    return message.ended or message.reset is not None


async def response(peer: H2Peer, stream_id: int) -> H2Message:
    await peer.until(lambda: ended(peer, stream_id))
    return peer.streams[stream_id]


def test_concurrent_streams_to_an_http1_upstream_are_served_at_once() -> None:
    """Three streams opened together are three requests in flight at the same time (the
    upstream holds every answer until it has all three, each on its own HTTP/1.1
    connection), and each answer goes back on its own stream."""

    async def scenario() -> None:
        arrived: list[Message] = []
        all_here = asyncio.Event()

        async def serve(wire: Wire, _index: int) -> None:
            asked = await read_request(wire)
            arrived.append(asked)
            if len(arrived) == 3:
                all_here.set()
            await all_here.wait()
            await wire.send(h1_response(200, b"path=" + asked.target))

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            ids = [client.request(h2_request(b"GET", path)) for path in (b"/a", b"/b", b"/c")]
            answers = [await response(client, stream_id) for stream_id in ids]
            assert [a.header(b":status") for a in answers] == [b"200"] * 3
            assert [bytes(a.data) for a in answers] == [b"path=/a", b"path=/b", b"path=/c"]
            assert upstream.accepted == 3
            assert {m.header(b"host") for m in arrived} == {b"backend"}  # from :authority
            exchanges = [await sidecar.exchange(n) for n in (1, 2, 3)]
            assert sorted(e.request.target for e in exchanges) == [b"/a", b"/b", b"/c"]
            assert all((e.status, e.flags) == (200, []) for e in exchanges)
            client.close()

    run(scenario)


def test_concurrent_streams_to_an_http2_upstream_share_one_connection() -> None:
    """On an ``http2`` port the three streams become three streams of one multiplexed
    upstream connection, all open at once; the answers are matched back to their streams."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                ids = [client.request(h2_request(b"GET", path)) for path in (b"/a", b"/b", b"/c")]
                await upstream.request(3)  # all three in flight before any answer
                assert len(upstream.peers) == 1
                for peer, stream_id in upstream.requests():
                    path = peer.streams[stream_id].header(b":path") or b""
                    peer.send(stream_id, [(b":status", b"200")], b"path=" + path)
                answers = [await response(client, stream_id) for stream_id in ids]
                assert [bytes(a.data) for a in answers] == [b"path=/a", b"path=/b", b"path=/c"]
                assert sidecar.counter(UPSTREAM_CX_HTTP2_TOTAL) == 1
                assert not upstream.errors and not client.errors
                client.close()

    run(scenario)


def test_a_client_rst_stream_mid_response_cancels_the_http2_try() -> None:
    """The client resets its stream while the response is flowing: the upstream sees
    RST_STREAM CANCEL on that stream, the exchange is flagged DR (not retried), and the
    upstream connection and the client's connection both carry on."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                first = client.request(h2_request(b"GET", b"/stream"))
                peer, upstream_id = await upstream.request(1)
                peer.send(upstream_id, [(b":status", b"200")], b"part", end=False)
                await client.until(lambda: bytes(client.streams[first].data) == b"part")
                client.reset(first, ErrorCodes.CANCEL)
                await peer.until(lambda: peer.streams[upstream_id].reset is not None)
                assert peer.streams[upstream_id].reset == ErrorCodes.CANCEL
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.DOWNSTREAM_REMOTE_RESET]
                assert (exchange.status, exchange.retries) == (200, 0)
                # the same two connections serve the next request
                second = client.request(h2_request(b"GET", b"/next"))
                again, next_id = await upstream.request(2)
                assert again is peer
                again.send(next_id, [(b":status", b"204")])
                assert (await response(client, second)).header(b":status") == b"204"
                assert not upstream.errors and not client.errors
                client.close()

    run(scenario)


def test_a_client_rst_stream_mid_response_resets_the_http1_upstream() -> None:
    """The same reset towards an HTTP/1.1 upstream: its connection gets a RST (an HTTP/1.1
    request cannot be cancelled otherwise), and the exchange is flagged DR."""

    async def scenario() -> None:
        ends: list[str] = []

        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            await wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            ends.append((await wire.read_to_end())[1])

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            stream_id = client.request(h2_request(b"GET", b"/"))
            await client.until(lambda: bytes(client.streams[stream_id].data) == b"part")
            client.reset(stream_id, ErrorCodes.CANCEL)
            exchange = await sidecar.exchange()
            await upstream.done()
            assert ends == [RESET]
            assert exchange.flags == [Flag.DOWNSTREAM_REMOTE_RESET]
            client.close()

    run(scenario)


def test_request_and_response_trailers_pass_through_http2_both_ways() -> None:
    """HTTP/2 on both sides: the request's trailers reach the upstream after its body, the
    response's trailers reach the client after its body; ``te: trailers`` is forwarded."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(
                    h2_request(b"POST", b"/", (b"te", b"trailers")),
                    b"request-body",
                    trailers=[(b"x-request-sum", b"1")],
                )
                peer, upstream_id = await upstream.request(1)
                await peer.until(lambda: peer.streams[upstream_id].ended)
                asked = peer.streams[upstream_id]
                assert bytes(asked.data) == b"request-body"
                assert asked.trailers == [(b"x-request-sum", b"1")]
                assert asked.header(b"te") == b"trailers"
                peer.send(
                    upstream_id,
                    [(b":status", b"200")],
                    b"response-body",
                    trailers=[(b"x-response-sum", b"2")],
                )
                answer = await response(client, stream_id)
                assert answer.reset is None
                assert bytes(answer.data) == b"response-body"
                assert answer.trailers == [(b"x-response-sum", b"2")]
                exchange = await sidecar.exchange()
                assert exchange.request_bytes == len(b"request-body")
                assert exchange.response_bytes == len(b"response-body")
                assert not upstream.errors and not client.errors
                client.close()

    run(scenario)


def test_trailers_cross_between_http2_and_a_chunked_http1_upstream() -> None:
    """HTTP/2 client, HTTP/1.1 upstream: a request body without a length goes chunked with
    its trailers; the upstream's chunked trailers come back as a trailing HEADERS frame."""

    async def scenario() -> None:
        arrived: list[Message] = []

        async def serve(wire: Wire, _index: int) -> None:
            arrived.append(await read_request(wire))
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            await wire.send(head + chunked(b"answer", trailers=[(b"x-response-sum", b"2")]))

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            stream_id = client.request(
                h2_request(b"POST", b"/", (b"te", b"trailers")),
                b"question",
                trailers=[(b"x-request-sum", b"1")],
            )
            answer = await response(client, stream_id)
            (asked,) = arrived
            assert asked.chunked and asked.body == b"question"
            assert asked.trailers == [(b"x-request-sum", b"1")]
            assert bytes(answer.data) == b"answer"
            assert answer.trailers == [(b"x-response-sum", b"2")]
            assert not client.errors
            client.close()

    run(scenario)


def test_a_grpc_trailers_only_unavailable_is_retried() -> None:
    """A gRPC call (``content-type: application/grpc``) answered Trailers-Only with
    ``grpc-status: 14`` under ``retry_on: unavailable`` is retried on a new stream of the same
    upstream connection, its body replayed; the client gets only the second answer."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(
                upstream.port,
                protocol="grpc",
                retries={"attempts": 1, "retry_on": "unavailable"},
            )
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(
                    h2_request(b"POST", b"/pkg.Service/Method", *GRPC_HEADERS), GRPC_MESSAGE
                )
                peer, first = await upstream.request(1)
                await peer.until(lambda: peer.streams[first].ended)
                peer.send(
                    first,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"application/grpc"),
                        (b"grpc-status", b"14"),
                        (b"grpc-message", b"try again"),
                    ],
                )
                again, second = await upstream.request(2)
                assert again is peer  # the same multiplexed connection
                await peer.until(lambda: peer.streams[second].ended)
                peer.send(
                    second,
                    [(b":status", b"200"), (b"content-type", b"application/grpc")],
                    GRPC_MESSAGE,
                    trailers=[(b"grpc-status", b"0")],
                )
                reply = await response(client, stream_id)
                assert reply.header(b":status") == b"200"
                assert bytes(reply.data) == GRPC_MESSAGE
                assert reply.trailers == [(b"grpc-status", b"0")]
                for asked in (peer.streams[first], peer.streams[second]):
                    assert bytes(asked.data) == GRPC_MESSAGE
                assert peer.streams[second].header(b"x-envoy-attempt-count") == b"2"
                exchange = await sidecar.exchange()
                assert exchange.request_protocol == "grpc"
                assert (exchange.tries, exchange.retries, exchange.grpc_status) == (2, 1, "0")
                assert exchange.flags == []
                assert not upstream.errors and not client.errors
                client.close()

    run(scenario)


def test_trailers_right_after_the_response_head_reach_the_client() -> None:
    """A gRPC server that fails after sending its response headers: HEADERS, then HEADERS
    with ``grpc-status: 5`` and END_STREAM, no message between (one flush). The client must
    get the trailers."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="grpc")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(
                    h2_request(b"POST", b"/pkg.Service/Method", *GRPC_HEADERS), GRPC_MESSAGE
                )
                peer, upstream_id = await upstream.request(1)
                await peer.until(lambda: peer.streams[upstream_id].ended)
                peer.send(
                    upstream_id,
                    [(b":status", b"200"), (b"content-type", b"application/grpc")],
                    trailers=[(b"grpc-status", b"5"), (b"grpc-message", b"not found")],
                )
                reply = await response(client, stream_id)
                exchange = await sidecar.exchange()
                assert reply.header(b":status") == b"200"
                assert reply.trailers == [(b"grpc-status", b"5"), (b"grpc-message", b"not found")]
                assert exchange.grpc_status == "5"
                client.close()

    run(scenario)


def test_an_upstream_rst_stream_mid_response_resets_the_client_stream() -> None:
    """The upstream resets its stream after the head: the client's stream is reset too (it
    must not take what it got for a whole response) and the exchange is flagged UR."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(h2_request(b"GET", b"/"))
                peer, upstream_id = await upstream.request(1)
                peer.send(upstream_id, [(b":status", b"200")], b"part", end=False)
                await client.until(lambda: bytes(client.streams[stream_id].data) == b"part")
                peer.reset(upstream_id, ErrorCodes.INTERNAL_ERROR)
                reply = await response(client, stream_id)
                assert reply.reset is not None and not reply.ended
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.UPSTREAM_REMOTE_RESET]
                client.close()

    run(scenario)


def test_the_client_closing_its_connection_ends_the_manager() -> None:
    """The client's GOAWAY and close end ``run()``; the upstream's stream in flight is reset
    and the exchange is flagged DR, so nothing is left waiting for a client that is gone."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                client.request(h2_request(b"GET", b"/slow"))
                peer, upstream_id = await upstream.request(1)
                assert client.transport is not None
                client.transport.abort()
                await peer.until(lambda: peer.streams[upstream_id].reset is not None)
                assert peer.streams[upstream_id].reset == ErrorCodes.CANCEL
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.DOWNSTREAM_REMOTE_RESET]
                await sidecar.finished()

    run(scenario)


def test_the_same_response_counts_the_same_bytes_for_http1_and_http2_clients() -> None:
    """Whatever the client's codec, an exchange's response_bytes is the response body's size
    (Envoy's %BYTES_SENT%, Istio's istio_response_bytes)."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            while True:
                try:
                    await read_request(wire)
                except EOFError:
                    return
                await wire.send(h1_response(200, b"0123456789"))

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            stream_id = client.request(h2_request(b"GET", b"/"))
            assert bytes((await response(client, stream_id)).data) == b"0123456789"
            assert (await sidecar.exchange()).response_bytes == 10
            client.close()

    run(scenario)


def test_an_http1_client_response_bytes_count_the_body() -> None:
    """The HTTP/1.1 half of the comparison above: the same 10-byte body is 10 bytes."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            await wire.send(h1_response(200, b"0123456789"))

        async with H1Upstream(serve) as upstream, Sidecar(mesh_yaml(upstream.port)) as sidecar:
            client = await Wire.connect(sidecar.address)
            await client.send(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            head = await read_head(client)
            assert await client.read_exactly(10) == b"0123456789"
            assert head.status == 200
            assert (await sidecar.exchange()).response_bytes == 10
            client.close()

    run(scenario)


def test_connect_is_refused_with_501() -> None:
    """CONNECT (no ``:path``) is not forwarded: 501 on its stream, the connection goes on."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(
                    [(b":method", b"CONNECT"), (b":authority", b"elsewhere:443")]
                )
                reply = await response(client, stream_id)
                assert reply.header(b":status") == b"501"
                exchange = await sidecar.exchange()
                assert (exchange.status, exchange.flags) == (501, [Flag.DOWNSTREAM_PROTOCOL_ERROR])
                assert upstream.requests() == []
                client.close()

    run(scenario)


def test_a_request_body_left_unread_is_refused_with_rst_stream_no_error() -> None:
    """The upstream answers while the client is still sending its body: the whole response
    reaches the client, then RST_STREAM NO_ERROR tells it to stop sending (RFC 9113 §8.1),
    and the upstream's stream is reset too (nobody will read the rest)."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(h2_request(b"POST", b"/"), b"first part", end=False)
                peer, upstream_id = await upstream.request(1)
                asked = peer.streams[upstream_id]
                await peer.until(lambda: bytes(asked.data) == b"first part")
                peer.send(upstream_id, [(b":status", b"413")], b"too much")
                await client.until(lambda: client.streams[stream_id].reset is not None)
                reply = client.streams[stream_id]
                assert reply.ended and bytes(reply.data) == b"too much"
                assert reply.reset == ErrorCodes.NO_ERROR
                exchange = await sidecar.exchange()
                assert (exchange.status, exchange.flags) == (413, [])
                await peer.until(lambda: asked.reset is not None)
                assert asked.reset == ErrorCodes.NO_ERROR  # Http2Try.finish: body unwanted
                client.close()

    run(scenario)


def test_drain_sends_goaway_and_closes_an_idle_connection() -> None:
    """``drain()`` on a connection with no stream in flight: GOAWAY NO_ERROR, then the
    connection closes and ``run()`` returns."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                manager = await sidecar.manager()
                manager.drain()
                await client.until(lambda: client.lost)
                assert client.goaway == ErrorCodes.NO_ERROR
                await sidecar.finished()

    run(scenario)


def test_an_upstream_connection_lost_mid_response_resets_the_client_stream_uc() -> None:
    """The HTTP/2 upstream's whole connection goes after the head: the client's stream is
    reset (never a complete-looking response) and the exchange is flagged UC."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(h2_request(b"GET", b"/"))
                peer, upstream_id = await upstream.request(1)
                peer.send(upstream_id, [(b":status", b"200")], b"part", end=False)
                await client.until(lambda: bytes(client.streams[stream_id].data) == b"part")
                assert peer.transport is not None
                peer.transport.abort()
                reply = await response(client, stream_id)
                assert reply.reset is not None and not reply.ended
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.UPSTREAM_CONNECTION_TERMINATION]
                client.close()

    run(scenario)


@pytest.mark.xfail(
    strict=True,
    reason="Http2ConnectionManager.peer_goaway promises to 'finish what is in flight, then "
    "close', but h2 moved the connection to CLOSED on receiving the client's GOAWAY "
    "(python-hyper/h2#1181): the response HEADERS cannot be sent (StreamGone -> "
    "DownstreamGone), the stream is logged DR and the client never gets its answer",
)
def test_a_stream_in_flight_is_answered_after_the_clients_graceful_goaway() -> None:
    """The client opens a stream and says GOAWAY (NO_ERROR) in the same write, as a client
    that wants no more streams but its last answer: that answer still reaches it."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.conn.get_next_available_stream_id()
                client.streams[stream_id] = H2Message()
                client.conn.send_headers(stream_id, h2_request(b"GET", b"/"), end_stream=True)
                client.graceful_goaway(0)  # the request and the GOAWAY in one segment
                peer, upstream_id = await upstream.request(1)
                peer.send(upstream_id, [(b":status", b"200")], b"last answer")
                await client.until(lambda: ended(client, stream_id) or client.lost)
                exchange = await sidecar.exchange()
                assert exchange.flags == []
                assert bytes(client.streams[stream_id].data) == b"last answer"

    run(scenario)


def test_the_route_timeout_after_the_head_cancels_the_client_stream() -> None:
    """The route's timeout strikes after the response head was forwarded: too late for a
    504, so the client's stream is reset with CANCEL (never a complete-looking response),
    the upstream's stream is cancelled too, and the exchange is flagged UT."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2", timeout="100ms")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(h2_request(b"GET", b"/slow"))
                peer, upstream_id = await upstream.request(1)
                peer.send(upstream_id, [(b":status", b"200")], b"part", end=False)
                reply = await response(client, stream_id)
                assert bytes(reply.data) == b"part" and not reply.ended
                assert reply.reset == ErrorCodes.CANCEL
                await peer.until(lambda: peer.streams[upstream_id].reset is not None)
                assert peer.streams[upstream_id].reset == ErrorCodes.CANCEL
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.UPSTREAM_REQUEST_TIMEOUT]
                client.close()

    run(scenario)


def test_connection_specific_fields_of_an_http1_response_never_reach_the_http2_client() -> None:
    """An HTTP/1.1 upstream's Connection, Keep-Alive, Proxy-Connection, Upgrade and
    Transfer-Encoding fields are dropped on the way to an HTTP/2 client, whose h2 would
    refuse the response otherwise; end-to-end fields pass."""

    async def scenario() -> None:
        async def serve(wire: Wire, _index: int) -> None:
            await read_request(wire)
            await wire.send(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n"
                b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Hop: 1\r\nX-End: 2\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"fine")
            )

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            stream_id = client.request(h2_request(b"GET", b"/"))
            reply = await response(client, stream_id)
            assert not client.errors and reply.reset is None
            assert bytes(reply.data) == b"fine"
            names = {name for name, _ in reply.headers or []}
            assert not names & {b"connection", b"keep-alive", b"proxy-connection", b"x-hop"}
            assert not names & {b"upgrade", b"transfer-encoding"}
            assert reply.header(b"x-end") == b"2"
            client.close()

    run(scenario)


def test_a_head_trickled_in_continuation_frames_is_cut_by_the_headers_timeout() -> None:
    """A client that opens a head (HEADERS without END_HEADERS) and then sends a CONTINUATION
    every 50 ms, never the last: after the request headers timeout (0.4 s) the connection is
    closed with GOAWAY ENHANCE_YOUR_CALM and the timeout counted; nothing reached the upstream.
    A whole head that arrives in pieces within the timeout is served."""

    async def scenario() -> None:
        async with (
            H1Upstream(answer_ok) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2", head_timeout=0.4) as sidecar,
        ):
            wire = await Wire.connect(sidecar.address)
            head = hpack.Encoder().encode(h2_request(b"GET", b"/slow"))
            await wire.send(PREFACE + raw_frame(0x4, 0, 0, b"") + raw_frame(0x1, 0, 1, head))
            started = asyncio.get_running_loop().time()
            try:
                while True:
                    await asyncio.sleep(0.05)
                    await wire.send(raw_frame(0x9, 0, 1, hpack.Encoder().encode([(b"x", b"y")])))
            except (BrokenPipeError, ConnectionResetError):
                pass
            received, _ended = await wire.read_to_end()
            cut_after = asyncio.get_running_loop().time() - started
            assert 0.4 <= cut_after < 1.5, cut_after
            goaway = [f for f in frames_of(received) if isinstance(f, GoAwayFrame)]
            assert [f.error_code for f in goaway] == [ErrorCodes.ENHANCE_YOUR_CALM], goaway
            assert sidecar.head_timeouts == 1
            assert upstream.accepted == 0

            # pieces of one head, 0.1 s apart, whole within the timeout: answered
            wire = await Wire.connect(sidecar.address)
            await wire.send(PREFACE + raw_frame(0x4, 0, 0, b""))
            pieces = [head[:4], head[4:8], head[8:]]
            await wire.send(raw_frame(0x1, 0x1, 1, pieces[0]))  # HEADERS, END_STREAM
            for n, piece in enumerate(pieces[1:], 1):
                await asyncio.sleep(0.1)
                last = n == len(pieces) - 1
                await wire.send(raw_frame(0x9, 0x4 if last else 0, 1, piece))  # END_HEADERS
            assert (await sidecar.exchange()).status == 200  # answered, and written
            wire.shutdown_write()
            received, _ended = await wire.read_to_end()
            answers = [f for f in frames_of(received) if isinstance(f, HeadersFrame)]
            assert len(answers) == 1 and answers[0].stream_id == 1, frames_of(received)
            assert sidecar.head_timeouts == 1
            wire.close()

    run(scenario)
