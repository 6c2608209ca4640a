"""Message framing (RFC 9112 §6.3), keep-alive, pipelining, Expect and protocol switches."""

from __future__ import annotations

import pytest

from proxy.http.codec import (
    NEED_DATA,
    PAUSED,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    State,
)


def drain(conn: Connection) -> list[object]:
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            out.append(event)
            return out
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ if not (e is NEED_DATA or e is PAUSED) else repr(e) for e in events]


def client_after(request: Request) -> Connection:
    """A client-role connection that has sent ``request`` completely."""
    conn = Connection("client")
    conn.send(request)
    conn.send(EndOfMessage())
    return conn


GET = Request(b"GET", b"/", [(b"host", b"a")])


# ------------------------------------------------------------------------- request bodies


def test_request_without_framing_has_no_body() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE")
    events = drain(conn)
    assert kinds(events) == ["Request", "EndOfMessage", "PAUSED"]
    assert conn.their_state is State.DONE


def test_request_with_content_length() -> None:
    conn = Connection("server")
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    assert kinds(drain(conn)) == ["Request", "Data", "NEED_DATA"]
    conn.receive_data(b"lo")
    events = drain(conn)
    assert events[0] == Data(b"lo")
    assert kinds(events) == ["Data", "EndOfMessage", "NEED_DATA"]


def test_request_with_content_length_zero() -> None:
    conn = Connection("server")
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert kinds(drain(conn)) == ["Request", "EndOfMessage", "NEED_DATA"]


def test_chunked_request_with_trailers() -> None:
    conn = Connection("server")
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    events = drain(conn)
    assert events[1:4] == [
        Data(b"hello"),
        Data(b" world"),
        EndOfMessage([(b"x-checksum", b"abc"), (b"x-other", b"1")]),
    ]


def test_truncated_body_is_an_error() -> None:
    conn = Connection("server")
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    drain(conn)
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    assert info.value.status_hint == 400


def test_truncated_head_is_an_error_and_clean_close_is_not() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.1\r\nHo")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    idle = Connection("server")
    idle.receive_data(b"")
    assert isinstance(idle.next_event(), ConnectionClosed)
    assert idle.their_state is State.CLOSED


# ------------------------------------------------------------------------ response bodies


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    conn = client_after(GET)
    conn.receive_data(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert kinds(drain(conn)) == ["Response", "EndOfMessage", "NEED_DATA"]


def test_response_to_head_has_no_body() -> None:
    conn = client_after(Request(b"HEAD", b"/", [(b"host", b"a")]))
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert kinds(drain(conn)) == ["Response", "EndOfMessage", "NEED_DATA"]
    assert conn.states == {"client": State.DONE, "server": State.DONE}


def test_informational_responses_then_final() -> None:
    conn = client_after(GET)
    conn.receive_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    events = drain(conn)
    assert kinds(events) == [
        "InformationalResponse",
        "InformationalResponse",
        "Response",
        "Data",
        "EndOfMessage",
        "NEED_DATA",
    ]
    assert events[1] == InformationalResponse(103, [(b"link", b"</a>")], b"Early Hints")


def test_response_without_framing_reads_until_close() -> None:
    conn = client_after(GET)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert kinds(drain(conn)) == ["Response", "Data", "NEED_DATA"]
    conn.receive_data(b"def")
    assert drain(conn)[0] == Data(b"def")
    conn.receive_data(b"")
    assert kinds(drain(conn)) == ["EndOfMessage", "ConnectionClosed"]
    assert not conn.keep_alive
    assert conn.our_state is State.MUST_CLOSE


def test_chunked_response() -> None:
    conn = client_after(GET)
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    events = drain(conn)
    assert events[1:3] == [Data(b"abc"), EndOfMessage()]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    ],
)
def test_bad_upstream_response_is_502(raw: bytes) -> None:
    conn = client_after(GET)
    conn.receive_data(raw)
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    assert info.value.status_hint == 502
    assert conn.their_state is State.ERROR


# ---------------------------------------------------------------- keep-alive, pipelining


