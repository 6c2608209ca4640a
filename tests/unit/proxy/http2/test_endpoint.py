"""The h2 shell on a real loopback connection: flow control holds a sender at the window until
the receiver says it forwarded the data, resets reach the other side's waiters, GOAWAY
refuses streams the server never saw."""

from __future__ import annotations

import asyncio

import h2.events
import pytest
from h2.errors import ErrorCodes

from proxy.http2.client import Http2Upstream
from proxy.http2.endpoint import STREAM_WINDOW, H2Endpoint, H2Stream, StreamGone


class _Server(H2Endpoint):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, client_side=False)
        self.arrived: asyncio.Queue[H2Stream] = asyncio.Queue()

    def other_event(self, event: h2.events.Event) -> None:
        if type(event) is h2.events.RequestReceived:
            stream = H2Stream(self, event.stream_id)
            stream.head = list(event.headers)
            self.streams[event.stream_id] = stream
            self.arrived.put_nowait(stream)


HEAD = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]


async def _pair() -> tuple[Http2Upstream, _Server, asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    servers: list[_Server] = []

    def make() -> _Server:
        servers.append(_Server(loop))
        return servers[-1]

    listener = await loop.create_server(make, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = Http2Upstream(loop)
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    while not servers:
        await asyncio.sleep(0)
    return client, servers[0], listener


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def test_the_sender_waits_at_the_window_until_the_receiver_forwarded() -> None:
    async def scenario() -> None:
        client, server, listener = await _pair()
        stream = client.open_stream(HEAD, end=False)
        payload = b"x" * (STREAM_WINDOW * 3)
        sending = asyncio.create_task(stream.send_data(payload, end=True))
        incoming = await asyncio.wait_for(server.arrived.get(), 5)
        # nothing is acknowledged: exactly one stream window crosses, then the sender waits
        await _until(lambda: stream.sent == STREAM_WINDOW)
        await asyncio.sleep(0.05)
        assert stream.sent == STREAM_WINDOW and not sending.done()
        received = 0
        while (data := await incoming.read()) is not None:
            received += len(data)
            incoming.consumed()  # "forwarded": the window reopens
        await asyncio.wait_for(sending, 5)
        assert received == len(payload)
        client.close()
        listener.close()

    asyncio.run(scenario())


def test_a_reset_reaches_the_other_sides_waiters() -> None:
    async def scenario() -> None:
        client, server, listener = await _pair()
        stream = client.open_stream(HEAD, end=False)
        incoming = await asyncio.wait_for(server.arrived.get(), 5)
        reading = asyncio.create_task(incoming.read())
        await asyncio.sleep(0.01)
        stream.reset(ErrorCodes.CANCEL)
        with pytest.raises(StreamGone) as gone:
            await asyncio.wait_for(reading, 5)
        assert gone.value.code == ErrorCodes.CANCEL
        # the connection and its next stream are unaffected
        second = client.open_stream(HEAD, end=True)
        assert (await asyncio.wait_for(server.arrived.get(), 5)).id == second.id
        client.close()
        listener.close()

    asyncio.run(scenario())


def test_goaway_refuses_the_streams_the_server_never_saw() -> None:
    async def scenario() -> None:
        client, server, listener = await _pair()
        first = client.open_stream(HEAD, end=True)
        second = client.open_stream(HEAD, end=True)
        await asyncio.wait_for(server.arrived.get(), 5)
        server.conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=first.id)
        server.flush()
        with pytest.raises(StreamGone) as refused:
            await asyncio.wait_for(second.wait_head(), 5)
        assert refused.value.code == ErrorCodes.REFUSED_STREAM  # safe to retry elsewhere
        assert client.goaway and not client.has_capacity()
        assert first.reset_code is None  # still the server's to answer
        server.transport.close()
        with pytest.raises(StreamGone):
            await asyncio.wait_for(first.wait_head(), 5)
        listener.close()

    asyncio.run(scenario())
