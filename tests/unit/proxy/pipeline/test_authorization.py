"""The authorization hook in a real Pipeline: what the client gets (403 ``RBAC: access
denied``, a gRPC PERMISSION_DENIED, a 400 for a refused path), what the app is sent (the
normalised target, or nothing), what is counted, and when the policies and the peer are read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from support.pipeline_fakes import (
    PEER,
    Answer,
    FakeBody,
    FakeSink,
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
from proxy.pipeline.authorization import (
    HTTP_LABELS,
    RBAC_ALLOWED,
    RBAC_DENIED,
    TCP_LABELS,
    AuthorizationHook,
    connection_allowed,
)
from proxy.pipeline.forward import UPSTREAM_RQ_TOTAL, Pipeline
from proxy.pipeline.router import HttpRouter
from proxy.policy.evaluate import Authorizer, Peer
from proxy.policy.model import (
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    StringMatch,
)
from proxy.policy.paths import EscapedSlashes
from proxy.series import Stats

REJECT = EscapedSlashes.REJECT_REQUEST
UNESCAPE = EscapedSlashes.UNESCAPE_AND_FORWARD
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"


def m(*texts: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(text) for text in texts)


def policy(name: str, action: Action, *rules: Rule) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, action, rules)


DENY_ADMIN = policy("deny-admin", Action.DENY, Rule(operations=(Operation(paths=m("/admin*")),)))
ALLOW_ALL = policy("allow-all", Action.ALLOW, Rule())
DENY_ALL = policy("deny-all", Action.DENY, Rule())
ALLOW_FRONTEND = policy(
    "frontend",
    Action.ALLOW,
    Rule(sources=(Source(principals=m("cluster.local/ns/default/sa/frontend")),)),
)


@dataclass
class Connection:
    """What the session gives the hook: the worker's current authorizer (swapped on a
    reload) and the connection's peer, both through factories that count their calls."""

    authorizer: Authorizer
    spiffe: str | None = FRONTEND
    authorizer_reads: int = 0
    peer_makes: list[Peer] = field(default_factory=list)

    def current_authorizer(self) -> Authorizer:
        self.authorizer_reads += 1
        return self.authorizer

    def make_peer(self) -> Peer:
        peer = Peer.of(PEER, ("10.1.0.1", 8080), self.spiffe)
        self.peer_makes.append(peer)
        return peer


def inbound(
    loop: VirtualTimeLoop,
    connection: Connection,
    escaped: EscapedSlashes | None = REJECT,
    tries: FakeTryFactory | None = None,
) -> tuple[PipelineHarness, AuthorizationHook]:
    """A Pipeline as the inbound side builds one: the authorization hook, paths normalised."""
    h = PipelineHarness(loop, mesh_yaml(), tries or FakeTryFactory(otherwise=Answer()))
    hook = AuthorizationHook(connection.current_authorizer, connection.make_peer, h.stats)
    h.pipeline = Pipeline(
        h.upstreams,
        h.service,
        h.port,
        HttpRouter(h.service),
        PEER,
        h.tries,
        hooks=(hook,),
        clock=loop.time,
        escaped_slashes=escaped,
    )
    return h, hook


def rbac(stats: Stats, protocol: str = "http") -> tuple[int, int]:
    """(rbac_allowed, rbac_denied) for ``protocol``."""
    labels = HTTP_LABELS if protocol == "http" else TCP_LABELS
    assert labels == (("protocol", protocol),)
    return stats.counters.get((RBAC_ALLOWED, labels), 0), stats.counters.get(
        (RBAC_DENIED, labels), 0
    )


def forwarded_targets(h: PipelineHarness) -> list[bytes]:
    targets = []
    for attempt in h.tries.tries:
        assert attempt.request is not None
        targets.append(attempt.request.target)
    return targets


def run_with_authority(h: PipelineHarness, target: bytes, authority: bytes | None) -> Result:
    request = get(target)
    result = Result(h.pipeline.new_exchange(request, authority), FakeSink(), FakeBody())
    h.loop.run_until_complete(h.pipeline.forward(result.exchange, result.body, result.sink))
    return result


