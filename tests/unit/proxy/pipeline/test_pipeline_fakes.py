"""The fakes the pipeline tests stand on behave as the real adapters they replace: the body
is kept for a replay up to REPLAY_LIMIT as ``Http1Body`` keeps it, a try that was never
scripted fails the test, an abort after ``finish`` does nothing, and a gone client refuses
writes."""

from __future__ import annotations

import pytest
from support.pipeline_fakes import (
    Answer,
    FakeBody,
    FakeSink,
    FakeTryFactory,
    PipelineHarness,
    mesh_yaml,
)
from support.virtual_time import VirtualTimeLoop

from proxy.pipeline.errors import DownstreamGone
from proxy.pipeline.kept_body import REPLAY_LIMIT


async def read_all(body: FakeBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


def test_a_body_replays_what_it_kept(loop: VirtualTimeLoop) -> None:
    """A second pass yields the same bytes from what was kept; past REPLAY_LIMIT nothing is
    kept any more and the body says it cannot be replayed."""
    small = FakeBody([b"a" * 10, b"b" * 10])
    assert loop.run_until_complete(read_all(small)) == loop.run_until_complete(read_all(small))
    assert small.replayable and small.complete and small.passes == 2

    big = FakeBody([b"x" * REPLAY_LIMIT, b"y"])
    assert len(loop.run_until_complete(read_all(big))) == REPLAY_LIMIT + 1
    assert not big.replayable
    assert loop.run_until_complete(read_all(big)) == b""


def test_an_unscripted_try_fails_the_test(loop: VirtualTimeLoop) -> None:
    """A pipeline making more tries than a test scripted does not pass silently."""
    h = PipelineHarness(
        loop, mesh_yaml([{"name": "r", "retries": {"attempts": 1}}]), FakeTryFactory(Answer(503))
    )

    with pytest.raises(AssertionError, match="unexpected try"):
        h.run()


def test_an_abort_after_finish_is_a_no_op(loop: VirtualTimeLoop) -> None:
    """As the interface says, ``abort`` after ``finish`` changes nothing: the fake records
    only resets of live tries."""
    tries = FakeTryFactory(Answer(200, body=[b"x"]))
    h = PipelineHarness(loop, mesh_yaml(), tries)

    h.run()
    tries.tries[0].abort()

    assert tries.tries[0].finished_at is not None and not tries.tries[0].aborted


def test_a_gone_client_refuses_writes(loop: VirtualTimeLoop) -> None:
    """Every write to a client that is gone raises DownstreamGone, as the real sinks do."""
    sink = FakeSink(gone=True)

    with pytest.raises(DownstreamGone):
        sink.send_head(200, [], end=False)
    with pytest.raises(DownstreamGone):
        loop.run_until_complete(sink.send_local(503, [], b"", close=False))
    assert sink.lost and sink.status is None
