"""The pipeline's retries, as a client and the upstreams see them: which failures are tried
again under each ``retry_on``, the attempts limit (URX and the last failure's answer), the
host of a retry, Envoy's full-jitter back-off, the retry budget, the ``max_requests``
breaker, the replay limit of the request body and ``x-envoy-attempt-count``."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
from support.pipeline_fakes import (
    Answer,
    ConnectFailure,
    FakeBody,
    FakeTryFactory,
    Hang,
    PipelineHarness,
    ResetBeforeHead,
    Result,
    Script,
    get,
    grpc_call,
    mesh_yaml,
    post,
)
from support.virtual_time import VirtualTimeLoop

from proxy.outcomes import Flag
from proxy.pipeline import local_reply
from proxy.pipeline.forward import UPSTREAM_RQ_PER_TRY_TIMEOUT, UPSTREAM_RQ_TOTAL
from proxy.pipeline.grpc import GRPC_RETRY_ON
from proxy.pipeline.kept_body import REPLAY_LIMIT
from proxy.pipeline.retries import (
    UPSTREAM_RQ_PENDING_OVERFLOW,
    UPSTREAM_RQ_RETRY,
    UPSTREAM_RQ_RETRY_OVERFLOW,
    UPSTREAM_RQ_RETRY_SUCCESS,
)

GRPC = [(b"content-type", b"application/grpc")]
GRPC_OK = Answer(200, GRPC, [b"\x00\x00\x00\x00\x02hi"], trailers=[(b"grpc-status", b"0")])


def harness(
    loop: VirtualTimeLoop,
    tries: FakeTryFactory,
    retries: dict[str, Any] | None = None,
    *,
    policy: dict[str, Any] | None = None,
    endpoints: tuple[tuple[str, str], ...] | None = None,
) -> PipelineHarness:
    route: dict[str, Any] = {"name": "all"}
    if retries is not None:
        route["retries"] = retries
    extra = {"endpoints": endpoints} if endpoints is not None else {}
    return PipelineHarness(loop, mesh_yaml([route], policy=policy, **extra), tries)


def gather(loop: VirtualTimeLoop, tasks: list[asyncio.Task[None]]) -> None:
    loop.run_until_complete(asyncio.gather(*tasks))


# --- which failures are retried ----------------------------------------------------------

FAILURES: dict[str, Script] = {
    "500": Answer(500, body=[b"first answer"]),
    "502": Answer(502, body=[b"first answer"]),
    "503": Answer(503, body=[b"first answer"]),
    "504": Answer(504, body=[b"first answer"]),
    "429": Answer(429, body=[b"first answer"]),
    "connect-failure": ConnectFailure(),
    "reset": ResetBeforeHead(),
    "per-try-timeout": Hang("head"),
}
# Envoy's RetryStateImpl: 5xx and gateway-error also retry resets, connect failures and per-try
# timeouts (they would end as a 503/504); "reset" retries every reset, a connect failure too.
RETRIED: dict[str, set[str]] = {
    "5xx": {"500", "502", "503", "504", "connect-failure", "reset", "per-try-timeout"},
    "gateway-error": {"502", "503", "504", "connect-failure", "reset", "per-try-timeout"},
    "connect-failure": {"connect-failure"},
    "reset": {"reset", "per-try-timeout", "connect-failure"},
    "retriable-status-codes": {"429", "500"},
}
# What the client gets when the first failure is not retried.
UNRETRIED_ANSWER: dict[str, tuple[int, bytes, list[str]]] = {
    "connect-failure": (503, local_reply.CONNECT_FAILURE.body, [Flag.UPSTREAM_CONNECTION_FAILURE]),
    "reset": (503, local_reply.UPSTREAM_RESET.body, [Flag.UPSTREAM_CONNECTION_TERMINATION]),
    "per-try-timeout": (504, local_reply.TIMEOUT.body, [Flag.UPSTREAM_REQUEST_TIMEOUT]),
}


def _retry_on_cases() -> list[Any]:
    return [
        pytest.param(
            condition,
            failure,
            failure in retried,
            id=f"{condition}-{failure}",
        )
        for condition, retried in RETRIED.items()
        for failure in FAILURES
    ]


@pytest.mark.parametrize(("retry_on", "failure", "retried"), _retry_on_cases())
def test_retry_on_decides_which_failures_are_tried_again(
    loop: VirtualTimeLoop, retry_on: str, failure: str, retried: bool
) -> None:
    """A first try ending in ``failure`` is tried again (on another host, whose answer the
    client gets) exactly when ``retry_on`` names it; otherwise the client gets the failure:
    the upstream's own response, or the sidecar's 503/504 with Envoy's flag."""
    tries = FakeTryFactory(FAILURES[failure], Answer(200, body=[b"second answer"]))
    retries: dict[str, Any] = {"attempts": 1, "retry_on": retry_on, "per_try_timeout": "1s"}
    if retry_on == "retriable-status-codes":
        retries["retriable_status_codes"] = [429, 500]
    h = harness(loop, tries, retries)

    result = h.run()

    if retried:
        assert (result.sink.status, result.sink.body) == (200, b"second answer")
        assert (result.exchange.tries, result.exchange.retries) == (2, 1)
        assert tries.hosts[0] != tries.hosts[1]
        assert h.counter(UPSTREAM_RQ_RETRY) == h.counter(UPSTREAM_RQ_RETRY_SUCCESS) == 1
        assert result.flags == []
    else:
        expected = (
            UNRETRIED_ANSWER[failure]
            if failure in UNRETRIED_ANSWER
            else (int(failure), b"first answer", [])
        )
        assert (result.sink.status, result.sink.body, result.flags) == expected
        assert (result.exchange.tries, result.exchange.retries) == (1, 0)
        assert tries.left == 1, "a second try was made"
        assert h.counter(UPSTREAM_RQ_RETRY) == 0
    assert h.counter(UPSTREAM_RQ_TOTAL) == len(tries.tries)
    assert h.counter(UPSTREAM_RQ_PER_TRY_TIMEOUT) == (failure == "per-try-timeout")
    assert h.in_flight() == []


