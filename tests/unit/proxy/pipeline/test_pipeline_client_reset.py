"""A client that leaves in the middle of its request, in every phase of it.

The adapters model a reset as the cancellation of the request's task (``_downstream_lost`` in
http1_downstream.py, ``stream_reset`` in http2_downstream.py); a write to a client that is gone
raises ``DownstreamGone``. Either way the try in flight must be reset at once, no retry may
follow, and nothing may stay counted in flight (host.active_requests, the cluster's
requests_active and retries_active)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support.pipeline_fakes import (
    Answer,
    ConnectFailure,
    FakeBody,
    FakeSink,
    FakeTryFactory,
    Hang,
    PipelineHarness,
    Result,
    Script,
    mesh_yaml,
    post,
)
from support.virtual_time import VirtualTimeLoop

from proxy.pipeline.errors import DownstreamGone
from proxy.pipeline.retries import UPSTREAM_RQ_RETRY

START = 1000.0
# A policy that would retry anything: a try made after the client left would show.
EAGER = {"attempts": 3, "retry_on": "5xx,reset,connect-failure", "per_try_timeout": "30s"}
SPARE = [Answer(200, body=[b"for nobody"])] * 3


def harness(loop: VirtualTimeLoop, *scripts: Script, **retries: Any) -> PipelineHarness:
    route = {"name": "all", "retries": {**EAGER, **retries}}
    return PipelineHarness(loop, mesh_yaml([route]), FakeTryFactory(*scripts, *SPARE))


def reset_when(
    h: PipelineHarness,
    condition: Callable[[], bool] | float,
    *,
    body: FakeBody | None = None,
    sink: FakeSink | None = None,
) -> tuple[Result, list[str]]:
    """Start a request and reset it as the adapters do (cancel its task) once ``condition``
    holds (polled as the loop runs), or after that many virtual seconds. Returns the request
    and what was in flight just before the reset."""
    task, result = h.start(post(), body=body or FakeBody([b"body"]), sink=sink)

    async def client() -> list[str]:
        if isinstance(condition, float):
            await asyncio.sleep(condition)
        else:
            for _ in range(1000):
                if condition():
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("the phase to reset in never came")
        before = h.in_flight()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(120)  # long enough for any retry, back-off or timer left behind
        return before

    return result, h.loop.run_until_complete(client())


def assert_reset_cleanly(h: PipelineHarness, result: Result, before: list[str]) -> None:
    """The last try was reset at the reset's instant, no try followed, nothing leaked."""
    assert before, "nothing was in flight before the reset: the check below proves nothing"
    assert h.in_flight() == []
    last = h.tries.tries[-1]
    assert last.aborted and not last.finished_at
    assert h.tries.left == len(SPARE), "a try was made after the client left"
    assert result.sink.local is None and result.sink.cuts == []
    assert not result.sink.ended


def test_a_reset_while_connecting(loop: VirtualTimeLoop) -> None:
    """The client leaves while the upstream connect is pending: the connect is abandoned."""
    h = harness(loop, Hang("open"))

    result, before = reset_when(h, 0.5)

    attempt = h.tries.tries[0]
    assert attempt.aborted_at == START + 0.5 and attempt.request is None
    assert_reset_cleanly(h, result, before)


def test_a_reset_while_sending_the_body(loop: VirtualTimeLoop) -> None:
    """The client stalls after the first part of its upload and then resets: the upstream
    got that part only, and its try is reset."""
    h = harness(loop, Answer())
    body = FakeBody([b"part one", b"part two"], stall_after=1)

    result, before = reset_when(h, 0.5, body=body)

    attempt = h.tries.tries[0]
    assert bytes(attempt.body_received) == b"part one" and attempt.sent_at is None
    assert_reset_cleanly(h, result, before)


def test_a_reset_while_waiting_for_the_head(loop: VirtualTimeLoop) -> None:
    """The request is all sent and the upstream still thinking: its try is reset."""
    h = harness(loop, Answer(head_delay=10.0))

    result, before = reset_when(h, 2.0)

    attempt = h.tries.tries[0]
    assert attempt.sent_at == START and attempt.answered_at is None
    assert attempt.aborted_at == START + 2.0
    assert_reset_cleanly(h, result, before)


