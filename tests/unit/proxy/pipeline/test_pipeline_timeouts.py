"""The pipeline's deadlines on virtual time: the per-try timeout (a hanging try aborted at
exactly ``per_try_timeout``, then retried or answered 504 UT), the route timeout (504 UT before
the response head, the response cut after it), a gRPC client's ``grpc-timeout`` tightening
it, and no deadline at all when none is configured."""

from __future__ import annotations

from typing import Any

import pytest
from support.pipeline_fakes import (
    Answer,
    FakeBody,
    FakeTryFactory,
    Hang,
    PipelineHarness,
    get,
    grpc_call,
    mesh_yaml,
    post,
)
from support.virtual_time import VirtualTimeLoop

from proxy.outcomes import Flag
from proxy.pipeline import grpc, local_reply
from proxy.pipeline.forward import (
    UPSTREAM_RQ_PER_TRY_TIMEOUT,
    UPSTREAM_RQ_TIMEOUT,
    UPSTREAM_RQ_TOTAL,
)
from proxy.pipeline.retries import UPSTREAM_RQ_RETRY

START = 1000.0  # VirtualTimeLoop's clock at the start of every test
GRPC = [(b"content-type", b"application/grpc")]
UT = Flag.UPSTREAM_REQUEST_TIMEOUT


def harness(loop: VirtualTimeLoop, tries: FakeTryFactory, **route: Any) -> PipelineHarness:
    return PipelineHarness(loop, mesh_yaml([{"name": "all", **route}]), tries)


# --- per-try timeout ---------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["open", "send", "head"])
def test_a_hanging_try_is_aborted_at_the_per_try_timeout_and_retried(
    loop: VirtualTimeLoop, phase: str
) -> None:
    """A try stuck connecting, sending or waiting for its head is reset exactly 1.5 s after it
    started; under ``retry_on: 5xx`` a second try follows (after its back-off) and answers."""
    tries = FakeTryFactory(Hang(phase), Answer(200, body=[b"second"]))
    retries = {"attempts": 1, "retry_on": "5xx", "per_try_timeout": "1.5s"}
    h = harness(loop, tries, retries=retries)

    result = h.run()

    first, second = tries.tries
    assert first.aborted_at == START + 1.5
    assert second.opened_at is not None and START + 1.5 <= second.opened_at < START + 1.525
    assert (result.sink.status, result.sink.body) == (200, b"second")
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 1
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == 0
    assert h.in_flight() == []


def test_a_per_try_timeout_not_retried_answers_504_ut(loop: VirtualTimeLoop) -> None:
    """``retry_on: connect-failure`` does not cover a per-try timeout: the client gets 504 UT
    at the instant the only try is aborted."""
    tries = FakeTryFactory(Hang(), Answer(200))
    retries = {"attempts": 2, "retry_on": "connect-failure", "per_try_timeout": "2s"}
    h = harness(loop, tries, retries=retries)

    result = h.run()

    assert (result.sink.status, result.sink.body) == (504, local_reply.TIMEOUT.body)
    assert result.flags == [UT]
    assert result.sink.answered_at == tries.tries[0].aborted_at == START + 2.0
    assert len(tries.tries) == 1
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 1
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == 0


def test_per_try_timeouts_past_the_attempts_answer_504_ut_urx(loop: VirtualTimeLoop) -> None:
    """Every try hanging: each is aborted after its own second, then 504 with UT and URX."""
    tries = FakeTryFactory(Hang(), Hang(), Hang())
    retries = {"attempts": 2, "retry_on": "reset", "per_try_timeout": "1s"}
    h = harness(loop, tries, retries=retries)

    result = h.run()

    assert result.sink.status == 504
    assert set(result.flags) == {UT, Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED}
    for attempt in tries.tries:
        assert attempt.aborted_at == attempt.opened_at + 1.0  # type: ignore[operator]
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 3
    assert h.in_flight() == []


def test_the_per_try_timeout_stops_at_the_response_head(loop: VirtualTimeLoop) -> None:
    """The per-try timeout bounds the wait for the head only: a body streaming for longer
    than it reaches the client whole."""
    body = [b"a", b"b", b"c"]
    tries = FakeTryFactory(Answer(200, body=body, head_delay=0.5, part_delay=2.0))
    h = harness(loop, tries, retries={"per_try_timeout": "1s"})

    result = h.run()

    assert result.sink.body == b"abc" and result.sink.complete
    assert loop.time() == START + 6.5
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 0
    assert tries.tries[0].finished_at == START + 6.5
    assert not tries.tries[0].aborted


def test_the_per_try_timeout_includes_the_clients_upload(loop: VirtualTimeLoop) -> None:
    """As forward.py documents it, a try's timer runs from its start, so a client uploading
    for longer than ``per_try_timeout`` times out although the upstream answers at once
    (Envoy starts both timers only once the whole request was received)."""
    tries = FakeTryFactory(Answer(200))
    h = harness(loop, tries, retries={"attempts": 0, "per_try_timeout": "1s"})
    body = FakeBody([b"1", b"2", b"3"], part_delay=0.4)

    result = h.run(post(), body=body)

    assert result.sink.status == 504
    assert tries.tries[0].aborted_at == START + 1.0
    assert bytes(tries.tries[0].body_received) == b"12"


