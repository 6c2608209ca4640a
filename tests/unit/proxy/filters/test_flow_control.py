"""Bodies larger than every flow-control window, through the adapters on loopback: a 1 MiB
upload and a 1 MiB download arrive whole and in order, which they can only do if each
adapter gives the windows back as it forwards (``StreamBody.consumed`` towards an HTTP/2
client, ``Http2Try.consumed`` towards an HTTP/2 upstream) and HTTP/1.1's backpressure lets
go as the other side reads."""

from __future__ import annotations

import asyncio
import random

from .loopback import (
    H1Upstream,
    H2Upstream,
    Message,
    Sidecar,
    Wire,
    h1_request,
    h1_response,
    h2_client,
    h2_request,
    mesh_yaml,
    read_request,
    read_response,
    run,
)

SIZE = 1024 * 1024  # four times the proxy's stream window, a quarter of its connection window
UPLOAD = random.Random(1).randbytes(SIZE)
DOWNLOAD = random.Random(2).randbytes(SIZE)


def test_http2_both_sides_a_megabyte_each_way() -> None:
    """HTTP/2 client and upstream: the upload crosses the sidecar's stream window four
    times over, then the download does; both arrive intact and are counted."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text, downstream="http2") as sidecar:
                client = await h2_client(sidecar.address)
                stream_id = client.request(h2_request(b"POST", b"/"), end=False)
                uploading = asyncio.create_task(client.send_all(stream_id, UPLOAD))
                peer, upstream_id = await upstream.request(1)
                asked = peer.streams[upstream_id]
                await peer.until(lambda: asked.ended)
                await uploading
                assert bytes(asked.data) == UPLOAD
                peer.send(upstream_id, [(b":status", b"200")], end=False)
                await peer.send_all(upstream_id, DOWNLOAD)
                answer = client.streams[stream_id]
                await client.until(lambda: answer.ended or answer.reset is not None)
                assert answer.reset is None and bytes(answer.data) == DOWNLOAD
                exchange = await sidecar.exchange()
                assert (exchange.request_bytes, exchange.response_bytes) == (SIZE, SIZE)
                assert not upstream.errors and not client.errors
                client.close()

    run(scenario)


def test_http2_client_http1_upstream_a_megabyte_each_way() -> None:
    """HTTP/2 client, HTTP/1.1 upstream: the upload goes chunked (no length was given) and
    the download comes back as DATA frames, both whole."""

    async def scenario() -> None:
        arrived: list[Message] = []

        async def serve(wire: Wire, _index: int) -> None:
            arrived.append(await read_request(wire))
            await wire.send(h1_response(200, DOWNLOAD))

        async with (
            H1Upstream(serve) as upstream,
            Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
        ):
            client = await h2_client(sidecar.address)
            stream_id = client.request(h2_request(b"POST", b"/"), end=False)
            await client.send_all(stream_id, UPLOAD)
            answer = client.streams[stream_id]
            await client.until(lambda: answer.ended or answer.reset is not None)
            (asked,) = arrived
            assert asked.chunked and asked.body == UPLOAD
            assert answer.reset is None and bytes(answer.data) == DOWNLOAD
            exchange = await sidecar.exchange()
            assert (exchange.request_bytes, exchange.response_bytes) == (SIZE, SIZE)
            client.close()

    run(scenario)


def test_http1_client_http2_upstream_a_megabyte_each_way() -> None:
    """HTTP/1.1 client, HTTP/2 upstream: the Content-Length upload is streamed into the
    upstream's stream window by window, the download relayed back chunked."""

    async def scenario() -> None:
        async with H2Upstream() as upstream:
            yaml_text = mesh_yaml(upstream.port, protocol="http2")
            async with Sidecar(yaml_text) as sidecar:
                client = await Wire.connect(sidecar.address)
                length = (b"Content-Length", str(SIZE).encode())
                uploading = asyncio.create_task(
                    client.send(h1_request(b"POST", b"/", length) + UPLOAD)
                )
                peer, upstream_id = await upstream.request(1)
                asked = peer.streams[upstream_id]
                await peer.until(lambda: asked.ended)
                await uploading
                assert bytes(asked.data) == UPLOAD
                peer.send(upstream_id, [(b":status", b"200")], end=False)
                downloading = asyncio.create_task(peer.send_all(upstream_id, DOWNLOAD))
                answer = await read_response(client)
                await downloading
                assert answer.body == DOWNLOAD
                exchange = await sidecar.exchange()
                assert exchange.request_bytes == SIZE
                client.close()

    run(scenario)