def _grpc_failure(code: int, where: str) -> Answer:
    status = [(b"grpc-status", str(code).encode()), (b"grpc-message", b"no")]
    if where == "head":  # Trailers-Only: the status in the head, which ends the stream
        return Answer(200, GRPC + status)
    return Answer(200, GRPC, trailers=status)  # a head, then trailers at once


GRPC_CASES = [
    *(
        pytest.param(name, code, where, True, id=f"{name}-in-{where}")
        for name, code in GRPC_RETRY_ON.items()
        for where in ("head", "trailers")
    ),
    pytest.param("unavailable", 0, "head", False, id="ok-is-never-retried"),
    pytest.param(",".join(GRPC_RETRY_ON), 2, "head", False, id="unknown-is-not-retriable"),
    pytest.param("cancelled", 14, "head", False, id="unavailable-not-named"),
    pytest.param("5xx", 14, "trailers", False, id="5xx-does-not-cover-grpc-statuses"),
]


@pytest.mark.parametrize(("retry_on", "code", "where", "retried"), GRPC_CASES)
def test_a_grpc_status_is_retried_when_retry_on_names_it(
    loop: VirtualTimeLoop, retry_on: str, code: int, where: str, retried: bool
) -> None:
    """On a gRPC call (HTTP 200 whatever happened) the gRPC status decides: in the head
    (Trailers-Only) or in trailers right after it, retried when its name is in ``retry_on``;
    the client then sees the second call's status, else the first's."""
    tries = FakeTryFactory(_grpc_failure(code, where), GRPC_OK)
    h = harness(loop, tries, {"attempts": 1, "retry_on": retry_on})

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.status == 200
    if retried:
        assert result.exchange.tries == 2
        assert result.exchange.grpc_status == "0"
        assert result.sink.trailers == [(b"grpc-status", b"0")]
        assert result.sink.body == b"\x00\x00\x00\x00\x02hi"
    else:
        assert result.exchange.tries == 1
        assert result.exchange.grpc_status == str(code)
        relayed = result.sink.headers if where == "head" else result.sink.trailers
        assert (b"grpc-status", str(code).encode()) in relayed
    assert result.sink.complete


def test_a_grpc_status_is_not_retried_on_a_plain_http_request(loop: VirtualTimeLoop) -> None:
    """``grpc-status`` in a response to a request that is not a gRPC call means nothing: the
    response is forwarded as it is, even when ``retry_on`` names that status."""
    tries = FakeTryFactory(_grpc_failure(14, "head"), GRPC_OK)
    h = harness(loop, tries, {"attempts": 1, "retry_on": "unavailable"})

    result = h.run(post())

    assert result.exchange.tries == 1
    assert result.sink.header(b"grpc-status") == [b"14"]
    assert result.exchange.grpc_status == ""


