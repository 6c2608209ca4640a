"""The HTTP/2 downstream path fuzzed (issue 19, case 6): whatever frames a client sends after
the connection preface, the sidecar's HTTP/2 connection manager ends that connection alone.

Each example is a client on a real loopback socket that sends the preface, optionally a valid
request head (so later frames meet an open stream), then frames of any type, flags, stream id
and payload (most of them invalid: lengths that lie, padding past the end, SETTINGS of odd
sizes, WINDOW_UPDATEs of zero, CONTINUATION without HEADERS, PRIORITY on stream 0, ...), and
then a FIN. Pass: the manager finishes the connection within the scenario's deadline (no
hang: its run task is done), nothing reaches the event loop's exception handler (no uncaught
error), and a well-formed request on a new connection to the same sidecar is answered. A
crasher found here is kept as an ``@example``.
"""

from __future__ import annotations

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .loopback import (
    PREFACE,
    H1Upstream,
    Sidecar,
    Wire,
    answer_ok,
    h2_client,
    h2_request,
    mesh_yaml,
    raw_frame,
    run,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,  # each example is bounded by run()'s own timeout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF, 0xFFFFFFFF])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 12))  # 0-9 defined, 10-12 unknown extension types
    flags = draw(st.integers(0, 255))
    payload = draw(st.binary(max_size=48))
    lie = draw(st.none() | st.integers(0, 70))
    return raw_frame(kind, flags, draw(STREAM_IDS), payload, lie)


HEAD = hpack.Encoder().encode(h2_request(b"GET", b"/fuzz"))
OPEN_STREAM = raw_frame(0x1, 0x4, 1, HEAD)  # HEADERS, END_HEADERS, stream 1 left open


async def fuzzed_connection(opening: bytes, garbage: list[bytes]) -> None:
    async with (
        H1Upstream(answer_ok) as upstream,
        Sidecar(mesh_yaml(upstream.port), downstream="http2") as sidecar,
    ):
        wire = await Wire.connect(sidecar.address)
        try:
            await wire.send(PREFACE + raw_frame(0x4, 0, 0, b"") + opening + b"".join(garbage))
            wire.shutdown_write()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sidecar already gave up on this client: what is asserted below
        await wire.read_to_end()
        wire.close()
        await sidecar.finished(1)
        for task in sidecar.runs:
            assert task.exception() is None, task.exception()
        client = await h2_client(sidecar.address)
        stream_id = client.request(h2_request(b"GET", b"/after"))
        await client.until(lambda: client.streams[stream_id].ended)
        assert client.streams[stream_id].header(b":status") == b"200"


@FUZZ
@given(opening=st.sampled_from([b"", OPEN_STREAM]), garbage=st.lists(frames(), max_size=12))
def test_any_frames_after_the_preface_end_that_connection_alone(
    opening: bytes, garbage: list[bytes]
) -> None:
    run(lambda: fuzzed_connection(opening, garbage))


@FUZZ
@given(garbage=st.binary(max_size=200))
def test_any_bytes_after_the_preface_end_that_connection_alone(garbage: bytes) -> None:
    run(lambda: fuzzed_connection(b"", [garbage]))
