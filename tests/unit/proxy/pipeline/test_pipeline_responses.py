"""How a response travels from the upstream try to the client: head, body at the client's
pace, trailers, end; an upstream that goes away mid-response (flag UC or UR, ``sink.cut``,
never retried); and gRPC responses, whose status may decide a retry."""

from __future__ import annotations

from typing import Any

import pytest
from support.pipeline_fakes import (
    Answer,
    FakeSink,
    FakeTryFactory,
    PipelineHarness,
    Script,
    grpc_call,
    mesh_yaml,
)
from support.virtual_time import VirtualTimeLoop

from proxy.outcomes import Flag
from proxy.pipeline import grpc
from proxy.pipeline.errors import UpstreamCut
from proxy.pipeline.forward import UPSTREAM_RQ_TOTAL
from proxy.pipeline.retries import UPSTREAM_RQ_RETRY

START = 1000.0
GRPC = [(b"content-type", b"application/grpc")]
MESSAGE = b"\x00\x00\x00\x00\x03abc"
# Retries for everything that can be retried: a cut must still not be.
EAGER = {"attempts": 3, "retry_on": "5xx,reset,connect-failure,unavailable"}
SPARE = [Answer(200, GRPC, [MESSAGE], trailers=[(b"grpc-status", b"0")])] * 3


def harness(loop: VirtualTimeLoop, *scripts: Script, **route: Any) -> PipelineHarness:
    route = {"name": "all", "retries": EAGER, **route}
    return PipelineHarness(loop, mesh_yaml([route]), FakeTryFactory(*scripts, *SPARE))


def test_a_response_is_relayed_whole(loop: VirtualTimeLoop) -> None:
    """Head, every body part as the upstream sent it, the trailers, the end: the try is
    finished (its connection reusable), not reset."""
    answer = Answer(200, [(b"content-type", b"text/plain")], [b"one ", b"two"], part_delay=1.0,
                    trailers=[(b"x-sum", b"7")])  # fmt: skip
    h = harness(loop, answer)

    result = h.run()

    sink = result.sink
    assert (sink.status, sink.parts, sink.trailers) == (200, [b"one ", b"two"], [(b"x-sum", b"7")])
    assert sink.ended and sink.complete and sink.cuts == []
    assert sink.part_times == [START + 1.0, START + 2.0]
    assert sink.response_bytes == len(b"one two")
    attempt = h.tries.tries[0]
    assert attempt.finished_at == START + 2.0 and not attempt.aborted
    assert (result.exchange.status, result.flags, result.exchange.head_sent) == (200, [], True)


def test_a_response_without_body_ends_with_its_head(loop: VirtualTimeLoop) -> None:
    """A 204 whose stream ended with its head is one ``send_head(end=True)``."""
    h = harness(loop, Answer(204))

    result = h.run()

    assert result.sink.head is not None and result.sink.head[0] == 204 and result.sink.head[2]
    assert result.sink.parts == [] and not result.sink.ended


def test_the_body_waits_for_a_slow_client(loop: VirtualTimeLoop) -> None:
    """Backpressure: with a client taking 2 s per part, the next part is read from the
    upstream only once the client took the previous one."""
    h = harness(loop, Answer(200, body=[b"1", b"2", b"3"]))
    sink = FakeSink(part_delay=2.0)

    h.run(sink=sink)

    assert sink.part_times == [START, START + 2.0, START + 4.0]
    assert h.tries.tries[0].finished_at == START + 6.0


@pytest.mark.parametrize(
    "flag", [Flag.UPSTREAM_CONNECTION_TERMINATION, Flag.UPSTREAM_REMOTE_RESET], ids=["UC", "UR"]
)
def test_an_upstream_cut_mid_response_cuts_the_client_and_is_not_retried(
    loop: VirtualTimeLoop, flag: str
) -> None:
    """The upstream goes away after the head and one part: the client's response is cut
    (``sink.cut`` with the reason), the exchange flagged so, and although the policy would
    retry resets the request is not tried again (part of the answer was forwarded)."""
    answer = Answer(200, body=[b"a", b"b", b"c"], part_delay=1.0, cut_after=1, cut_flag=flag)
    h = harness(loop, answer)

    result = h.run()

    assert result.sink.parts == [b"a"]
    assert result.sink.cuts == [flag] and result.sink.cut_at == START + 2.0
    assert not result.sink.ended and not result.sink.complete
    assert result.flags == [flag]
    assert result.exchange.status == 200 and result.exchange.tries == 1
    assert h.counter(UPSTREAM_RQ_RETRY) == 0 and h.tries.left == len(SPARE)
    assert h.in_flight() == []


def test_an_upstream_cut_after_the_client_left_is_not_flagged(loop: VirtualTimeLoop) -> None:
    """When the client is already gone as the cut is noticed, no cut is reported nor flagged
    (the adapter flags the client's leaving instead)."""
    answer = Answer(200, body=[b"a", b"b"], part_delay=1.0, cut_after=1)
    h = harness(loop, answer)
    sink = FakeSink()
    loop.call_at(START + 1.5, sink.leave)

    result = h.run(sink=sink)

    assert sink.parts == [b"a"] and sink.cuts == [] and result.flags == []
    assert h.in_flight() == []


