"""The pipeline's own answers before any try: no route (404 NR), no host to try (503 UH), and
policy hooks refusing a request (their reply, in order, the first refusal winning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from support.pipeline_fakes import (
    Answer,
    FakeBody,
    FakeTryFactory,
    PipelineHarness,
    get,
    grpc_call,
    mesh_yaml,
    post,
)
from support.virtual_time import VirtualTimeLoop

from proxy.outcomes import Flag
from proxy.pipeline import grpc, local_reply
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.forward import UPSTREAM_RQ_TOTAL
from proxy.pipeline.local_reply import LocalReply
from proxy.pipeline.retries import UPSTREAM_RQ_RETRY
from proxy.upstream.cluster import UPSTREAM_CX_NONE_HEALTHY

ONLY_API = {"name": "api", "match": [{"uri": {"prefix": "/api"}}]}
DENIED = LocalReply(403, Flag.NONE, b"RBAC: access denied")
LIMITED = LocalReply(429, Flag.RATE_LIMITED, b"local_rate_limited")


# --- no route ----------------------------------------------------------------------------


def test_no_route_answers_404_nr_without_a_try(loop: VirtualTimeLoop) -> None:
    """A request no route matches is answered 404 NR with an empty body, its own body
    drained; nothing is tried and no cluster sees it."""
    tries = FakeTryFactory(Answer())
    h = PipelineHarness(loop, mesh_yaml([ONLY_API]), tries)
    body = FakeBody([b"ignored"])

    result = h.run(post(b"/other"), body=body)

    assert (result.sink.status, result.sink.body) == (404, b"")
    assert result.flags == [Flag.NO_ROUTE_FOUND]
    assert result.exchange.route is None and result.exchange.cluster is None
    assert tries.tries == [] and body.discarded
    assert h.counter(UPSTREAM_RQ_TOTAL) == 0


def test_no_route_to_a_grpc_client_is_unimplemented(loop: VirtualTimeLoop) -> None:
    """A gRPC client gets UNIMPLEMENTED (the 404 mapping) as a Trailers-Only response."""
    h = PipelineHarness(loop, mesh_yaml([ONLY_API]), FakeTryFactory())

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.head is not None and result.sink.head[0] == 200 and result.sink.head[2]
    assert result.sink.header(b"grpc-status") == [str(grpc.UNIMPLEMENTED).encode()]
    assert result.flags == [Flag.NO_ROUTE_FOUND]


# --- no healthy upstream -----------------------------------------------------------------


def test_a_subset_without_endpoints_answers_503_uh(loop: VirtualTimeLoop) -> None:
    """A route to a subset no endpoint belongs to has no host to try: 503 UH "no healthy
    upstream", counted ``upstream_cx_none_healthy`` on that subset's cluster, never retried
    (no other host would take the retry)."""
    route = {"name": "v3", "route": [{"subset": "v3"}], "retries": {"retry_on": "5xx"}}
    yaml_text = mesh_yaml([route], subsets=("v1", "v2", "v3"))
    tries = FakeTryFactory(Answer())
    h = PipelineHarness(loop, yaml_text, tries)

    result = h.run()

    assert (result.sink.status, result.sink.body) == (503, b"no healthy upstream")
    assert result.flags == [Flag.NO_HEALTHY_UPSTREAM]
    assert result.exchange.tries == 0 and tries.tries == []
    assert h.counter(UPSTREAM_CX_NONE_HEALTHY, "v3") == 1
    assert h.counter(UPSTREAM_RQ_RETRY, "v3") == 0
    assert h.in_flight() == []


def test_a_service_without_endpoints_answers_503_uh(loop: VirtualTimeLoop) -> None:
    """The same for a service that has no endpoint at all."""
    h = PipelineHarness(loop, mesh_yaml(endpoints=(), subsets=()), FakeTryFactory())

    result = h.run()

    assert (result.sink.status, result.flags) == (503, [Flag.NO_HEALTHY_UPSTREAM])
    assert h.counter(UPSTREAM_CX_NONE_HEALTHY) == 1


def test_hosts_all_unhealthy_are_still_tried_in_panic(loop: VirtualTimeLoop) -> None:
    """UH means no host at all: when every host failed its checks the cluster is in panic
    (``HostSet``) and the request is still forwarded rather than refused."""
    tries = FakeTryFactory(Answer(body=[b"served anyway"]))
    h = PipelineHarness(loop, mesh_yaml(), tries)
    for host in h.cluster().hosts.hosts:
        host.healthy = False

    result = h.run()

    assert (result.sink.status, result.sink.body) == (200, b"served anyway")
    assert h.counter(UPSTREAM_CX_NONE_HEALTHY) == 0


# --- policy hooks ------------------------------------------------------------------------


@dataclass
class RecordingHook:
    """A PolicyHook answering ``reply`` (None: let through) and recording what it saw."""

    reply: LocalReply | None = None
    seen: list[Exchange] = field(default_factory=list)

    def check(self, exchange: Exchange) -> LocalReply | None:
        self.seen.append(exchange)
        return self.reply


def hooked(
    loop: VirtualTimeLoop, *hooks: RecordingHook, route: dict[str, Any] | None = None
) -> PipelineHarness:
    routes = [route or {"name": "all"}]
    return PipelineHarness(loop, mesh_yaml(routes), FakeTryFactory(otherwise=Answer()), hooks=hooks)


def test_a_refusing_hook_answers_and_nothing_is_tried(loop: VirtualTimeLoop) -> None:
    """A hook's refusal is the client's answer (status, body); no try is made, no cluster
    picked, no request counted upstream; Flag.NONE adds no flag."""
    hook = RecordingHook(DENIED)
    h = hooked(loop, hook)
    body = FakeBody([b"payload"])

    result = h.run(post(), body=body)

    assert (result.sink.status, result.sink.body) == (403, b"RBAC: access denied")
    assert result.flags == []
    assert h.tries.tries == [] and result.exchange.cluster is None
    assert body.discarded
    assert h.counter(UPSTREAM_RQ_TOTAL) == 0
    assert hook.seen == [result.exchange]


def test_hooks_run_in_order_and_the_first_refusal_wins(loop: VirtualTimeLoop) -> None:
    """Allow, rate-limit, deny: the rate limit answers (429 RL) and the deny hook after it
    is never asked."""
    allow, limit, deny = RecordingHook(), RecordingHook(LIMITED), RecordingHook(DENIED)
    h = hooked(loop, allow, limit, deny)

    result = h.run()

    assert (result.sink.status, result.flags) == (429, [Flag.RATE_LIMITED])
    assert (len(allow.seen), len(limit.seen), len(deny.seen)) == (1, 1, 0)
    assert h.tries.tries == []


def test_hooks_that_all_allow_see_the_routed_request(loop: VirtualTimeLoop) -> None:
    """Hooks see the request after routing (its route is known) and, all allowing, the
    request is forwarded."""
    first, second = RecordingHook(), RecordingHook()
    h = hooked(loop, first, second)

    result = h.run(get(b"/x"))

    assert result.sink.status == 200 and len(h.tries.tries) == 1
    assert [e.route.name for e in first.seen + second.seen] == ["all", "all"]  # type: ignore[union-attr]


def test_a_hook_refuses_before_fault_injection(loop: VirtualTimeLoop) -> None:
    """Hooks sit before the fault filter, as Envoy's RBAC does: a refused request is not
    delayed nor aborted by the route's fault."""
    fault = {
        "delay": {"percentage": 100, "fixed_delay": "5s"},
        "abort": {"percentage": 100, "http_status": 500},
    }
    h = hooked(loop, RecordingHook(DENIED), route={"name": "chaos", "fault": fault})

    result = h.run()

    assert (result.sink.status, result.flags) == (403, [])
    assert result.sink.answered_at == 1000.0


