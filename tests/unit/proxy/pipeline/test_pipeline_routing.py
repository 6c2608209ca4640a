"""Which route and destination a request takes through the pipeline: weighted splits over
subsets (a seeded rng, proportions checked over many requests), header and path matches,
and fault injection (aborts never forwarded, flagged FI; delays on virtual time, flagged DI)."""

from __future__ import annotations

import math
from collections import Counter as Tally
from typing import Any

import pytest
from support.pipeline_fakes import (
    V1,
    V2,
    Answer,
    FakeBody,
    FakeTryFactory,
    PipelineHarness,
    Result,
    get,
    grpc_call,
    mesh_yaml,
    post,
)
from support.virtual_time import VirtualTimeLoop

from proxy.outcomes import Flag
from proxy.pipeline import grpc
from proxy.pipeline.forward import UPSTREAM_RQ_TOTAL

START = 1000.0


def harness(
    loop: VirtualTimeLoop, routes: list[dict[str, Any]], tries: FakeTryFactory | None = None
) -> PipelineHarness:
    return PipelineHarness(loop, mesh_yaml(routes), tries or FakeTryFactory(otherwise=Answer()))


def serve_many(h: PipelineHarness, count: int, request: Any = None) -> list[Result]:
    async def all_of_them() -> list[Result]:
        return [await h.serve(request) for _ in range(count)]

    return h.loop.run_until_complete(all_of_them())


def five_sigma(count: int, share: float) -> float:
    """Five standard deviations of a binomial count: a seeded run outside it would be a
    1-in-3-million draw, so the bound catches a wrong split, never an unlucky one."""
    return 5 * math.sqrt(count * share * (1 - share))


# --- weighted destinations ---------------------------------------------------------------


@pytest.mark.parametrize(("v1_weight", "v2_weight"), [(90, 10), (70, 30), (50, 50), (0, 100)])
def test_weighted_destinations_split_the_requests(
    loop: VirtualTimeLoop, v1_weight: int, v2_weight: int
) -> None:
    """1000 requests over ``v1``/``v2`` weighted ``v1_weight``/``v2_weight``: each goes to a
    host of the subset its exchange's cluster names, and the share of each subset is its
    weight within five binomial standard deviations."""
    route = {
        "name": "split",
        "route": [{"subset": "v1", "weight": v1_weight}, {"subset": "v2", "weight": v2_weight}],
    }
    h = harness(loop, [route])
    count = 1000

    results = serve_many(h, count)

    by_subset = Tally()
    for result, attempt in zip(results, h.tries.tries, strict=True):
        subset = result.exchange.cluster.name.split("|")[2]  # type: ignore[union-attr]
        by_subset[subset] += 1
        assert attempt.address in (V1 if subset == "v1" else V2)
    expected = count * v2_weight / 100
    assert abs(by_subset["v2"] - expected) <= five_sigma(count, v2_weight / 100)
    assert by_subset["v1"] + by_subset["v2"] == count
    if v1_weight == 0:
        assert by_subset["v1"] == 0
    assert h.counter(UPSTREAM_RQ_TOTAL, "v1") == by_subset["v1"]
    assert h.counter(UPSTREAM_RQ_TOTAL, "v2") == by_subset["v2"]


def test_the_same_seed_makes_the_same_split(loop: VirtualTimeLoop) -> None:
    """The split is a function of the rng: two pipelines seeded alike send the same requests
    to the same subsets (what makes the proportions above reproducible)."""
    route = {
        "name": "split",
        "route": [{"subset": "v1", "weight": 60}, {"subset": "v2", "weight": 40}],
    }

    def subsets(seed: int) -> list[str]:
        h = PipelineHarness(loop, mesh_yaml([route]), FakeTryFactory(otherwise=Answer()), seed=seed)
        return [r.exchange.cluster.name for r in serve_many(h, 50)]  # type: ignore[union-attr]

    assert subsets(3) == subsets(3)
    assert subsets(3) != subsets(4)


CANARY = {
    "name": "canary",
    "match": [{"headers": {"x-canary": {"exact": "yes"}}}, {"uri": {"prefix": "/beta"}}],
    "route": [{"subset": "v2"}],
}
STABLE = {"name": "stable", "route": [{"subset": "v1"}]}


