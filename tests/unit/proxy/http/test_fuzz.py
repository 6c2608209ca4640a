"""Seeded mutation fuzz: whatever bytes arrive, the codec raises only ProtocolError."""

from __future__ import annotations

import random

from proxy.http.codec import (
    NEED_DATA,
    PAUSED,
    Connection,
    ConnectionClosed,
    EndOfMessage,
    ProtocolError,
    Request,
)

SEED = 20240611
ITERATIONS = 10_000

REQUEST_HEADS = [
    b"GET /a/b?c=d HTTP/1.1\r\nHost: svc.ns:8080\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET http://example.com/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxx",
]
RESPONSE_HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: s\r\n\r\nabc",
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    b"HTTP/1.0 404 Not Found\r\n\r\nbody",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
]
INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\x7f",
    b"\xff",
    b";",
    b",",
    b"0",
    b"f",
    b"-",
    b"chunked",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1",
    b"/",
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[pos:pos] = rng.choice(INTERESTING)
        elif op == 2 and b:
            del b[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            b[pos:pos] = bytes([rng.randrange(256)])
        elif op == 4 and b:
            start = rng.randrange(len(b))
            b[pos:pos] = b[start : start + rng.randint(1, 16)]
        else:
            del b[pos:]
    return bytes(b)


def run(conn: Connection, data: bytes, rng: random.Random) -> None:
    pieces = [data] if rng.random() < 0.5 else [data[i : i + 7] for i in range(0, len(data), 7)]
    for piece in [*pieces, b""]:
        if piece:
            conn.receive_data(piece)
        else:
            conn.receive_data(b"")
        for _ in range(100):
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                break


def test_mutated_messages_raise_only_protocol_error() -> None:
    rng = random.Random(SEED)
    outcomes = {"ok": 0, "protocol_error": 0}
    for _ in range(ITERATIONS):
        if rng.random() < 0.6:
            conn = Connection("server")
            data = mutate(rng.choice(REQUEST_HEADS), rng)
        else:
            conn = Connection("client")
            conn.send(Request(b"GET", b"/", [(b"host", b"a")]))
            conn.send(EndOfMessage())
            data = mutate(rng.choice(RESPONSE_HEADS), rng)
        try:
            run(conn, data, rng)
        except ProtocolError as exc:
            assert exc.status_hint in {400, 414, 431, 501, 502, 505}
            outcomes["protocol_error"] += 1
        else:
            outcomes["ok"] += 1
    # the mutations must exercise both paths, or the fuzz proves nothing
    assert outcomes["ok"] > 500 and outcomes["protocol_error"] > 500, outcomes