# --- what the client gets ------------------------------------------------------------------


@pytest.mark.parametrize("escaped", [REJECT, UNESCAPE])
@pytest.mark.parametrize("target", [b"/admin", b"/admin/users?x=1", b"//admin", b"/a/../admin#x"])
def test_a_denied_request_gets_403_rbac_and_is_never_forwarded(
    loop: VirtualTimeLoop, target: bytes, escaped: EscapedSlashes
) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([DENY_ADMIN])), escaped)
    body = FakeBody([b"payload"])

    result = h.run(post(target), body=body)

    assert (result.sink.status, result.sink.body) == (403, b"RBAC: access denied")
    assert result.flags == [Flag.RBAC_ACCESS_DENIED] == ["RBAC"]
    assert result.exchange.status == 403
    assert h.tries.tries == []
    assert result.exchange.cluster is None
    assert h.counter(UPSTREAM_RQ_TOTAL) == 0
    assert body.discarded
    assert rbac(h.stats) == (0, 1)


def test_cve_2021_31920_an_escaped_slash_does_not_pass_a_deny(loop: VirtualTimeLoop) -> None:
    """UNESCAPE_AND_FORWARD: the policy sees /admin, as the app would: 403."""
    h, _hook = inbound(loop, Connection(Authorizer([DENY_ADMIN])), UNESCAPE)

    result = h.run(get(b"/public%2F..%2Fadmin"))

    assert (result.sink.status, result.flags) == (403, ["RBAC"])
    assert h.tries.tries == []


def test_an_allowed_request_is_forwarded_with_the_normalised_target(
    loop: VirtualTimeLoop,
) -> None:
    """The app is sent the path the policy matched (an ALLOW on exactly /a/c lets it in)."""
    allow_a_c = policy("a-c", Action.ALLOW, Rule(operations=(Operation(paths=m("/a/c")),)))
    tries = FakeTryFactory(Answer(body=[b"served"]))
    h, _hook = inbound(loop, Connection(Authorizer([allow_a_c])), REJECT, tries)

    result = h.run(get(b"//a/./b/../c?x=1"))

    assert (result.sink.status, result.sink.body) == (200, b"served")
    assert forwarded_targets(h) == [b"/a/c?x=1"]
    assert result.exchange.request.target == b"/a/c?x=1"
    assert result.flags == []
    assert rbac(h.stats) == (1, 0)


def test_unescape_and_forward_sends_the_decoded_path(loop: VirtualTimeLoop) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([ALLOW_ALL])), UNESCAPE)

    result = h.run(get(b"/files%2Fa%2fb?name=%2F"))

    assert result.sink.status == 200
    assert forwarded_targets(h) == [b"/files/a/b?name=%2F"]  # the query is not the path


@pytest.mark.parametrize("target", [b"/a%2Fb", b"/a%2fb", b"/public%5C..%5Cadmin", b"/a%5cb?x"])
def test_reject_request_answers_400_without_a_try(loop: VirtualTimeLoop, target: bytes) -> None:
    """An escaped slash under REJECT_REQUEST is answered before routing and policy: the
    authorizer is not consulted, nothing is counted as allowed or denied."""
    connection = Connection(Authorizer([ALLOW_ALL]))
    h, _hook = inbound(loop, connection, REJECT)

    result = h.run(get(target))

    assert (result.sink.status, result.sink.body) == (400, b"Bad Request")
    assert result.exchange.status == 400
    assert result.flags == []
    assert h.tries.tries == []
    assert rbac(h.stats) == (0, 0)
    assert connection.authorizer_reads == 0


@pytest.mark.parametrize(
    "target", [b"//a/./b/../c?x=1", b"/a%2Fb", b"/admin#x", b"/%61dmin", b"/a\\b"]
)
def test_without_normalisation_the_target_is_forwarded_untouched(
    loop: VirtualTimeLoop, target: bytes
) -> None:
    """Outbound (escaped_slashes=None): the target goes as the client wrote it."""
    h, _hook = inbound(loop, Connection(Authorizer([])), escaped=None)

    result = h.run(get(target))

    assert result.sink.status == 200
    assert forwarded_targets(h) == [target]


