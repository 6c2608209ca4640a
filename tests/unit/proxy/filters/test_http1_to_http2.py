"""An HTTP/1.1 client on an ``http2`` service port: ``Http1ConnectionManager`` → Pipeline →
``Http2Try`` → an h2 server peer on loopback. The request body is streamed into the stream
as the client sends it, and the response comes back in HTTP/1.1 framing."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes

from proxy.outcomes import Flag
from proxy.upstream.connector import UPSTREAM_CX_HTTP2_TOTAL

from .loopback import (
    H2Peer,
    H2Upstream,
    Sidecar,
    Wire,
    chunked,
    h1_request,
    mesh_yaml,
    read_head,
    read_response,
    run,
)


def test_a_post_body_is_streamed_to_the_http2_upstream_and_the_response_relayed() -> None:
    """The first half of the body is in the upstream's stream before the client sends the
    second half (streamed, not buffered); the upstream sees the whole body with its length,
    and its answer reaches the HTTP/1.1 client (chunked: HTTP/2 gave no length)."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                head = h1_request(b"POST", b"/upload", (b"Content-Length", b"10"))
                await client.send(head + b"hello")
                peer, stream_id = await upstream.request(1)
                asked = peer.streams[stream_id]
                await peer.until(lambda: bytes(asked.data) == b"hello")
                assert not asked.ended
                await client.send(b"world")
                await peer.until(lambda: asked.ended)
                assert bytes(asked.data) == b"helloworld"
                assert asked.header(b":method") == b"POST"
                assert asked.header(b":path") == b"/upload"
                assert asked.header(b":authority") == b"backend"
                assert asked.header(b"content-length") == b"10"
                assert asked.header(b"host") is None  # it became :authority
                peer.send(stream_id, [(b":status", b"201")], b"stored 10 bytes")
                answer = await read_response(client)
                assert (answer.status, answer.body) == (201, b"stored 10 bytes")
                assert answer.chunked
                exchange = await sidecar.exchange()
                assert (exchange.status, exchange.flags, exchange.request_bytes) == (201, [], 10)
                assert sidecar.counter(UPSTREAM_CX_HTTP2_TOTAL) == 1
                assert not upstream.errors
                client.close()

    run(scenario)


def test_chunked_trailers_cross_to_http2_and_back() -> None:
    """A chunked request's trailers become the stream's trailing HEADERS; the upstream's
    trailers come back as the chunked response's trailer section."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                head = h1_request(b"POST", b"/", (b"Transfer-Encoding", b"chunked"))
                await client.send(head + chunked(b"abc", trailers=[(b"x-request-sum", b"1")]))
                peer, stream_id = await upstream.request(1)
                asked = peer.streams[stream_id]
                await peer.until(lambda: asked.ended)
                assert bytes(asked.data) == b"abc"
                assert asked.trailers == [(b"x-request-sum", b"1")]
                assert asked.header(b"transfer-encoding") is None  # HTTP/2 frames its own
                peer.send(
                    stream_id, [(b":status", b"200")], b"xyz", trailers=[(b"x-response-sum", b"2")]
                )
                answer = await read_response(client)
                assert (answer.body, answer.trailers) == (b"xyz", [(b"x-response-sum", b"2")])
                assert not upstream.errors
                client.close()

    run(scenario)


def test_keep_alive_requests_share_the_multiplexed_upstream_connection() -> None:
    """Two HTTP/1.1 connections, two requests each: four streams on one HTTP/2 upstream
    connection."""

    async def scenario() -> None:
        def answer(peer: H2Peer, stream_id: int) -> None:
            peer.send(stream_id, [(b":status", b"200"), (b"content-length", b"2")], b"ok")

        async with H2Upstream(answer) as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                clients = [await Wire.connect(sidecar.address) for _ in range(2)]
                for _round in range(2):
                    for client in clients:
                        await client.send(h1_request(b"GET", b"/"))
                        head = await read_head(client)
                        assert head.status == 200
                        assert await client.read_exactly(2) == b"ok"
                assert len(upstream.peers) == 1
                assert len(upstream.requests()) == 4
                assert sidecar.counter(UPSTREAM_CX_HTTP2_TOTAL) == 1
                for client in clients:
                    client.close()

    run(scenario)


@pytest.mark.xfail(
    strict=True,
    reason="an HTTP/2 upstream's graceful GOAWAY (last_stream_id covering the stream in "
    "flight, RFC 9113 §6.8) kills that stream: h2 moves its connection state machine to "
    "CLOSED on receiving GOAWAY (python-hyper/h2#1181), the next HEADERS/DATA frame raises "
    "ProtocolError in H2Endpoint.data_received, which closes the connection, and the request "
    "gets 503 UC (e.g. nginx's keepalive_requests or a Go server's graceful Shutdown)",
)
def test_a_stream_in_flight_survives_the_upstreams_graceful_goaway() -> None:
    """The upstream says GOAWAY (NO_ERROR, last stream = the one in flight), then answers that
    stream: the answer reaches the client."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                await client.send(h1_request(b"GET", b"/"))
                peer, stream_id = await upstream.request(1)
                peer.graceful_goaway(stream_id)
                peer.send(stream_id, [(b":status", b"200"), (b"content-length", b"4")], b"done")
                answer = await read_response(client)
                exchange = await sidecar.exchange()
                assert exchange.flags == []
                assert (answer.status, answer.body) == (200, b"done")
                client.close()

    run(scenario)