def test_a_grpc_status_after_a_message_is_not_retried(loop: VirtualTimeLoop) -> None:
    """Once a message came, the call cannot be tried again (the client gets the message): an
    ``unavailable`` in the trailers after it is the client's answer."""
    message = b"\x00\x00\x00\x00\x01m"
    failing = Answer(200, GRPC, [message], trailers=[(b"grpc-status", b"14")])
    tries = FakeTryFactory(failing, GRPC_OK)
    h = harness(loop, tries, {"attempts": 1, "retry_on": "unavailable"})

    result = h.run(grpc_call(), grpc=True)

    assert result.exchange.tries == 1
    assert result.sink.body == message
    assert result.sink.trailers == [(b"grpc-status", b"14")]
    assert result.exchange.grpc_status == "14"


# --- the attempts limit ------------------------------------------------------------------


def test_the_last_of_the_attempts_answers_with_urx(loop: VirtualTimeLoop) -> None:
    """``attempts: 2`` is three tries; when all three fail the client gets the last one's
    answer (the upstream's own 500, not a local reply), flagged URX; no fourth try."""
    tries = FakeTryFactory(
        Answer(503, body=[b"one"]),
        Answer(502, body=[b"two"]),
        Answer(500, body=[b"three"]),
        Answer(200, body=[b"never"]),
    )
    h = harness(loop, tries, {"attempts": 2, "retry_on": "5xx"})

    result = h.run()

    assert (result.sink.status, result.sink.body) == (500, b"three")
    assert result.flags == [Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED]
    assert (result.exchange.tries, result.exchange.retries) == (3, 2)
    assert tries.left == 1
    assert [t.dropped for t in tries.tries] == [True, True, False]
    assert h.counter(UPSTREAM_RQ_RETRY) == 2
    assert h.counter(UPSTREAM_RQ_TOTAL) == 3


def test_a_request_that_exhausted_its_retries_is_no_retry_success(loop: VirtualTimeLoop) -> None:
    """Envoy counts ``upstream_rq_retry_success`` when a retry's outcome is not one to retry;
    a last try's 500 forwarded because the attempts ran out (URX) is a failure, not that."""
    tries = FakeTryFactory(Answer(503), Answer(502), Answer(500))
    h = harness(loop, tries, {"attempts": 2, "retry_on": "5xx"})

    result = h.run()

    assert result.flags == [Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED]
    assert h.counter(UPSTREAM_RQ_RETRY_SUCCESS) == 0


def test_connect_failures_past_the_attempts_answer_503_uf_urx(loop: VirtualTimeLoop) -> None:
    """Every try failing to connect: the client gets Envoy's connect-failure 503, flagged
    with the failure (UF) and the exhausted retries (URX)."""
    tries = FakeTryFactory(*[ConnectFailure()] * 3)
    h = harness(loop, tries, {"attempts": 2, "retry_on": "connect-failure"})

    result = h.run()

    assert (result.sink.status, result.sink.body) == (503, local_reply.CONNECT_FAILURE.body)
    assert set(result.flags) == {
        Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED,
        Flag.UPSTREAM_CONNECTION_FAILURE,
    }
    assert len(tries.tries) == 3
    assert h.in_flight() == []


def test_attempts_zero_never_retries_and_never_flags_urx(loop: VirtualTimeLoop) -> None:
    """``attempts: 0`` turns retries off: one try, its 503 forwarded, no URX (no retry was
    exhausted)."""
    tries = FakeTryFactory(Answer(503, body=[b"busy"]), Answer(200))
    h = harness(loop, tries, {"attempts": 0})

    result = h.run()

    assert (result.sink.status, result.sink.body, result.flags) == (503, b"busy", [])
    assert len(tries.tries) == 1


# --- where a retry goes ------------------------------------------------------------------


def test_a_retry_goes_to_a_host_not_tried_yet(loop: VirtualTimeLoop) -> None:
    """With ring hash every request of one client lands on the same host, yet each retry of
    a request goes to a host that request has not tried."""
    tries = FakeTryFactory(*[ConnectFailure(), ConnectFailure(), Answer(200)] * 2, Answer(200))
    h = harness(loop, tries, {"attempts": 2}, policy={"load_balancer": "ring_hash"})

    first, second, third = h.run(), h.run(), h.run()

    assert first.sink.status == second.sink.status == third.sink.status == 200
    one, two = tries.hosts[0:3], tries.hosts[3:6]
    assert len(set(one)) == 3 and len(set(two)) == 3
    assert one[0] == two[0] == tries.hosts[6], "the hash no longer picks the client's host"