def test_a_denied_grpc_call_gets_permission_denied(loop: VirtualTimeLoop) -> None:
    deny_service = policy(
        "no-pkg", Action.DENY, Rule(operations=(Operation(paths=m("/pkg.Service/*")),))
    )
    h, _hook = inbound(loop, Connection(Authorizer([deny_service])), REJECT)

    result = h.run(grpc_call(), grpc=True)

    head = result.sink.head
    assert head is not None and head[0] == 200 and head[2]  # Trailers-Only
    assert result.sink.header(b"grpc-status") == [b"7"]
    assert grpc.status_for_http(403) == 7
    assert result.sink.header(b"grpc-message") == [b"RBAC: access denied"]
    assert result.exchange.grpc_status == "7"
    assert result.flags == ["RBAC"]
    assert h.tries.tries == []


def test_an_allowed_grpc_call_is_forwarded(loop: VirtualTimeLoop) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([ALLOW_FRONTEND])), REJECT)

    result = h.run(grpc_call(), grpc=True)

    assert result.flags == []
    assert forwarded_targets(h) == [b"/pkg.Service/Method"]


# --- what the hook reads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spiffe", "status"), [(FRONTEND, 200), (None, 403), ("spiffe://cluster.local/ns/x/sa/y", 403)]
)
def test_the_peer_principal_decides(loop: VirtualTimeLoop, spiffe: str | None, status: int) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([ALLOW_FRONTEND]), spiffe=spiffe))
    assert h.run().sink.status == status


@pytest.mark.parametrize(("tenant", "status"), [(b"red", 403), (b"blue", 200), (None, 200)])
def test_a_header_condition_reads_the_request_headers(
    loop: VirtualTimeLoop, tenant: bytes | None, status: int
) -> None:
    red = Condition("request.headers", values=m("red"), header="x-tenant")
    deny_red = policy("no-red", Action.DENY, Rule(conditions=(red,)))
    h, _hook = inbound(loop, Connection(Authorizer([deny_red])))
    headers = [(b"x-tenant", tenant)] if tenant is not None else []

    assert h.run(get(b"/", *headers)).sink.status == status


@pytest.mark.parametrize(
    ("authority", "status"),
    [
        (b"example.com", 403),
        (b"Example.COM:8080", 403),
        (b"example.com.", 403),
        (b"example.com.:8080", 403),
        (b"other.com", 200),
        (None, 200),
    ],
)
def test_hosts_are_matched_on_the_normalised_authority(
    loop: VirtualTimeLoop, authority: bytes | None, status: int
) -> None:
    deny_host = policy(
        "no-example", Action.DENY, Rule(operations=(Operation(hosts=m("example.com")),))
    )
    h, _hook = inbound(loop, Connection(Authorizer([deny_host])))

    assert run_with_authority(h, b"/", authority).sink.status == status


def test_the_authorizer_is_read_at_every_request(loop: VirtualTimeLoop) -> None:
    """A reload that changes the policies applies to the next request on the same
    connection (the same hook), not only to new connections."""
    connection = Connection(Authorizer([ALLOW_ALL]))
    h, _hook = inbound(loop, connection)

    first = h.run()
    connection.authorizer = Authorizer([DENY_ALL])
    second = h.run()
    connection.authorizer = Authorizer([ALLOW_FRONTEND])
    third = h.run()

    assert [first.sink.status, second.sink.status, third.sink.status] == [200, 403, 200]
    assert connection.authorizer_reads == 3
    assert len(h.tries.tries) == 2
    assert rbac(h.stats) == (2, 1)