# --- gRPC responses ----------------------------------------------------------------------


def test_a_grpc_response_relays_its_status_from_the_trailers(loop: VirtualTimeLoop) -> None:
    """A successful call: message then trailers; the exchange reports the trailers' status."""
    answer = Answer(200, GRPC, [MESSAGE], trailers=[(b"grpc-status", b"0")])
    h = harness(loop, answer)

    result = h.run(grpc_call(), grpc=True)

    assert (result.sink.body, result.sink.trailers) == (MESSAGE, [(b"grpc-status", b"0")])
    assert result.exchange.grpc_status == "0"


def test_a_grpc_trailers_only_error_is_relayed_when_not_retried(loop: VirtualTimeLoop) -> None:
    """A Trailers-Only NOT_FOUND (5), which no policy retries, reaches the client as it came."""
    h = harness(loop, Answer(200, [*GRPC, (b"grpc-status", b"5")]))

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.head is not None and result.sink.head[2]
    assert result.sink.header(b"grpc-status") == [b"5"]
    assert result.exchange.grpc_status == "5" and result.exchange.tries == 1


RESET_AFTER_HEAD = Answer(200, GRPC, cut_after=0, cut_flag=Flag.UPSTREAM_REMOTE_RESET)


def test_a_grpc_stream_reset_before_any_message_is_retried(loop: VirtualTimeLoop) -> None:
    """The upstream resets the call's stream right after its head: nothing reached the client
    yet (the pipeline holds a gRPC head until the first message), so it is a reset before the
    response like any other, and ``retry_on: reset`` tries the call again."""
    h = harness(loop, RESET_AFTER_HEAD)

    result = h.run(grpc_call(), grpc=True)

    assert result.exchange.tries == 2
    assert result.exchange.grpc_status == "0"
    assert result.sink.body == MESSAGE
    assert result.sink.cuts == [] and result.flags == []


def test_a_grpc_stream_reset_before_any_message_is_answered(loop: VirtualTimeLoop) -> None:
    """A policy that names a gRPC status waits for the first message or the status before
    answering; when the stream is reset instead and no retry is left, the client gets an
    answer, UNAVAILABLE, rather than an ``UpstreamCut`` out of ``forward`` (which the HTTP/2
    adapter would log as a bug and answer with a stream reset INTERNAL_ERROR)."""
    h = harness(loop, RESET_AFTER_HEAD, retries={"attempts": 0, "retry_on": "unavailable"})

    try:
        result = h.run(grpc_call(), grpc=True)
    except UpstreamCut:
        pytest.fail("UpstreamCut escaped Pipeline.forward")

    assert result.sink.head is not None and result.sink.head[2], "not Trailers-Only"
    assert result.sink.header(b"grpc-status") == [str(grpc.UNAVAILABLE).encode()]
    assert len(result.flags) == 1
    assert result.flags[0] in (Flag.UPSTREAM_CONNECTION_TERMINATION, Flag.UPSTREAM_REMOTE_RESET)
    assert h.tries.tries[0].aborted
    assert h.in_flight() == []


def test_a_grpc_stream_reset_after_a_forwarded_head_cuts_the_call(loop: VirtualTimeLoop) -> None:
    """With no gRPC status to retry on, the head goes to the client as it comes (as through
    Envoy); a reset after it can only be passed on: the client's stream is cut, flagged as
    the upstream's reset."""
    h = harness(loop, RESET_AFTER_HEAD, retries={"attempts": 0})

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.head is not None and not result.sink.head[2]
    assert result.sink.cuts == [Flag.UPSTREAM_REMOTE_RESET]
    assert result.flags == [Flag.UPSTREAM_REMOTE_RESET]
    assert h.tries.tries[0].aborted
    assert h.in_flight() == []


def test_a_grpc_head_reaches_the_client_when_it_comes(loop: VirtualTimeLoop) -> None:
    """A server-streaming call whose server sends its head (initial metadata) at once and a
    first message 5 s later, on a route whose ``retry_on`` names no gRPC status: the client
    should see the head when the server sent it, as through Envoy, not 5 s later."""
    answer = Answer(200, GRPC, [MESSAGE], part_delay=5.0, trailers=[(b"grpc-status", b"0")])
    h = harness(loop, answer, retries={"attempts": 2, "retry_on": "connect-failure"})

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.body == MESSAGE
    assert result.sink.head_at == START


def test_a_grpc_head_is_held_for_the_first_message(loop: VirtualTimeLoop) -> None:
    """What the pipeline does today (forward.py: "a status in trailers right after the head
    decides a retry too"): the head goes out with the first message, 5 s after it came."""
    answer = Answer(200, GRPC, [MESSAGE], part_delay=5.0, trailers=[(b"grpc-status", b"0")])
    h = harness(loop, answer, retries={"attempts": 2, "retry_on": "unavailable"})

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.head_at == START + 5.0 == result.sink.part_times[0]
    assert h.counter(UPSTREAM_RQ_TOTAL) == 1
    assert result.exchange.grpc_status == "0"
    assert grpc.status_of(result.sink.trailers) == 0