# --- route timeout -----------------------------------------------------------------------


def test_the_route_timeout_answers_504_ut_before_the_head(loop: VirtualTimeLoop) -> None:
    """No head within the route's ``timeout``: the try is aborted and the client answered
    504 UT at that very instant; ``upstream_rq_timeout`` counts it."""
    tries = FakeTryFactory(Hang())
    h = harness(loop, tries, timeout="3s")

    result = h.run()

    assert (result.sink.status, result.flags) == (504, [UT])
    assert result.sink.answered_at == tries.tries[0].aborted_at == START + 3.0
    assert result.exchange.duration == 3.0
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == 1
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 0
    assert h.in_flight() == []


def test_the_route_timeout_includes_every_retry(loop: VirtualTimeLoop) -> None:
    """Retries share the route's budget: with 1 s per try and 2.5 s in all, the third try is
    cut at 2.5 s and the client gets 504 UT then, although retries were left."""
    tries = FakeTryFactory(Hang(), Hang(), Hang(), Answer(200))
    retries = {"attempts": 5, "retry_on": "5xx", "per_try_timeout": "1s"}
    h = harness(loop, tries, timeout="2.5s", retries=retries)

    result = h.run()

    assert result.sink.status == 504 and result.sink.answered_at == START + 2.5
    assert len(tries.tries) == 3
    assert tries.tries[2].aborted_at == START + 2.5
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 2
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == 1
    assert h.counter(UPSTREAM_RQ_RETRY) == 2
    assert Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED not in result.flags


def test_the_route_timeout_after_the_head_cuts_the_response(loop: VirtualTimeLoop) -> None:
    """Past the head it is too late for a 504: at the route timeout the response is cut
    (``sink.cut(UT)``), the exchange keeps the upstream's 200 and is flagged UT, and the try
    is aborted; the client got the parts sent before the deadline only."""
    answer = Answer(200, body=[b"p1", b"p2", b"p3", b"p4"], head_delay=0.5, part_delay=1.0)
    tries = FakeTryFactory(answer)
    h = harness(loop, tries, timeout="2s")

    result = h.run()

    assert result.sink.head is not None and result.sink.head[0] == 200
    assert result.sink.local is None
    assert result.sink.parts == [b"p1"]
    assert result.sink.cuts == [UT] and result.sink.cut_at == START + 2.0
    assert not result.sink.ended
    assert (result.exchange.status, result.flags) == (200, [UT])
    assert tries.tries[0].aborted_at == START + 2.0
    assert tries.tries[0].finished_at is None
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == 1


def test_no_timeout_configured_means_no_deadline(loop: VirtualTimeLoop) -> None:
    """Without ``timeout`` or ``per_try_timeout`` an upstream answering after an hour, then
    streaming for another, is waited for: the client gets all of it."""
    answer = Answer(200, body=[b"late", b"r"], head_delay=3600.0, part_delay=1800.0)
    tries = FakeTryFactory(answer)
    h = harness(loop, tries)

    result = h.run()

    assert result.sink.status == 200 and result.sink.body == b"later"
    assert result.sink.head_at == START + 3600.0
    assert loop.time() == START + 3600.0 + 3600.0
    assert h.counter(UPSTREAM_RQ_TIMEOUT) == h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == 0


# --- grpc-timeout ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route_timeout", "grpc_timeout", "deadline"),
    [
        ("10s", b"250m", 0.25),  # the client's deadline is tighter
        ("1s", b"20S", 1.0),  # the route's is
        (None, b"1500000u", 1.5),  # only the client's
        ("2s", b"bogus", 2.0),  # a malformed grpc-timeout is ignored
    ],
)
def test_grpc_timeout_tightens_the_route_timeout(
    loop: VirtualTimeLoop, route_timeout: str | None, grpc_timeout: bytes, deadline: float
) -> None:
    """A gRPC call ends at the tighter of the route's timeout and its ``grpc-timeout``, with a
    Trailers-Only DEADLINE_EXCEEDED (HTTP 200, grpc-status 4) instead of a 504, flagged UT."""
    tries = FakeTryFactory(Hang())
    route = {"timeout": route_timeout} if route_timeout else {}
    h = harness(loop, tries, **route)

    result = h.run(grpc_call((b"grpc-timeout", grpc_timeout)), grpc=True)

    assert result.sink.answered_at == START + deadline
    assert result.sink.head is not None and result.sink.head[2], "not Trailers-Only"
    assert result.sink.status == 200
    assert result.sink.header(b"grpc-status") == [str(grpc.DEADLINE_EXCEEDED).encode()]
    assert result.exchange.grpc_status == str(grpc.DEADLINE_EXCEEDED)
    assert result.flags == [UT]
    assert tries.tries[0].aborted_at == START + deadline


def test_grpc_timeout_binds_only_grpc_calls(loop: VirtualTimeLoop) -> None:
    """A ``grpc-timeout`` header on a request that is not a gRPC call sets no deadline."""
    tries = FakeTryFactory(Answer(200, head_delay=5.0))
    h = harness(loop, tries)

    result = h.run(get(b"/", (b"grpc-timeout", b"100m")))

    assert result.sink.status == 200 and result.sink.head_at == START + 5.0
    assert h.counter(UPSTREAM_RQ_TOTAL) == 1