def test_hooks_are_not_asked_about_unrouted_requests(loop: VirtualTimeLoop) -> None:
    """No route is answered 404 NR before any hook runs."""
    hook = RecordingHook(DENIED)
    h = PipelineHarness(loop, mesh_yaml([ONLY_API]), FakeTryFactory(), hooks=[hook])

    result = h.run(get(b"/other"))

    assert result.sink.status == 404 and hook.seen == []


def test_a_hook_refusal_to_a_grpc_client_is_permission_denied(loop: VirtualTimeLoop) -> None:
    """A gRPC client refused with 403 gets PERMISSION_DENIED (7), Trailers-Only."""
    h = hooked(loop, RecordingHook(DENIED))

    result = h.run(grpc_call(), grpc=True)

    assert result.sink.status == 200
    assert result.sink.header(b"grpc-status") == [b"7"]
    assert result.exchange.grpc_status == "7"


def test_local_replies_are_envoys_texts(loop: VirtualTimeLoop) -> None:
    """The 503 a client gets for an unreachable upstream carries Envoy's own body text and
    a matching content-length."""
    h = PipelineHarness(loop, mesh_yaml(endpoints=(), subsets=()), FakeTryFactory())

    result = h.run()

    assert result.sink.body == local_reply.NO_HEALTHY_UPSTREAM.body
    assert result.sink.header(b"content-length") == [str(len(result.sink.body)).encode()]
