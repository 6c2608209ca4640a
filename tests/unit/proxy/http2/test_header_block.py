"""``header_block_pending`` reads h2's frame buffer, which has no public view: these pin what
it sees against the h2 in use, so an h2 upgrade that moves those fields fails here and not as a
request headers timeout that silently never fires."""

from __future__ import annotations

import h2.config
import h2.connection
import hpack

from proxy.http2.endpoint import header_block_pending

from ..filters.loopback import PREFACE, raw_frame

HEAD = hpack.Encoder().encode(
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
)


def server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.receive_data(PREFACE + raw_frame(0x4, 0, 0, b""))
    return conn


def test_a_head_split_over_continuation_frames_is_pending_until_end_headers() -> None:
    conn = server()
    assert not header_block_pending(conn)
    conn.receive_data(raw_frame(0x1, 0x0, 1, HEAD[:5]))  # HEADERS without END_HEADERS
    assert header_block_pending(conn)
    conn.receive_data(raw_frame(0x9, 0x0, 1, HEAD[5:8]))  # CONTINUATION, not the last
    assert header_block_pending(conn)
    events = conn.receive_data(raw_frame(0x9, 0x4, 1, HEAD[8:]))  # END_HEADERS
    assert not header_block_pending(conn)
    assert any(type(event).__name__ == "RequestReceived" for event in events)


def test_the_first_bytes_of_a_headers_frame_are_pending_and_of_a_data_frame_not() -> None:
    conn = server()
    whole = raw_frame(0x1, 0x4, 1, HEAD)
    conn.receive_data(whole[:6])  # its frame header, in part
    assert header_block_pending(conn)
    conn.receive_data(whole[6:])
    assert not header_block_pending(conn)
    data = raw_frame(0x0, 0x1, 1, b"x" * 100)
    conn.receive_data(data[:20])  # a DATA frame on its way: a body, not a head
    assert not header_block_pending(conn)