def test_the_peer_is_made_once_per_hook(loop: VirtualTimeLoop) -> None:
    connection = Connection(Authorizer([ALLOW_FRONTEND]))
    h, _hook = inbound(loop, connection)

    statuses = [h.run().sink.status for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert len(connection.peer_makes) == 1


def test_without_policies_nothing_is_checked_or_counted(loop: VirtualTimeLoop) -> None:
    """No policy: the peer is never made (no certificate parsing), nothing is counted, and
    the request goes through."""
    connection = Connection(Authorizer([]))
    h, _hook = inbound(loop, connection)

    result = h.run(get(b"/admin"))

    assert result.sink.status == 200
    assert connection.peer_makes == []
    assert rbac(h.stats) == (0, 0)
    assert connection.authorizer_reads == 1


def test_a_revoked_allow_after_an_empty_authorizer_makes_the_peer_then(
    loop: VirtualTimeLoop,
) -> None:
    connection = Connection(Authorizer([]), spiffe=None)
    h, _hook = inbound(loop, connection)

    assert h.run().sink.status == 200
    connection.authorizer = Authorizer([ALLOW_FRONTEND])
    assert h.run().sink.status == 403
    assert h.run().sink.status == 403
    assert len(connection.peer_makes) == 1


def test_counters_count_each_decision(loop: VirtualTimeLoop) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([DENY_ADMIN, ALLOW_ALL])))

    statuses = [h.run(get(target)).sink.status for target in (b"/", b"/admin", b"/x", b"/admin/")]

    assert statuses == [200, 403, 200, 403]
    assert rbac(h.stats) == (2, 2)
    assert rbac(h.stats, "tcp") == (0, 0)


def test_a_denial_is_logged_with_its_reason(
    loop: VirtualTimeLoop, caplog: pytest.LogCaptureFixture
) -> None:
    h, _hook = inbound(loop, Connection(Authorizer([DENY_ADMIN])))

    with caplog.at_level(logging.DEBUG, logger="detour.proxy"):
        h.run(get(b"/admin/x"))

    assert any(
        "rbac_access_denied_matched_policy[deny-admin]" in record.getMessage()
        and "/admin/x" in record.getMessage()
        for record in caplog.records
    )


# --- TCP connections -----------------------------------------------------------------------

PORT_8080 = policy("port-8080", Action.ALLOW, Rule(operations=(Operation(ports=(8080,)),)))
GETS = policy("gets", Action.ALLOW, Rule(operations=(Operation(methods=m("GET")),)))


@pytest.mark.parametrize(
    ("policies", "port", "allowed"),
    [
        ([], 8080, True),
        ([PORT_8080], 8080, True),
        ([PORT_8080], 9090, False),
        ([GETS], 8080, False),  # an ALLOW about HTTP opens no TCP port
        ([DENY_ADMIN], 8080, False),  # a DENY on paths: any connection could ask for /admin
        ([ALLOW_ALL, DENY_ALL], 8080, False),
    ],
)
def test_connection_allowed(policies: list[AuthorizationPolicy], port: int, allowed: bool) -> None:
    stats = Stats()
    peer = Peer.of(PEER, ("10.1.0.1", port), FRONTEND)

    assert connection_allowed(Authorizer(policies), peer, stats) is allowed

    assert rbac(stats, "tcp") == ((1, 0) if allowed else (0, 1))
    assert rbac(stats, "http") == (0, 0)


def test_a_refused_connection_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    peer = Peer.of(PEER, ("10.1.0.1", 9090), None)
    with caplog.at_level(logging.INFO, logger="detour.proxy"):
        assert connection_allowed(Authorizer([DENY_ALL]), peer, Stats()) is False
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        PEER in text and "9090" in text and "matched_policy[deny-all]" in text for text in messages
    )


def test_connection_allowed_counts_every_connection() -> None:
    stats = Stats()
    authorizer = Authorizer([PORT_8080])
    peers = [Peer.of(PEER, ("10.1.0.1", port), None) for port in (8080, 8080, 9090)]

    results = [connection_allowed(authorizer, peer, stats) for peer in peers]

    assert results == [True, True, False]
    assert rbac(stats, "tcp") == (2, 1)
