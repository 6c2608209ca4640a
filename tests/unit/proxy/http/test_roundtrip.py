"""send() output parses back to the same events; byte-by-byte feeding equals whole feeding."""

from __future__ import annotations

import random

import pytest

from proxy.http.codec import (
    NEED_DATA,
    PAUSED,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    LocalProtocolError,
    Request,
    Response,
)


def collect(conn: Connection, chunks: list[bytes], cycle_server: bool = False) -> list[object]:
    """Feed ``chunks`` then EOF; return events with adjacent Data merged."""
    events: list[object] = []

    def pump() -> None:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                if not cycle_server:
                    return
                conn.send(Response(200, [(b"content-length", b"0")]))
                conn.send(EndOfMessage())
                conn.start_next_cycle()
                continue
            if events and isinstance(event, Data) and isinstance(events[-1], Data):
                events[-1] = Data(events[-1].data + event.data)
            else:
                events.append(event)
            if isinstance(event, ConnectionClosed):
                return

    for chunk in chunks:
        conn.receive_data(chunk)
        pump()
    return events


def bytewise(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


def random_split(raw: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 20))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


REQUESTS = {
    "simple": b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
    "content-length": b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked": (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n"
    ),
    "pipelined": (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        b"\r\nPUT /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
        b"GET /4 HTTP/1.0\r\n\r\n"
    ),
}

RESPONSES = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
    "chunked": b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "until-close": b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close",
    "informational": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_requests_byte_by_byte_equal_whole(name: str) -> None:
    raw = REQUESTS[name]
    whole = collect(Connection("server"), [raw, b""], cycle_server=True)
    single = collect(Connection("server"), [*bytewise(raw), b""], cycle_server=True)
    assert whole == single
    assert any(isinstance(e, Request) for e in whole)
    if name == "pipelined":
        assert [e.target for e in whole if isinstance(e, Request)] == [b"/1", b"/2", b"/3", b"/4"]


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_responses_byte_by_byte_equal_whole(name: str) -> None:
    raw = RESPONSES[name]

    def client() -> Connection:
        conn = Connection("client")
        conn.send(Request(b"GET", b"/", [(b"host", b"a")]))
        conn.send(EndOfMessage())
        return conn

    whole = collect(client(), [raw, b""])
    single = collect(client(), [*bytewise(raw), b""])
    assert whole == single
    assert any(isinstance(e, Response) for e in whole)


def test_request_round_trip_through_send() -> None:
    client = Connection("client")
    request = Request(
        b"POST",
        b"/upload?x=1",
        [(b"host", b"svc:8080"), (b"content-type", b"text/plain"), (b"content-length", b"4")],
    )
    wire = client.send(request) + client.send(Data(b"da")) + client.send(Data(b"ta"))
    wire += client.send(EndOfMessage())
    server = Connection("server")
    events = collect(server, [wire])
    assert events == [request, Data(b"data"), EndOfMessage()]


def test_response_round_trip_with_automatic_chunking_and_trailers() -> None:
    server = Connection("server")
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    server.next_event()
    response = Response(200, [(b"x-a", b"1")], b"Fine")
    wire = server.send(response)
    assert b"transfer-encoding: chunked" in wire
    wire += server.send(Data(b"abc")) + server.send(Data(b"")) + server.send(Data(b"defg"))
    wire += server.send(EndOfMessage([(b"x-sum", b"7")]))
    client = Connection("client")
    client.send(Request(b"GET", b"/", [(b"host", b"a")]))
    client.send(EndOfMessage())
    events = collect(client, [wire])
    assert events[0].status == 200 and events[0].reason == b"Fine"  # type: ignore[union-attr]
    assert events[1:] == [Data(b"abcdefg"), EndOfMessage([(b"x-sum", b"7")])]


@pytest.mark.parametrize("seed", range(20))
def test_chunked_encode_decode_random_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    body = rng.randbytes(rng.randint(0, 5000))
    server = Connection("server")
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    server.next_event()
    wire = server.send(Response(200, [(b"transfer-encoding", b"chunked")]))
    pos = 0
    while pos < len(body):
        step = rng.randint(1, 700)
        wire += server.send(Data(body[pos : pos + step]))
        pos += step
    wire += server.send(EndOfMessage())
    client = Connection("client")
    client.send(Request(b"GET", b"/", [(b"host", b"a")]))
    client.send(EndOfMessage())
    events = collect(client, random_split(wire, rng) if len(wire) > 1 else [wire])
    got = b"".join(e.data for e in events if isinstance(e, Data))
    assert got == body
    assert isinstance(events[-1], EndOfMessage)


def test_send_enforces_content_length() -> None:
    client = Connection("client")
    client.send(Request(b"POST", b"/", [(b"host", b"a"), (b"content-length", b"2")]))
    with pytest.raises(LocalProtocolError):
        client.send(Data(b"abc"))
    client = Connection("client")
    client.send(Request(b"POST", b"/", [(b"host", b"a"), (b"content-length", b"2")]))
    client.send(Data(b"a"))
    with pytest.raises(LocalProtocolError) as info:
        client.send(EndOfMessage())
    assert info.value.status_hint == 500


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"a"), (b"x", b"a\r\nInjected: 1")],
        [(b"host", b"a"), (b"x y", b"1")],
        [(b"host", b"a"), (b"", b"1")],
        [(b"host", b"a"), (b"x", b"nul\x00")],
        [(b"host", b"a"), (b"content-length", b"1"), (b"transfer-encoding", b"chunked")],
        [],
    ],
)
def test_send_refuses_invalid_requests(headers: list[tuple[bytes, bytes]]) -> None:
    client = Connection("client")
    with pytest.raises(LocalProtocolError):
        client.send(Request(b"GET", b"/", headers))
    with pytest.raises(LocalProtocolError):
        client.send(Request(b"GET", b"/", [(b"host", b"a")]))  # state is ERROR now


def test_request_without_framing_cannot_carry_data() -> None:
    client = Connection("client")
    client.send(Request(b"GET", b"/", [(b"host", b"a")]))
    with pytest.raises(LocalProtocolError):
        client.send(Data(b"x"))


def test_wrong_role_events_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Connection("server").send(Request(b"GET", b"/", [(b"host", b"a")]))
    with pytest.raises(LocalProtocolError):
        Connection("client").send(Response(200))