def test_a_retry_reuses_the_only_host(loop: VirtualTimeLoop) -> None:
    """With a single endpoint there is nowhere else to go: the retry goes to it again."""
    tries = FakeTryFactory(ConnectFailure(), Answer(200))
    h = harness(loop, tries, {"attempts": 1}, endpoints=(("10.0.0.7", "v1"),))

    result = h.run()

    assert result.sink.status == 200
    assert tries.hosts == ["10.0.0.7", "10.0.0.7"]


# --- back-off ----------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_envoys_bounds(loop: VirtualTimeLoop) -> None:
    """The wait before retry n is uniform in [0, min(base x 2^(n-1), max)): base 100 ms and
    max 250 ms give ceilings of 100, 200 and 250 ms. Over 200 requests every wait is inside
    its ceiling, the waits reach both ends of it (full jitter, not Envoy's old "equal" jitter
    nor a fixed delay), and their mean is half the ceiling within 0.1 x ceiling: five
    standard deviations of the mean of 200 uniform samples (ceiling / sqrt(12 x 200))."""
    requests = 200
    scripts = [ConnectFailure(), ConnectFailure(), ConnectFailure(), Answer(200)] * requests
    tries = FakeTryFactory(*scripts)
    retries = {"attempts": 3, "backoff_base": "100ms", "backoff_max": "250ms"}
    h = harness(loop, tries, retries)

    results = [h.run() for _ in range(requests)]

    assert all(r.sink.status == 200 and r.exchange.tries == 4 for r in results)
    ceilings = (0.1, 0.2, 0.25)
    for n, ceiling in enumerate(ceilings):
        waits = [
            tries.tries[4 * i + n + 1].opened_at - tries.tries[4 * i + n].opened_at  # type: ignore[operator]
            for i in range(requests)
        ]
        assert all(0 <= wait < ceiling for wait in waits), (n + 1, max(waits))
        assert max(waits) > 0.9 * ceiling and min(waits) < 0.1 * ceiling
        assert abs(statistics.fmean(waits) - ceiling / 2) < 0.1 * ceiling
    assert h.counter(UPSTREAM_RQ_RETRY) == 3 * requests


# --- the retry budget --------------------------------------------------------------------


def _concurrent(h: PipelineHarness, count: int) -> list[Result]:
    started = [h.start() for _ in range(count)]
    gather(h.loop, [task for task, _ in started])
    return [result for _, result in started]


def test_the_retry_budget_admits_min_retry_concurrency_retries(loop: VirtualTimeLoop) -> None:
    """Envoy's defaults (20 %, at least 3): ten requests failing together while none of their
    retries has finished may start only three retries; the other seven get their own failure
    (503 UC, no URX: no retry was made) and count ``upstream_rq_retry_overflow``."""
    tries = FakeTryFactory(
        *[ResetBeforeHead(delay=1.0)] * 10, *[Answer(200, head_delay=5.0, body=[b"ok"])] * 3
    )
    h = harness(loop, tries, {"attempts": 2, "retry_on": "reset"})

    results = _concurrent(h, 10)

    statuses = sorted(r.sink.status or 0 for r in results)
    assert statuses == [200] * 3 + [503] * 7
    refused = [r for r in results if r.sink.status == 503]
    assert all(r.flags == [Flag.UPSTREAM_CONNECTION_TERMINATION] for r in refused)
    assert all(r.sink.answered_at == 1001.0 for r in refused)
    assert h.counter(UPSTREAM_RQ_RETRY) == 3
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 7
    assert h.in_flight() == []


def test_the_retry_budget_is_a_share_of_the_requests_in_flight(loop: VirtualTimeLoop) -> None:
    """With no minimum, 50 % of four requests in flight is two retries: the third and fourth
    failures are not retried (the fourth sees three requests in flight: 1.5, still below the
    two retries running)."""
    tries = FakeTryFactory(*[ResetBeforeHead(delay=1.0)] * 4, *[Answer(200, head_delay=5)] * 2)
    policy = {"circuit_breaker": {"retry_budget_percent": 50, "min_retry_concurrency": 0}}
    h = harness(loop, tries, {"attempts": 2, "retry_on": "reset"}, policy=policy)

    results = _concurrent(h, 4)

    assert sorted(r.sink.status or 0 for r in results) == [200, 200, 503, 503]
    assert h.counter(UPSTREAM_RQ_RETRY) == 2
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 2
    assert h.in_flight() == []


