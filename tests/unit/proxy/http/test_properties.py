"""Property-based fuzzing of the HTTP/1.1 codec with hypothesis, bounded in examples and time.

Three properties a proxy's parser must have whatever the peer sends:

1. it never fails other than with ProtocolError (no IndexError, no UnicodeError, no hang);
2. how the bytes are split into reads does not change what it parses;
3. what it forwards is unambiguous: re-serialising the parsed requests and parsing that again
   gives the same requests (the upstream sees exactly the messages the proxy understood, so
   a smuggled second request cannot appear downstream of the proxy).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.codec import (
    NEED_DATA,
    PAUSED,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    Response,
)
from proxy.http.headers import (
    HEXDIG,
    HOST_OK,
    TCHAR,
    VALUE_OK,
    any_outside,
    outside_table,
    strip_hop_by_hop,
)

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENS = [
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b" ",
    b"/",
    b"/a?b=c",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b"Host: a",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: chunked, x",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"Upgrade: websocket",
    b"Connection: upgrade",
    b"0",
    b"5",
    b"ff",
    b"hello",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xff",
    b";ext=1",
    b"x-a: b",
    b" folded",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 101 Switching",
    b"HTTP/1.1 100 Continue",
    b"-1",
    b"+5",
]

noise = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=40).map(b"".join)

FIELDS = [
    b"Host: a",
    b"Host: b",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 5, 5",
    b"Content-Length: 6",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: chunked, x",
    b"Transfer-Encoding: gzip, chunked",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"X-A: b",
    b"X-A : b",
    b" X-A: b",
    b"X-A:\tb",
    b"Te: trailers",
]
BODIES = [
    b"",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\n0\n\n",
    b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"6\r\nhello\r\n0\r\n\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    """A request that is valid more often than not, with the usual smuggling ingredients:
    duplicate or conflicting framing, odd spacing, bare LF, bodies that lie about their size."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"G ET"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"http://h/x", b"*", b"/a b"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=4))
    if draw(st.booleans()):
        fields.insert(0, b"Host: a")
    body = draw(st.sampled_from(BODIES))
    return method + b" " + target + b" " + version + eol + eol.join(fields) + eol * 2 + body


streams = noise | st.lists(one_request(), min_size=1, max_size=3).map(b"".join)


def drain(codec: Connection, chunks: list[bytes]) -> list[object]:
    """Feed ``chunks`` and collect events (keep-alive cycles included) until the codec needs
    more, pauses for good or fails; the failure is returned as the last item."""
    events: list[object] = []
    pending = [*chunks, b""]
    while True:
        try:
            event = codec.next_event()
        except ProtocolError as exc:
            events.append(("error", exc.status_hint))
            return events
        if event is NEED_DATA:
            if not pending:
                return events
            codec.receive_data(pending.pop(0))
            continue
        if event is PAUSED:
            states = codec.states
            if all(state.name == "DONE" for state in states.values()):
                codec.start_next_cycle()
                continue
            return events
        events.append(event)
        if type(event) is ConnectionClosed:
            return events
        if type(event) is EndOfMessage and codec.our_role == "server":
            # answer, so the next request can be read
            codec.send(Response(200, [(b"content-length", b"0")]))
            codec.send(EndOfMessage())
            if codec.our_state.name == "MUST_CLOSE":
                return events
            codec.start_next_cycle()


@BOUNDED
@given(streams, st.sampled_from(["server", "client"]))
def test_any_bytes_only_ever_raise_protocol_error(data: bytes, role: str) -> None:
    codec = Connection(role)  # type: ignore[arg-type]
    if role == "client":
        codec.send(Request(b"GET", b"/", [(b"host", b"a")]))
        codec.send(EndOfMessage())
    drain(codec, [data])