@pytest.mark.parametrize(
    ("request_", "route", "hosts"),
    [
        (get(b"/", (b"x-canary", b"yes")), "canary", V2),
        (get(b"/beta/page?x=1"), "canary", V2),
        (get(b"/", (b"x-canary", b"no")), "stable", V1),
        (get(b"/alpha/beta"), "stable", V1),
    ],
    ids=["header", "uri-prefix", "other-header-value", "prefix-elsewhere"],
)
def test_a_match_takes_its_route(
    loop: VirtualTimeLoop, request_: Any, route: str, hosts: frozenset[str]
) -> None:
    """Routes are tried in order: a request matching the canary's header or path prefix
    takes it (to v2, 20 times out of 20), any other falls through to the stable route (v1)."""
    h = harness(loop, [CANARY, STABLE])

    results = serve_many(h, 20, request_)

    assert {r.exchange.route.name for r in results} == {route}  # type: ignore[union-attr]
    assert set(h.tries.hosts) <= hosts


# --- fault injection ---------------------------------------------------------------------


def abort_route(percentage: float, status: int = 503) -> dict[str, Any]:
    return {"name": "chaos", "fault": {"abort": {"percentage": percentage, "http_status": status}}}


def test_an_abort_answers_with_its_status_and_flag_fi_never_forwarded(
    loop: VirtualTimeLoop,
) -> None:
    """``abort: 100 %``: every request is answered with the given status, Envoy's body and
    flag FI; no try is made, and the request body is drained, not sent."""
    h = harness(loop, [abort_route(100, 418)], FakeTryFactory())
    body = FakeBody([b"upload"])

    result = h.run(post(), body=body)

    assert (result.sink.status, result.sink.body) == (418, b"fault filter abort")
    assert result.flags == [Flag.FAULT_INJECTED]
    assert result.exchange.tries == 0 and h.tries.tries == []
    assert body.discarded
    assert h.counter(UPSTREAM_RQ_TOTAL) == 0


def test_an_abort_share_aborts_that_share(loop: VirtualTimeLoop) -> None:
    """``abort: 25 %`` over 800 requests: about a quarter (five binomial standard deviations)
    are answered 503 FI, and exactly the others reach an upstream."""
    count = 800
    h = harness(loop, [abort_route(25)])

    results = serve_many(h, count)

    aborted = [r for r in results if Flag.FAULT_INJECTED in r.flags]
    assert abs(len(aborted) - count / 4) <= five_sigma(count, 0.25)
    assert all(r.sink.status == 503 and r.exchange.tries == 0 for r in aborted)
    assert len(h.tries.tries) == count - len(aborted)
    assert all(r.sink.status == 200 for r in results if r not in aborted)


def test_an_abort_to_a_grpc_client_is_a_grpc_status(loop: VirtualTimeLoop) -> None:
    """A gRPC client gets the abort as a Trailers-Only status (503 → UNAVAILABLE)."""
    h = harness(loop, [abort_route(100)], FakeTryFactory())

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.status == 200
    assert result.sink.header(b"grpc-status") == [str(grpc.UNAVAILABLE).encode()]
    assert result.exchange.grpc_status == str(grpc.UNAVAILABLE)
    assert result.flags == [Flag.FAULT_INJECTED]


def delay_route(seconds: str, **more: Any) -> dict[str, Any]:
    return {
        "name": "slow",
        "fault": {"delay": {"percentage": 100, "fixed_delay": seconds}, **more.pop("fault", {})},
        **more,
    }


def test_a_delay_holds_the_request_before_it_reaches_the_upstream(loop: VirtualTimeLoop) -> None:
    """``delay: 3s``: the upstream is first contacted 3 s after the request came (virtual
    time), the client answered then, flagged DI."""
    h = harness(loop, [delay_route("3s")])

    result = h.run()

    assert h.tries.tries[0].opened_at == START + 3.0
    assert result.sink.status == 200 and result.sink.head_at == START + 3.0
    assert result.flags == [Flag.DELAY_INJECTED]
    assert result.exchange.duration == 3.0


def test_a_delay_is_not_part_of_the_route_timeout(loop: VirtualTimeLoop) -> None:
    """As Envoy's fault filter runs before its router, a 3 s delay on a route with a 2 s
    timeout still leaves the request its 2 s once forwarded: an upstream answering in 1.5 s
    is the client's answer, not a 504."""
    h = harness(loop, [delay_route("3s", timeout="2s")], FakeTryFactory(Answer(head_delay=1.5)))

    result = h.run()

    assert result.sink.status == 200 and result.sink.head_at == START + 4.5
    assert result.flags == [Flag.DELAY_INJECTED]


def test_a_delay_then_an_abort_answers_after_the_delay(loop: VirtualTimeLoop) -> None:
    """Delay and abort together: the abort's answer comes after the delay, flagged both."""
    route = delay_route("2s", fault={"abort": {"percentage": 100, "http_status": 500}})
    h = harness(loop, [route], FakeTryFactory())

    result = h.run()

    assert result.sink.status == 500 and result.sink.answered_at == START + 2.0
    assert result.flags == [Flag.DELAY_INJECTED, Flag.FAULT_INJECTED]
    assert h.tries.tries == []