def test_a_lone_request_under_a_budget_without_minimum_is_never_retried(
    loop: VirtualTimeLoop,
) -> None:
    """20 % of one request in flight rounds down to no retry at all when
    ``min_retry_concurrency`` is 0: the client gets the first failure, counted as overflow."""
    tries = FakeTryFactory(Answer(503, body=[b"busy"]), Answer(200))
    policy = {"circuit_breaker": {"min_retry_concurrency": 0}}
    h = harness(loop, tries, {"attempts": 2}, policy=policy)

    result = h.run()

    assert (result.sink.status, result.sink.body) == (503, b"busy")
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 1
    assert h.counter(UPSTREAM_RQ_RETRY) == 0
    assert len(tries.tries) == 1


def test_a_lone_request_may_use_all_its_attempts_with_one_retry_allowed(
    loop: VirtualTimeLoop,
) -> None:
    """``min_retry_concurrency: 1`` lets one retry be in flight. A lone request's retries run
    one after the other, so each finds none in flight (Envoy releases a retry's slot when its
    outcome is known, RetryStateImpl::resetRetry): all three retries are made."""
    tries = FakeTryFactory(ConnectFailure(), ConnectFailure(), ConnectFailure(), Answer(200))
    policy = {"circuit_breaker": {"min_retry_concurrency": 1}}
    h = harness(loop, tries, {"attempts": 3}, policy=policy)

    result = h.run()

    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 0
    assert result.sink.status == 200
    assert len(tries.tries) == 4


def _two_503s_at_once(loop: VirtualTimeLoop, drop_delay: float) -> PipelineHarness:
    first = Answer(503, head_delay=1.0, drop_delay=drop_delay)
    tries = FakeTryFactory(first, first, Answer(200), Answer(200))
    policy = {"circuit_breaker": {"retry_budget_percent": 0, "min_retry_concurrency": 1}}
    h = harness(loop, tries, {"attempts": 1}, policy=policy)
    _concurrent(h, 2)
    return h


def test_the_budget_applies_to_retried_responses(loop: VirtualTimeLoop) -> None:
    """Two 503s at the same instant with one retry allowed: one is retried, the other is
    forwarded and counted as overflow (dropping a response costs nothing over HTTP/2)."""
    h = _two_503s_at_once(loop, drop_delay=0.0)

    assert h.counter(UPSTREAM_RQ_RETRY) == 1
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 1


def test_the_budget_holds_while_a_retried_response_is_dropped(loop: VirtualTimeLoop) -> None:
    """The same two 503s, but dropping each takes 10 ms (HTTP/1.1 reads the small body to
    keep its connection): still only one retry may start."""
    h = _two_503s_at_once(loop, drop_delay=0.01)

    assert h.counter(UPSTREAM_RQ_RETRY) == 1
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 1


def test_one_refused_retry_is_one_overflow_on_a_grpc_call(loop: VirtualTimeLoop) -> None:
    """A gRPC call answered 503 with ``unavailable``, both named by ``retry_on``, under a
    budget that allows no retry: one retry was refused, so one overflow is counted."""
    failing = Answer(503, [*GRPC, (b"grpc-status", b"14")])
    tries = FakeTryFactory(failing, GRPC_OK)
    policy = {"circuit_breaker": {"min_retry_concurrency": 0}}
    h = harness(loop, tries, {"attempts": 1, "retry_on": "5xx,unavailable"}, policy=policy)

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.status == 503
    assert h.counter(UPSTREAM_RQ_RETRY_OVERFLOW) == 1


# --- the max_requests breaker ------------------------------------------------------------