def test_a_reset_during_the_backoff_between_tries(loop: VirtualTimeLoop) -> None:
    """The first try failed and the retry waits out its back-off (up to 10 s here) when the
    client leaves: the retry is never made, and the retry slot it held is given back."""
    h = harness(loop, ConnectFailure(), backoff_base="10s", backoff_max="10s")
    first_failed: list[Any] = []

    def in_backoff() -> bool:
        if h.tries.tries and h.tries.tries[0].closed and not first_failed:
            first_failed.append(h.cluster().retries_active)
        return bool(first_failed)

    result, before = reset_when(h, in_backoff)

    assert first_failed == [1], "the request was not waiting for a retry"
    assert len(h.tries.tries) == 1
    assert result.exchange.retries == 1 and h.counter(UPSTREAM_RQ_RETRY) == 1
    assert h.in_flight() == []
    assert any("retries_active=1" in leak for leak in before)
    assert h.tries.left == len(SPARE)


def test_a_reset_while_the_response_streams(loop: VirtualTimeLoop) -> None:
    """The client got the head and a first part, then resets: the upstream's try is reset
    (not finished), the rest of the body is never read, the response not ended."""
    h = harness(loop, Answer(200, body=[b"a", b"b", b"c"], part_delay=1.0))

    result, before = reset_when(h, 1.5)

    assert result.sink.head is not None and result.sink.parts == [b"a"]
    attempt = h.tries.tries[0]
    assert attempt.aborted_at == START + 1.5 and attempt.parts_read == 1
    assert_reset_cleanly(h, result, before)


def test_a_reset_while_a_slow_client_reads(loop: VirtualTimeLoop) -> None:
    """The upstream is faster than the client: the pipeline waits on the client's
    backpressure when the client resets; the try is reset there."""
    h = harness(loop, Answer(200, body=[b"a", b"b"]))
    sink = FakeSink(part_delay=5.0)

    result, before = reset_when(h, 2.0, sink=sink)

    assert sink.parts == [b"a"]
    assert h.tries.tries[0].aborted_at == START + 2.0
    assert_reset_cleanly(h, result, before)


# --- a client found gone by a write or a read --------------------------------------------


def run_to_gone(h: PipelineHarness, body: FakeBody, sink: FakeSink) -> Result:
    result = h.run(post(), body=body, sink=sink)
    assert isinstance(result.error, DownstreamGone)
    return result


def test_a_client_gone_mid_upload_ends_the_request(loop: VirtualTimeLoop) -> None:
    """The client's connection closes after the first part of its body (``Http1Body``
    raises DownstreamGone): the try is reset, not retried although retries are left."""
    h = harness(loop, Answer())

    result = run_to_gone(h, FakeBody([b"one", b"two"], gone_after=1), FakeSink())

    assert len(h.tries.tries) == 1 and h.tries.tries[0].aborted
    assert h.in_flight() == [] and h.tries.left == len(SPARE)
    assert result.sink.head is None


def test_a_client_gone_before_the_head_ends_the_request(loop: VirtualTimeLoop) -> None:
    """The client's stream is already reset when the head comes (the HTTP/2 sink raises on
    writing it): the try is reset, nothing retried."""
    h = harness(loop, Answer(200, body=[b"a"]))

    run_to_gone(h, FakeBody(), FakeSink(gone=True))

    assert h.tries.tries[0].aborted
    assert h.in_flight() == [] and h.tries.left == len(SPARE)


def test_a_client_gone_mid_response_ends_the_request(loop: VirtualTimeLoop) -> None:
    """Writing a body part finds the client gone: the try is reset, no cut is reported (the
    adapter flags DC), nothing retried."""
    h = harness(loop, Answer(200, body=[b"a", b"b", b"c"]))

    result = run_to_gone(h, FakeBody(), FakeSink(gone_after_parts=1))

    assert result.sink.parts == [b"a"] and result.sink.cuts == []
    assert h.tries.tries[0].aborted and h.tries.tries[0].parts_read == 1
    assert h.in_flight() == [] and h.tries.left == len(SPARE)


def test_a_reset_while_a_retried_response_is_dropped(loop: VirtualTimeLoop) -> None:
    """A 503 is being read off its connection for a retry (10 s here) when the client
    leaves: that try is reset and the retry never made."""
    h = harness(loop, Answer(503, body=[b"busy"], drop_delay=10.0))

    result, before = reset_when(h, 1.0)

    attempt = h.tries.tries[0]
    assert attempt.aborted_at == START + 1.0 and not attempt.dropped
    assert_reset_cleanly(h, result, before)


def test_a_reset_during_an_injected_delay(loop: VirtualTimeLoop) -> None:
    """A client leaving while fault injection delays its request is never forwarded."""
    route = {"name": "slow", "fault": {"delay": {"percentage": 100, "fixed_delay": "5s"}}}
    h = PipelineHarness(loop, mesh_yaml([route]), FakeTryFactory(*SPARE))

    result, before = reset_when(h, 1.0)

    assert before == [] and h.tries.tries == [] and h.in_flight() == []
    assert result.sink.head is None and result.sink.local is None