def test_pipelined_requests_are_parsed_one_after_another() -> None:
    conn = Connection("server")
    conn.receive_data(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    targets = []
    for _ in range(3):
        events = drain(conn)
        assert events[-1] is PAUSED or events[-1] is NEED_DATA
        targets.append(events[0].target)  # type: ignore[union-attr]
        assert conn.next_event() is PAUSED or conn.their_state is State.DONE
        conn.send(Response(200, [(b"content-length", b"0")]))
        conn.send(EndOfMessage())
        conn.start_next_cycle()
    assert targets == [b"/1", b"/2", b"/3"]
    assert conn.next_event() is NEED_DATA


def test_start_next_cycle_needs_both_done() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    drain(conn)
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_connection_close_ends_after_the_cycle() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    events = drain(conn)
    assert events[0].keep_alive is False  # type: ignore[union-attr]
    out = conn.send(Response(200, [(b"content-length", b"0")]))
    assert b"connection: close\r\n" in out
    conn.send(EndOfMessage())
    assert conn.states == {"client": State.MUST_CLOSE, "server": State.MUST_CLOSE}
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_http10_without_keep_alive_closes_and_with_it_persists() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert drain(conn)[0].keep_alive is False  # type: ignore[union-attr]
    out = conn.send(Response(200, []))
    assert b"transfer-encoding" not in out and b"connection: close" in out
    assert conn.send(Data(b"raw")) == b"raw"  # close-delimited towards HTTP/1.0
    conn.send(EndOfMessage())
    assert conn.our_state is State.MUST_CLOSE

    ka = Connection("server")
    ka.receive_data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert drain(ka)[0].keep_alive is True  # type: ignore[union-attr]
    out = ka.send(Response(200, [(b"content-length", b"0")]))
    assert b"connection: keep-alive" in out
    ka.send(EndOfMessage())
    ka.start_next_cycle()


def test_leading_empty_lines_before_a_request_are_ignored() -> None:
    conn = Connection("server")
    conn.receive_data(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert kinds(drain(conn))[:2] == ["Request", "EndOfMessage"]


def test_error_response_after_a_bad_request() -> None:
    conn = Connection("server")
    conn.receive_data(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    out = conn.send(Response(info.value.status_hint, [(b"content-length", b"0")]))
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in out
    conn.send(EndOfMessage())
    assert conn.our_state is State.MUST_CLOSE


# ------------------------------------------------------------ Expect, Upgrade, CONNECT


def test_expect_100_continue_is_exposed() -> None:
    conn = Connection("server")
    conn.receive_data(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
    )
    request = conn.next_event()
    assert isinstance(request, Request) and request.expect_continue
    assert conn.next_event() is NEED_DATA
    assert conn.send(InformationalResponse(100)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.receive_data(b"abc")
    assert kinds(drain(conn)) == ["Data", "EndOfMessage", "NEED_DATA"]
    http10 = Connection("server")
    http10.receive_data(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
    assert http10.next_event().expect_continue is False  # type: ignore[union-attr]


UPGRADE = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_upgrade_accepted_switches_and_hands_back_trailing_bytes() -> None:
    server = Connection("server")
    server.receive_data(UPGRADE + b"\x81\x05hello")
    events = drain(server)
    assert events[0].upgrade == b"websocket"  # type: ignore[union-attr]
    assert kinds(events) == ["Request", "EndOfMessage", "PAUSED"]
    assert server.their_state is State.MIGHT_SWITCH_PROTOCOL
    server.send(InformationalResponse(101, [(b"upgrade", b"websocket")]))
    assert server.states == {"client": State.SWITCHED, "server": State.SWITCHED}
    assert server.next_event() is PAUSED
    assert server.trailing_data == (b"\x81\x05hello", False)

    client = Connection("client")
    client.send(
        Request(
            b"GET",
            b"/chat",
            [(b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
        )
    )
    client.send(EndOfMessage())
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes")
    assert isinstance(client.next_event(), InformationalResponse)
    assert client.our_state is State.SWITCHED
    assert client.next_event() is PAUSED
    assert client.trailing_data == (b"frames", False)


def test_upgrade_declined_continues_as_http() -> None:
    server = Connection("server")
    server.receive_data(UPGRADE)
    drain(server)
    server.send(Response(200, [(b"content-length", b"0")]))
    server.send(EndOfMessage())
    assert server.states == {"client": State.DONE, "server": State.DONE}
    server.start_next_cycle()


def test_upgrade_needs_connection_upgrade() -> None:
    server = Connection("server")
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    events = drain(server)
    assert events[0].upgrade is None  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError):
        server.send(InformationalResponse(101))


def test_unsolicited_101_from_upstream_is_an_error() -> None:
    conn = client_after(GET)
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status_hint == 502


def test_connect_tunnel() -> None:
    server = Connection("server")
    server.receive_data(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03"
    )
    events = drain(server)
    assert events[0].target == b"example.com:443"  # type: ignore[union-attr]
    assert server.their_state is State.MIGHT_SWITCH_PROTOCOL
    server.send(Response(200, []))
    assert server.our_state is State.SWITCHED
    assert server.trailing_data == (b"\x16\x03", False)

    client = client_after(Request(b"CONNECT", b"example.com:443", [(b"host", b"example.com")]))
    client.receive_data(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01")
    assert isinstance(client.next_event(), Response)
    assert client.our_state is State.SWITCHED
    assert client.trailing_data == (b"\x16\x03\x01", False)


def test_connect_refused_is_plain_http() -> None:
    client = client_after(Request(b"CONNECT", b"example.com:443", [(b"host", b"example.com")]))
    client.receive_data(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n")
    assert kinds(drain(client)) == ["Response", "EndOfMessage", "NEED_DATA"]
    assert client.states == {"client": State.DONE, "server": State.DONE}


@pytest.mark.parametrize(
    "target",
    [b"/", b"/a?b=c", b"http://example.com", b"HTTPS://example.com:8443/x?y", b"http://[::1]:80/"],
)
def test_accepted_target_forms(target: bytes) -> None:
    conn = Connection("server")
    conn.receive_data(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.next_event().target == target  # type: ignore[union-attr]


def test_options_asterisk() -> None:
    conn = Connection("server")
    conn.receive_data(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.next_event().target == b"*"  # type: ignore[union-attr]