def test_after_the_upstreams_goaway_new_requests_open_a_new_connection() -> None:
    """A GOAWAY on an idle upstream connection: the sidecar closes that connection, and the
    next request goes on a new one."""

    async def scenario() -> None:
        def answer(peer: H2Peer, stream_id: int) -> None:
            peer.send(stream_id, [(b":status", b"200"), (b"content-length", b"2")], b"ok")

        async with H2Upstream(answer) as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                await client.send(h1_request(b"GET", b"/"))
                assert (await read_response(client)).body == b"ok"
                first, stream_id = await upstream.request(1)
                first.graceful_goaway(stream_id)
                await first.until(lambda: first.lost)  # the sidecar closed it, idle
                await client.send(h1_request(b"GET", b"/"))
                assert (await read_response(client)).body == b"ok"
                assert len(upstream.peers) == 2
                client.close()

    run(scenario)


def test_a_client_reset_mid_upload_cancels_the_http2_stream() -> None:
    """An HTTP/1.1 client that resets while its body streams into an HTTP/2 upstream: the
    upstream sees RST_STREAM CANCEL on that stream (its connection stays up), flag DC."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                head = h1_request(b"POST", b"/", (b"Content-Length", b"100000"))
                await client.send(head + b"x" * 1000)
                peer, stream_id = await upstream.request(1)
                asked = peer.streams[stream_id]
                await peer.until(lambda: len(asked.data) == 1000)
                client.reset()
                await peer.until(lambda: asked.reset is not None)
                assert asked.reset == ErrorCodes.CANCEL and not asked.ended
                assert not peer.lost
                exchange = await sidecar.exchange()
                assert exchange.flags == [Flag.DOWNSTREAM_CONNECTION_TERMINATION]

    run(scenario)


def test_connection_specific_fields_never_reach_the_http2_upstream() -> None:
    """HTTP/1.1 connection fields (Connection and what it names, Keep-Alive,
    Proxy-Connection, Upgrade, Transfer-Encoding) are malformed in HTTP/2 (RFC 9113 §8.2.2):
    none is forwarded (h2 on the upstream would refuse the stream), end-to-end ones are."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                await client.send(
                    h1_request(
                        b"POST",
                        b"/",
                        (b"Connection", b"keep-alive, x-hop"),
                        (b"Keep-Alive", b"timeout=5"),
                        (b"Proxy-Connection", b"keep-alive"),
                        (b"X-Hop", b"1"),
                        (b"X-End", b"2"),
                        (b"TE", b"trailers"),
                        (b"Transfer-Encoding", b"chunked"),
                    )
                    + chunked(b"body")
                )
                peer, stream_id = await upstream.request(1)
                asked = peer.streams[stream_id]
                await peer.until(lambda: asked.ended)
                assert not upstream.errors
                names = {name for name, _ in asked.headers or []}
                forbidden = {b"connection", b"keep-alive", b"proxy-connection", b"x-hop"}
                assert not names & (forbidden | {b"transfer-encoding", b"upgrade"})
                assert asked.header(b"x-end") == b"2"
                assert asked.header(b"te") == b"trailers"  # the one TE value HTTP/2 allows
                peer.send(stream_id, [(b":status", b"200"), (b"content-length", b"0")])
                assert (await read_response(client)).status == 200
                client.close()

    run(scenario)