@BOUNDED
@given(streams, st.lists(st.integers(min_value=1, max_value=16), max_size=20))
def test_how_bytes_are_split_does_not_change_the_parse(data: bytes, sizes: list[int]) -> None:
    chunks, rest = [], data
    for size in sizes:
        chunks.append(rest[:size])
        rest = rest[size:]
    chunks.append(rest)
    whole = drain(Connection("server"), [data])
    split = drain(Connection("server"), [c for c in chunks if c])
    assert _merged(split) == _merged(whole)


@BOUNDED
@given(streams)
def test_forwarded_requests_parse_back_to_the_same_requests(data: bytes) -> None:
    """The proxy's job in small: parse downstream, re-serialise upstream, and the upstream's
    strict parse of that must be exactly what the proxy understood."""
    understood = [e for e in drain(Connection("server"), [data]) if not isinstance(e, tuple)]
    upstream_bytes = b""
    for index, event in enumerate(understood):
        client = Connection("client")
        if type(event) is Request:
            if not any(name == b"host" for name, _ in event.headers):
                # the proxy answers 400 and closes (HTTP/1.0 without Host): nothing from here
                # on reaches the upstream
                del understood[index:]
                break
            headers = strip_hop_by_hop(event.headers)
            if event.chunked:
                headers.append((b"transfer-encoding", b"chunked"))
            upstream_bytes += client.send(Request(event.method, event.target, headers))
            forwarder = client
        elif type(event) is Data:
            upstream_bytes += forwarder.send(event)
        elif type(event) is EndOfMessage:
            upstream_bytes += forwarder.send(EndOfMessage(event.trailers))
    if not upstream_bytes:
        return
    reparsed = [
        e for e in drain(Connection("server"), [upstream_bytes]) if not isinstance(e, tuple)
    ]
    assert _requests(reparsed) == _requests(understood)


def _merged(events: list[object]) -> list[object]:
    """Data events joined: chunking of bodies may differ with the reads, content may not."""
    merged: list[object] = []
    for event in events:
        if type(event) is Data and merged and type(merged[-1]) is Data:
            merged[-1] = Data(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def _requests(events: list[object]) -> list[tuple[bytes, bytes, bytes]]:
    """Each request as (method, target, body)."""
    found: list[tuple[bytes, bytes, bytes]] = []
    for event in events:
        if type(event) is Request:
            found.append((event.method, event.target, b""))
        elif type(event) is Data and found:
            method, target, body = found[-1]
            found[-1] = (method, target, body + event.data)
    return found


@BOUNDED
@given(streams)
def test_trusted_send_of_parsed_fields_writes_what_a_checked_send_writes(data: bytes) -> None:
    """The forwarding fast path skips re-validating fields our parser produced; it must
    write byte for byte what the checked path writes."""
    for event in drain(Connection("server"), [data]):
        if type(event) is not Request or not any(n == b"host" for n, _ in event.headers):
            continue
        headers = strip_hop_by_hop(event.headers)
        forwarded = Request(event.method, event.target, headers)
        assert Connection("client").send(forwarded, trusted=True) == Connection("client").send(
            forwarded
        )


ALLOWED_SETS = {"tchar": TCHAR, "hexdig": HEXDIG, "value": VALUE_OK, "host": HOST_OK}


@BOUNDED
@given(
    st.binary(max_size=64) | st.sampled_from([bytes(range(256)), b"", TCHAR, HOST_OK]),
    st.sampled_from(sorted(ALLOWED_SETS)),
)
def test_any_outside_agrees_with_deleting_the_allowed_bytes(data: bytes, name: str) -> None:
    """The table check the codec validates with says what ``translate(None, allowed)`` said
    before it: whether any byte of ``data`` is outside the set."""
    allowed = ALLOWED_SETS[name]
    assert any_outside(data, outside_table(allowed)) == bool(data.translate(None, allowed))


def test_each_byte_outside_a_set_is_found_alone_and_among_allowed_ones() -> None:
    table = outside_table(TCHAR)
    for byte in range(256):
        alone = bytes([byte])
        assert any_outside(alone, table) == (byte not in TCHAR), alone
        assert any_outside(b"GET" + alone + b"POST", table) == (byte not in TCHAR), alone