def test_max_requests_refuses_with_503_uo_without_a_try(loop: VirtualTimeLoop) -> None:
    """``max_requests: 1``: while one request is in flight a second is answered 503 UO at
    once, never tried, and counted ``upstream_rq_pending_overflow``; once the first is done
    a third goes through."""
    tries = FakeTryFactory(Answer(200, head_delay=10.0, body=[b"a"]), Answer(200, body=[b"c"]))
    h = harness(loop, tries, policy={"circuit_breaker": {"max_requests": 1}})

    started = [h.start(), h.start()]
    gather(loop, [task for task, _ in started])
    (_, first), (_, second) = started

    assert (first.sink.status, first.sink.body) == (200, b"a")
    assert (second.sink.status, second.sink.body) == (503, local_reply.OVERFLOW.body)
    assert second.flags == [Flag.UPSTREAM_OVERFLOW]
    assert second.sink.answered_at == 1000.0
    assert second.exchange.tries == 0
    assert h.counter(UPSTREAM_RQ_PENDING_OVERFLOW) == 1
    assert h.counter(UPSTREAM_RQ_TOTAL) == 1

    third = h.run()

    assert (third.sink.status, third.sink.body) == (200, b"c")
    assert h.in_flight() == []


# --- the request body's replay limit ------------------------------------------------------


def _big(size: int) -> list[bytes]:
    half = size // 2
    return [b"a" * half, b"b" * (size - half)]


def test_a_body_within_the_replay_limit_is_sent_again_whole(loop: VirtualTimeLoop) -> None:
    """A body of exactly REPLAY_LIMIT bytes is kept: the retry sends the same bytes."""
    parts = _big(REPLAY_LIMIT)
    tries = FakeTryFactory(Answer(503), Answer(200))
    h = harness(loop, tries)

    result = h.run(post(), body=FakeBody(parts))

    assert result.sink.status == 200
    assert [bytes(t.body_received) for t in tries.tries] == [b"".join(parts)] * 2


def test_a_body_past_the_replay_limit_is_not_retried(loop: VirtualTimeLoop) -> None:
    """One byte more and the body is no longer kept: the 503 that would have been retried is
    the client's answer (no URX: no retry was made), and its reset likewise."""
    for failure, status in ((Answer(503, body=[b"upstream 503"]), 503), (ResetBeforeHead(), 503)):
        tries = FakeTryFactory(failure, Answer(200))
        h = harness(loop, tries, {"attempts": 2, "retry_on": "5xx"})
        body = FakeBody(_big(REPLAY_LIMIT + 1))

        result = h.run(post(), body=body)

        assert result.sink.status == status
        assert not body.replayable
        assert len(tries.tries) == 1
        assert Flag.UPSTREAM_RETRY_LIMIT_EXCEEDED not in result.flags
        assert h.counter(UPSTREAM_RQ_RETRY) == 0


def test_a_big_body_not_read_yet_is_retried(loop: VirtualTimeLoop) -> None:
    """A connect failure happens before any of the body is read, so even a body past the
    replay limit can be retried: the second try receives all of it."""
    parts = _big(REPLAY_LIMIT * 2)
    tries = FakeTryFactory(ConnectFailure(), Answer(200))
    h = harness(loop, tries)

    result = h.run(post(), body=FakeBody(parts))

    assert result.sink.status == 200
    assert [len(t.body_received) for t in tries.tries] == [0, REPLAY_LIMIT * 2]


# --- x-envoy-attempt-count ---------------------------------------------------------------


def test_each_try_carries_its_number_and_the_clients_is_replaced(loop: VirtualTimeLoop) -> None:
    """Tries 1, 2 and 3 carry ``x-envoy-attempt-count`` 1, 2 and 3 (once each: the client's
    own value is dropped), and are otherwise the same request (same ``x-request-id``)."""
    tries = FakeTryFactory(Answer(503), Answer(503), Answer(200))
    h = harness(loop, tries, {"attempts": 2})

    result = h.run(get(b"/a", (b"x-envoy-attempt-count", b"9"), (b"x-user", b"u")))

    assert result.sink.status == 200
    assert [t.header(b"x-envoy-attempt-count") for t in tries.tries] == [[b"1"], [b"2"], [b"3"]]

    def without_count(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [h for h in headers if h[0] != b"x-envoy-attempt-count"]

    first, *others = [without_count(t.request.headers) for t in tries.tries]  # type: ignore[union-attr]
    assert all(other == first for other in others)
    assert (b"x-user", b"u") in first
    assert len(tries.tries[0].header(b"x-request-id")) == 1


def test_a_one_try_request_carries_attempt_count_1(loop: VirtualTimeLoop) -> None:
    """Without a retry the forwarded request still says it is try 1."""
    tries = FakeTryFactory(Answer(200))
    h = harness(loop, tries)

    h.run(get(b"/", (b"x-envoy-attempt-count", b"3")))

    assert tries.tries[0].header(b"x-envoy-attempt-count") == [b"1"]
