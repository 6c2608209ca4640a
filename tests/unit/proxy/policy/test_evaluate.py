"""proxy.policy.evaluate: Istio's AuthorizationPolicy decisions, table by table.

Most tables list a source, an operation or a condition with a caller (and a request) and
whether it matches; each row is then checked both ways, inside an ALLOW policy (a match lets
the caller in, else it is refused by default) and inside a DENY policy (a match refuses it),
so a row cannot pass by the evaluator answering the same thing for everything.
"""

from __future__ import annotations

import ipaddress

import pytest

from proxy.policy.evaluate import (
    ALLOWED_BY_DEFAULT,
    DENIED_BY_DEFAULT,
    Authorizer,
    HttpAttributes,
    Peer,
    Verdict,
)
from proxy.policy.model import (
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    StringMatch,
)
from proxy.policy.paths import EscapedSlashes, normal_host, normal_target

net = ipaddress.ip_network

FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
ADMIN = "spiffe://cluster.local/ns/prod/sa/admin"

MTLS = Peer.of("10.0.0.5", ("10.1.0.1", 8080), FRONTEND)
PLAIN = Peer.of("10.0.0.5", ("10.1.0.1", 8080), None)
PROD = Peer.of("10.0.0.6", ("10.1.0.1", 8080), ADMIN)
V6 = Peer.of("fd00::5", ("fd00::1", 8080), FRONTEND)
MAPPED = Peer.of("::ffff:10.0.0.5", ("::ffff:10.1.0.1", 8080), FRONTEND)
OTHER_PORT = Peer.of("10.0.0.5", ("10.1.0.1", 9090), FRONTEND)


def m(*texts: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(text) for text in texts)


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(net(text, strict=False) for text in texts)


def http(
    method: str = "GET",
    path: str = "/",
    authority: bytes | None = b"backend",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> HttpAttributes:
    """The request's attributes as the hook makes them (the host through normal_host)."""
    host = normal_host(authority)
    return HttpAttributes(method, host.decode() if host is not None else None, path, headers)


GET = http()


def allow(*rules: Rule, name: str = "allow") -> AuthorizationPolicy:
    return AuthorizationPolicy(name, Action.ALLOW, rules)


def deny(*rules: Rule, name: str = "deny") -> AuthorizationPolicy:
    return AuthorizationPolicy(name, Action.DENY, rules)


def check_both_ways(rule: Rule, peer: Peer, request: HttpAttributes | None, matches: bool) -> None:
    """``rule`` in an ALLOW policy lets in exactly what it matches; in a DENY policy it
    refuses exactly that."""
    allowed = Authorizer([allow(rule)]).check(peer, request)
    assert allowed == (Verdict(True, "allow") if matches else DENIED_BY_DEFAULT)
    denied = Authorizer([deny(rule)]).check(peer, request)
    assert denied == (Verdict(False, "deny") if matches else ALLOWED_BY_DEFAULT)


# --- the peer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "destination", "uri", "address", "principal", "namespace"),
    [
        ("10.0.0.5", "10.1.0.1", FRONTEND, "10.0.0.5", FRONTEND[9:], "default"),
        ("10.0.0.5", "10.1.0.1", None, "10.0.0.5", None, None),
        ("10.0.0.5", "10.1.0.1", "https://x/ns/a/sa/b", "10.0.0.5", None, None),  # not SPIFFE
        ("10.0.0.5", "10.1.0.1", "spiffe://td/workload", "10.0.0.5", "td/workload", None),
        ("::ffff:10.0.0.5", "::ffff:10.1.0.1", ADMIN, "10.0.0.5", ADMIN[9:], "prod"),
        ("fe80::1%eth0", "fd00::1", None, "fe80::1", None, None),
        ("fd00::5", "fd00::1", FRONTEND, "fd00::5", FRONTEND[9:], "default"),
    ],
)
def test_peer_of(
    client: str,
    destination: str,
    uri: str | None,
    address: str,
    principal: str | None,
    namespace: str | None,
) -> None:
    peer = Peer.of(client, (destination, 8080), uri)
    assert peer.address == ipaddress.ip_address(address)
    assert peer.port == 8080
    assert (peer.principal, peer.namespace) == (principal, namespace)


def test_an_ipv4_mapped_destination_is_its_ipv4_address() -> None:
    assert MAPPED.destination == ipaddress.ip_address("10.1.0.1")


# --- policies: the order of evaluation ---------------------------------------------------

ANYONE = Rule()
ADMIN_PATHS = Rule(operations=(Operation(paths=m("/admin*")),))
FROM_FRONTEND = Rule(sources=(Source(principals=m("cluster.local/ns/default/sa/frontend")),))

ORDER: list[tuple[str, list[AuthorizationPolicy], Peer, HttpAttributes | None, Verdict]] = [
    ("no policy allows", [], MTLS, GET, ALLOWED_BY_DEFAULT),
    ("no policy allows tcp", [], PLAIN, None, ALLOWED_BY_DEFAULT),
    ("deny that matches", [deny(ANYONE, name="d")], MTLS, GET, Verdict(False, "d")),
    ("deny that does not match", [deny(ADMIN_PATHS)], MTLS, GET, ALLOWED_BY_DEFAULT),
    ("deny without rules matches nothing", [deny(name="d")], MTLS, GET, ALLOWED_BY_DEFAULT),
    ("allow without rules lets nobody in", [allow(name="a")], MTLS, GET, DENIED_BY_DEFAULT),
    (
        "allow with an empty rule lets anybody in",
        [allow(ANYONE, name="a")],
        PLAIN,
        GET,
        Verdict(True, "a"),
    ),
    ("allow that matches", [allow(FROM_FRONTEND, name="a")], MTLS, GET, Verdict(True, "a")),
    ("an allow present denies the rest", [allow(FROM_FRONTEND)], PROD, GET, DENIED_BY_DEFAULT),
    (
        "deny wins over allow",
        [allow(ANYONE, name="a"), deny(FROM_FRONTEND, name="d")],
        MTLS,
        GET,
        Verdict(False, "d"),
    ),
    (
        "deny wins whatever the order",
        [deny(FROM_FRONTEND, name="d"), allow(ANYONE, name="a")],
        MTLS,
        GET,
        Verdict(False, "d"),
    ),
    (
        "an allow after a deny that did not match",
        [deny(ADMIN_PATHS, name="d"), allow(FROM_FRONTEND, name="a")],
        MTLS,
        GET,
        Verdict(True, "a"),
    ),
    (
        "the deny that matched is named",
        [deny(ADMIN_PATHS, name="d1"), deny(FROM_FRONTEND, name="d2"), deny(ANYONE, name="d3")],
        MTLS,
        GET,
        Verdict(False, "d2"),
    ),
    (
        "the allow that matched is named",
        [allow(ADMIN_PATHS, name="a1"), allow(FROM_FRONTEND, name="a2")],
        MTLS,
        GET,
        Verdict(True, "a2"),
    ),
    (
        "any of several allows",
        [allow(ADMIN_PATHS, name="a1"), allow(FROM_FRONTEND, name="a2")],
        PROD,
        http(path="/admin/users"),
        Verdict(True, "a1"),
    ),
    (
        "a rule of a policy is enough",
        [allow(ADMIN_PATHS, FROM_FRONTEND, name="a")],
        MTLS,
        GET,
        Verdict(True, "a"),
    ),
]


@pytest.mark.parametrize(
    ("policies", "peer", "request_", "expected"),
    [case[1:] for case in ORDER],
    ids=[case[0] for case in ORDER],
)
def test_order_of_evaluation(
    policies: list[AuthorizationPolicy],
    peer: Peer,
    request_: HttpAttributes | None,
    expected: Verdict,
) -> None:
    assert Authorizer(policies).check(peer, request_) == expected


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (Verdict(False, "deny-admin"), "rbac_access_denied_matched_policy[deny-admin]"),
        (DENIED_BY_DEFAULT, "rbac_access_denied_matched_policy[none]"),
    ],
)
def test_verdict_reason_is_envoys_response_code_details(verdict: Verdict, reason: str) -> None:
    assert verdict.reason == reason


def test_a_denial_names_its_policy_in_the_reason() -> None:
    verdict = Authorizer([deny(ADMIN_PATHS, name="deny-admin")]).check(MTLS, http(path="/admin"))
    assert not verdict.allowed
    assert verdict.reason == "rbac_access_denied_matched_policy[deny-admin]"


@pytest.mark.parametrize(
    ("policies", "active"),
    [([], False), ([deny()], True), ([allow()], True), ([allow(ANYONE), deny(ANYONE)], True)],
)
def test_active_says_whether_there_is_anything_to_check(
    policies: list[AuthorizationPolicy], active: bool
) -> None:
    assert Authorizer(policies).active is active


def test_policies_may_be_any_iterable() -> None:
    authorizer = Authorizer(p for p in [deny(ANYONE, name="d")])
    assert authorizer.check(MTLS, GET) == Verdict(False, "d")
    assert authorizer.check(MTLS, GET) == Verdict(False, "d")  # not a spent generator


# --- sources ---------------------------------------------------------------------------------

SOURCES: list[tuple[str, Source, Peer, bool]] = [
    # principals
    ("principal exact", Source(principals=m("cluster.local/ns/default/sa/frontend")), MTLS, True),
    (
        "principal exact other",
        Source(principals=m("cluster.local/ns/default/sa/other")),
        MTLS,
        False,
    ),
    ("principal prefix", Source(principals=m("cluster.local/ns/default/*")), MTLS, True),
    ("principal prefix other ns", Source(principals=m("cluster.local/ns/default/*")), PROD, False),
    ("principal suffix", Source(principals=m("*/sa/frontend")), MTLS, True),
    ("principal suffix other", Source(principals=m("*/sa/frontend")), PROD, False),
    ("principal any of", Source(principals=m("*/sa/nobody", "*/sa/admin")), PROD, True),
    ("principal * is any mTLS caller", Source(principals=m("*")), MTLS, True),
    ("principal * is not a plaintext caller", Source(principals=m("*")), PLAIN, False),
    ("principal exact not a plaintext caller", Source(principals=m("*/sa/frontend")), PLAIN, False),
    ("not_principals * is a plaintext caller", Source(not_principals=m("*")), PLAIN, True),
    ("not_principals * is not an mTLS caller", Source(not_principals=m("*")), MTLS, False),
    ("not_principals other", Source(not_principals=m("*/sa/admin")), MTLS, True),
    ("not_principals self", Source(not_principals=m("*/sa/frontend")), MTLS, False),
    (
        "principals and not_principals",
        Source(principals=m("cluster.local/*"), not_principals=m("*/sa/frontend")),
        MTLS,
        False,
    ),
    (
        "principals and not_principals other",
        Source(principals=m("cluster.local/*"), not_principals=m("*/sa/frontend")),
        PROD,
        True,
    ),
    ("principal has no spiffe:// prefix", Source(principals=m(FRONTEND)), MTLS, False),
    # namespaces: the principal's
    ("namespace", Source(namespaces=m("default")), MTLS, True),
    ("namespace other", Source(namespaces=m("default")), PROD, False),
    ("namespace of a plaintext caller", Source(namespaces=m("default")), PLAIN, False),
    ("namespace * plaintext", Source(namespaces=m("*")), PLAIN, False),
    ("namespace prefix", Source(namespaces=m("pro*")), PROD, True),
    ("namespace suffix", Source(namespaces=m("*ault")), MTLS, True),
    ("not_namespaces", Source(not_namespaces=m("default")), MTLS, False),
    ("not_namespaces other", Source(not_namespaces=m("default")), PROD, True),
    ("not_namespaces plaintext", Source(not_namespaces=m("default")), PLAIN, True),
    # ip blocks
    ("ip block", Source(ip_blocks=nets("10.0.0.0/24")), MTLS, True),
    ("ip block other", Source(ip_blocks=nets("10.0.1.0/24")), MTLS, False),
    ("ip block single address", Source(ip_blocks=nets("10.0.0.5")), MTLS, True),
    ("ip block single other", Source(ip_blocks=nets("10.0.0.6")), MTLS, False),
    ("ip blocks any of", Source(ip_blocks=nets("192.168.0.0/16", "10.0.0.0/8")), MTLS, True),
    ("not_ip_blocks", Source(not_ip_blocks=nets("10.0.0.5/32")), MTLS, False),
    ("not_ip_blocks other", Source(not_ip_blocks=nets("10.0.0.6/32")), MTLS, True),
    (
        "ip_blocks and not_ip_blocks",
        Source(ip_blocks=nets("10.0.0.0/8"), not_ip_blocks=nets("10.0.0.0/29")),
        MTLS,
        False,
    ),
    ("ipv6 block", Source(ip_blocks=nets("fd00::/64")), V6, True),
    ("ipv6 block other", Source(ip_blocks=nets("fd01::/64")), V6, False),
    ("ipv6 caller, ipv4 block", Source(ip_blocks=nets("10.0.0.0/8")), V6, False),
    ("ipv4 caller, ipv6 block", Source(ip_blocks=nets("::/0")), MTLS, False),
    ("ipv6 not_ip_blocks", Source(not_ip_blocks=nets("fd00::5/128")), V6, False),
    ("ipv4-mapped caller, ipv4 block", Source(ip_blocks=nets("10.0.0.0/8")), MAPPED, True),
    ("ipv4-mapped caller, other block", Source(ip_blocks=nets("10.9.0.0/16")), MAPPED, False),
    ("ipv4-mapped caller, not_ip_blocks", Source(not_ip_blocks=nets("10.0.0.5")), MAPPED, False),
    # fields of one source: all of them
    (
        "principal and ip block both",
        Source(principals=m("*/sa/frontend"), ip_blocks=nets("10.0.0.0/24")),
        MTLS,
        True,
    ),
    (
        "principal but not ip block",
        Source(principals=m("*/sa/frontend"), ip_blocks=nets("10.0.1.0/24")),
        MTLS,
        False,
    ),
    (
        "ip block but not namespace",
        Source(namespaces=m("prod"), ip_blocks=nets("10.0.0.0/24")),
        MTLS,
        False,
    ),
    ("empty source: anyone", Source(), PLAIN, True),
]


@pytest.mark.parametrize(
    ("source", "peer", "matches"),
    [case[1:] for case in SOURCES],
    ids=[case[0] for case in SOURCES],
)
def test_sources(source: Source, peer: Peer, matches: bool) -> None:
    check_both_ways(Rule(sources=(source,)), peer, GET, matches)


# --- operations --------------------------------------------------------------------------

OPERATIONS: list[tuple[str, Operation, Peer, HttpAttributes, bool]] = [
    # ports (the destination's)
    ("port", Operation(ports=(8080,)), MTLS, GET, True),
    ("port other", Operation(ports=(9090,)), MTLS, GET, False),
    ("ports any of", Operation(ports=(9090, 8080)), MTLS, GET, True),
    ("not_ports", Operation(not_ports=(8080,)), MTLS, GET, False),
    ("not_ports other", Operation(not_ports=(8080,)), OTHER_PORT, GET, True),
    # methods
    ("method", Operation(methods=m("GET")), MTLS, GET, True),
    ("method other", Operation(methods=m("POST")), MTLS, GET, False),
    ("methods any of", Operation(methods=m("POST", "GET")), MTLS, GET, True),
    ("method is case-sensitive", Operation(methods=m("GET")), MTLS, http("get"), False),
    ("method *", Operation(methods=m("*")), MTLS, http("DELETE"), True),
    ("not_methods", Operation(not_methods=m("GET", "HEAD")), MTLS, GET, False),
    ("not_methods other", Operation(not_methods=m("GET", "HEAD")), MTLS, http("POST"), True),
    # paths
    ("path exact", Operation(paths=m("/api")), MTLS, http(path="/api"), True),
    ("path exact, longer", Operation(paths=m("/api")), MTLS, http(path="/api/x"), False),
    ("path exact, trailing slash", Operation(paths=m("/api")), MTLS, http(path="/api/"), False),
    ("path prefix", Operation(paths=m("/api/*")), MTLS, http(path="/api/v1/x"), True),
    ("path prefix itself", Operation(paths=m("/api/*")), MTLS, http(path="/api/"), True),
    ("path prefix without its slash", Operation(paths=m("/api/*")), MTLS, http(path="/api"), False),
    ("path prefix other", Operation(paths=m("/api/*")), MTLS, http(path="/apix"), False),
    ("path suffix", Operation(paths=m("*.css")), MTLS, http(path="/s/site.css"), True),
    ("path suffix other", Operation(paths=m("*.css")), MTLS, http(path="/s/site.js"), False),
    ("path *", Operation(paths=m("*")), MTLS, http(path="/"), True),
    ("path is case-sensitive", Operation(paths=m("/admin")), MTLS, http(path="/ADMIN"), False),
    ("not_paths", Operation(not_paths=m("/admin*")), MTLS, http(path="/admin/x"), False),
    ("not_paths other", Operation(not_paths=m("/admin*")), MTLS, http(path="/api"), True),
    (
        "paths and not_paths",
        Operation(paths=m("/api/*"), not_paths=m("/api/internal/*")),
        MTLS,
        http(path="/api/internal/x"),
        False,
    ),
    # hosts: lowercase, a pattern without a port matches any port
    ("host", Operation(hosts=m("example.com")), MTLS, http(authority=b"example.com"), True),
    ("host case", Operation(hosts=m("example.com")), MTLS, http(authority=b"Example.COM"), True),
    (
        "host without port, authority with one",
        Operation(hosts=m("example.com")),
        MTLS,
        http(authority=b"Example.COM:8080"),
        True,
    ),
    (
        "host with port, same port",
        Operation(hosts=m("example.com:8080")),
        MTLS,
        http(authority=b"example.com:8080"),
        True,
    ),
    (
        "host with port, other port",
        Operation(hosts=m("example.com:8080")),
        MTLS,
        http(authority=b"example.com:9090"),
        False,
    ),
    (
        "host with port, authority without one",
        Operation(hosts=m("example.com:8080")),
        MTLS,
        http(authority=b"example.com"),
        False,
    ),
    (
        "host trailing dot",
        Operation(hosts=m("example.com")),
        MTLS,
        http(authority=b"example.com."),
        True,
    ),
    (
        "host trailing dot and port",
        Operation(hosts=m("example.com")),
        MTLS,
        http(authority=b"example.com.:8080"),
        True,
    ),
    ("host other", Operation(hosts=m("example.com")), MTLS, http(authority=b"evil.com"), False),
    (
        "host other, with port",
        Operation(hosts=m("example.com")),
        MTLS,
        http(authority=b"evil.com:8080"),
        False,
    ),
    (
        "host is not a prefix match",
        Operation(hosts=m("example.com")),
        MTLS,
        http(authority=b"example.com.evil.com"),
        False,
    ),
    (
        "host suffix pattern with port",
        Operation(hosts=m("*.example.com")),
        MTLS,
        http(authority=b"API.example.com:443"),
        True,
    ),
    (
        "host prefix pattern",
        Operation(hosts=m("example.*")),
        MTLS,
        http(authority=b"example.org:80"),
        True,
    ),
    ("host ipv6 literal", Operation(hosts=m("[::1]")), MTLS, http(authority=b"[::1]:8080"), True),
    ("host * without a host", Operation(hosts=m("*")), MTLS, http(authority=None), False),
    ("host * with a host", Operation(hosts=m("*")), MTLS, http(authority=b"x"), True),
    (
        "not_hosts ignores the port",
        Operation(not_hosts=m("example.com")),
        MTLS,
        http(authority=b"EXAMPLE.com:8080"),
        False,
    ),
    ("not_hosts other", Operation(not_hosts=m("example.com")), MTLS, http(authority=b"a.b"), True),
    ("not_hosts * without a host", Operation(not_hosts=m("*")), MTLS, http(authority=None), True),
    # fields of one operation: all of them
    (
        "method and path",
        Operation(methods=m("GET"), paths=m("/admin*")),
        MTLS,
        http("GET", "/admin/x"),
        True,
    ),
    (
        "path but not method",
        Operation(methods=m("GET"), paths=m("/admin*")),
        MTLS,
        http("POST", "/admin/x"),
        False,
    ),
    (
        "method but not path",
        Operation(methods=m("GET"), paths=m("/admin*")),
        MTLS,
        http("GET", "/api"),
        False,
    ),
    (
        "method and path but not port",
        Operation(ports=(8080,), methods=m("GET"), paths=m("/admin*")),
        OTHER_PORT,
        http("GET", "/admin"),
        False,
    ),
    (
        "host but not path",
        Operation(hosts=m("example.com"), paths=m("/a")),
        MTLS,
        http(path="/b", authority=b"example.com"),
        False,
    ),
    ("empty operation: anything", Operation(), MTLS, GET, True),
]


@pytest.mark.parametrize(
    ("operation", "peer", "request_", "matches"),
    [case[1:] for case in OPERATIONS],
    ids=[case[0] for case in OPERATIONS],
)
def test_operations(
    operation: Operation, peer: Peer, request_: HttpAttributes, matches: bool
) -> None:
    check_both_ways(Rule(operations=(operation,)), peer, request_, matches)


# --- conditions ----------------------------------------------------------------------------

TENANT_BLUE = http(headers=((b"x-tenant", b"blue"),))
TENANT_RED = http(headers=((b"x-tenant", b"red"),))
NO_TENANT = http(headers=((b"x-other", b"blue"),))

CONDITIONS: list[tuple[str, Condition, Peer, HttpAttributes, bool]] = [
    ("source.ip", Condition("source.ip", networks=nets("10.0.0.0/8")), MTLS, GET, True),
    ("source.ip other", Condition("source.ip", networks=nets("192.168.0.0/16")), MTLS, GET, False),
    (
        "source.ip not_values",
        Condition("source.ip", not_networks=nets("10.0.0.5")),
        MTLS,
        GET,
        False,
    ),
    ("source.ip ipv6", Condition("source.ip", networks=nets("fd00::/8")), V6, GET, True),
    ("source.ip ipv4-mapped", Condition("source.ip", networks=nets("10.0.0.5")), MAPPED, GET, True),
    ("source.namespace", Condition("source.namespace", values=m("default")), MTLS, GET, True),
    (
        "source.namespace other",
        Condition("source.namespace", values=m("default")),
        PROD,
        GET,
        False,
    ),
    ("source.namespace plaintext", Condition("source.namespace", values=m("*")), PLAIN, GET, False),
    (
        "source.namespace not_values",
        Condition("source.namespace", not_values=m("default")),
        MTLS,
        GET,
        False,
    ),
    (
        "source.principal",
        Condition("source.principal", values=m("cluster.local/ns/prod/sa/admin")),
        PROD,
        GET,
        True,
    ),
    (
        "source.principal prefix",
        Condition("source.principal", values=m("cluster.local/ns/default/*")),
        PROD,
        GET,
        False,
    ),
    ("source.principal plaintext", Condition("source.principal", values=m("*")), PLAIN, GET, False),
    (
        "source.principal not_values plaintext",
        Condition("source.principal", not_values=m("*")),
        PLAIN,
        GET,
        True,
    ),
    ("destination.port", Condition("destination.port", values=m("8080")), MTLS, GET, True),
    ("destination.port other", Condition("destination.port", values=m("9090")), MTLS, GET, False),
    (
        "destination.port not_values",
        Condition("destination.port", not_values=m("8080")),
        OTHER_PORT,
        GET,
        True,
    ),
    ("destination.ip", Condition("destination.ip", networks=nets("10.1.0.0/16")), MTLS, GET, True),
    (
        "destination.ip other",
        Condition("destination.ip", networks=nets("10.2.0.0/16")),
        MTLS,
        GET,
        False,
    ),
    (
        "destination.ip not_values",
        Condition("destination.ip", not_networks=nets("10.1.0.1")),
        MTLS,
        GET,
        False,
    ),
    (
        "destination.ip ipv4-mapped",
        Condition("destination.ip", networks=nets("10.1.0.1")),
        MAPPED,
        GET,
        True,
    ),
    # request headers: the lowercased name, the values joined as Envoy joins them
    (
        "header",
        Condition("request.headers", values=m("blue"), header="x-tenant"),
        MTLS,
        TENANT_BLUE,
        True,
    ),
    (
        "header other value",
        Condition("request.headers", values=m("blue"), header="x-tenant"),
        MTLS,
        TENANT_RED,
        False,
    ),
    (
        "header missing",
        Condition("request.headers", values=m("blue"), header="x-tenant"),
        MTLS,
        NO_TENANT,
        False,
    ),
    (
        "header * missing",
        Condition("request.headers", values=m("*"), header="x-tenant"),
        MTLS,
        NO_TENANT,
        False,
    ),
    (
        "header * present",
        Condition("request.headers", values=m("*"), header="x-tenant"),
        MTLS,
        TENANT_RED,
        True,
    ),
    (
        "header prefix",
        Condition("request.headers", values=m("bl*"), header="x-tenant"),
        MTLS,
        TENANT_BLUE,
        True,
    ),
    (
        "header values any of",
        Condition("request.headers", values=m("red", "blue"), header="x-tenant"),
        MTLS,
        TENANT_RED,
        True,
    ),
    (
        "header is case-sensitive",
        Condition("request.headers", values=m("Blue"), header="x-tenant"),
        MTLS,
        TENANT_BLUE,
        False,
    ),
    (
        "header not_values",
        Condition("request.headers", not_values=m("red"), header="x-tenant"),
        MTLS,
        TENANT_RED,
        False,
    ),
    (
        "header not_values other",
        Condition("request.headers", not_values=m("red"), header="x-tenant"),
        MTLS,
        TENANT_BLUE,
        True,
    ),
    (
        "header not_values missing",
        Condition("request.headers", not_values=m("red"), header="x-tenant"),
        MTLS,
        NO_TENANT,
        True,
    ),
    (
        "header values and not_values",
        Condition("request.headers", values=m("*"), not_values=m("red"), header="x-tenant"),
        MTLS,
        TENANT_RED,
        False,
    ),
    (
        "header on two lines is one joined value",
        Condition("request.headers", values=m("blue"), header="x-tenant"),
        MTLS,
        http(headers=((b"x-tenant", b"blue"), (b"x-tenant", b"red"))),
        False,
    ),
    (
        "header on two lines, joined, prefix",
        Condition("request.headers", values=m("blue,*"), header="x-tenant"),
        MTLS,
        http(headers=((b"x-tenant", b"blue"), (b"x-tenant", b"red"))),
        True,
    ),
]


@pytest.mark.parametrize(
    ("condition", "peer", "request_", "matches"),
    [case[1:] for case in CONDITIONS],
    ids=[case[0] for case in CONDITIONS],
)
def test_conditions(
    condition: Condition, peer: Peer, request_: HttpAttributes, matches: bool
) -> None:
    check_both_ways(Rule(conditions=(condition,)), peer, request_, matches)


# --- a rule: from (any), to (any), when (all), together ----------------------------------

FROM_PROD = Source(namespaces=m("prod"))
FROM_10_0_0_5 = Source(ip_blocks=nets("10.0.0.5"))
TO_GET = Operation(methods=m("GET"))
TO_ADMIN = Operation(paths=m("/admin*"))
BLUE = Condition("request.headers", values=m("blue"), header="x-tenant")
IN_DEFAULT = Condition("source.namespace", values=m("default"))

RULES: list[tuple[str, Rule, Peer, HttpAttributes, bool]] = [
    ("from: first source", Rule(sources=(FROM_PROD, FROM_10_0_0_5)), PROD, GET, True),
    ("from: second source", Rule(sources=(FROM_PROD, FROM_10_0_0_5)), MTLS, GET, True),
    ("from: neither", Rule(sources=(FROM_PROD, FROM_10_0_0_5)), V6, GET, False),
    ("to: first operation", Rule(operations=(TO_GET, TO_ADMIN)), MTLS, GET, True),
    (
        "to: second operation",
        Rule(operations=(TO_GET, TO_ADMIN)),
        MTLS,
        http("POST", "/admin"),
        True,
    ),
    ("to: neither", Rule(operations=(TO_GET, TO_ADMIN)), MTLS, http("POST", "/api"), False),
    ("when: all", Rule(conditions=(BLUE, IN_DEFAULT)), MTLS, TENANT_BLUE, True),
    ("when: one fails", Rule(conditions=(BLUE, IN_DEFAULT)), MTLS, TENANT_RED, False),
    ("when: the other fails", Rule(conditions=(BLUE, IN_DEFAULT)), PROD, TENANT_BLUE, False),
    (
        "from, to and when",
        Rule(sources=(FROM_PROD,), operations=(TO_GET,), conditions=(BLUE,)),
        PROD,
        http(headers=((b"x-tenant", b"blue"),)),
        True,
    ),
    (
        "from and to but not when",
        Rule(sources=(FROM_PROD,), operations=(TO_GET,), conditions=(BLUE,)),
        PROD,
        GET,
        False,
    ),
    (
        "from and when but not to",
        Rule(sources=(FROM_PROD,), operations=(TO_GET,), conditions=(BLUE,)),
        PROD,
        http("POST", headers=((b"x-tenant", b"blue"),)),
        False,
    ),
    (
        "to and when but not from",
        Rule(sources=(FROM_PROD,), operations=(TO_GET,), conditions=(BLUE,)),
        MTLS,
        TENANT_BLUE,
        False,
    ),
]


@pytest.mark.parametrize(
    ("rule", "peer", "request_", "matches"),
    [case[1:] for case in RULES],
    ids=[case[0] for case in RULES],
)
def test_rules(rule: Rule, peer: Peer, request_: HttpAttributes, matches: bool) -> None:
    check_both_ways(rule, peer, request_, matches)


# --- TCP connections: no HTTP attributes -------------------------------------------------

GET_ONLY = Operation(methods=m("GET"))
PORT_8080 = Operation(ports=(8080,))
PORT_8080_POST = Operation(ports=(8080,), methods=m("POST"))
TENANT = Condition("request.headers", values=m("blue"), header="x-tenant")
FROM_MTLS_IP = Condition("source.ip", networks=nets("10.0.0.5"))

# (id, action, rule, peer, matches over TCP)
TCP: list[tuple[str, Action, Rule, Peer, bool]] = [
    # ALLOW: a rule naming anything HTTP never matches a connection
    ("allow ports only", Action.ALLOW, Rule(operations=(PORT_8080,)), MTLS, True),
    (
        "allow ports only, other port",
        Action.ALLOW,
        Rule(operations=(PORT_8080,)),
        OTHER_PORT,
        False,
    ),
    ("allow methods", Action.ALLOW, Rule(operations=(GET_ONLY,)), MTLS, False),
    ("allow ports and methods", Action.ALLOW, Rule(operations=(PORT_8080_POST,)), MTLS, False),
    ("allow paths", Action.ALLOW, Rule(operations=(Operation(paths=m("*")),)), MTLS, False),
    (
        "allow not_paths",
        Action.ALLOW,
        Rule(operations=(Operation(not_paths=m("/x")),)),
        MTLS,
        False,
    ),
    ("allow hosts", Action.ALLOW, Rule(operations=(Operation(hosts=m("*")),)), MTLS, False),
    ("allow not_hosts", Action.ALLOW, Rule(operations=(Operation(not_hosts=m("x")),)), MTLS, False),
    (
        "allow not_methods",
        Action.ALLOW,
        Rule(operations=(Operation(not_methods=m("X")),)),
        MTLS,
        False,
    ),
    (
        "allow ports in one operation, methods in another",
        Action.ALLOW,
        Rule(operations=(PORT_8080, GET_ONLY)),
        MTLS,
        False,
    ),
    ("allow header condition", Action.ALLOW, Rule(conditions=(TENANT,)), MTLS, False),
    (
        "allow source and header condition",
        Action.ALLOW,
        Rule(sources=(Source(principals=m("*")),), conditions=(TENANT,)),
        MTLS,
        False,
    ),
    ("allow source only", Action.ALLOW, Rule(sources=(Source(principals=m("*")),)), MTLS, True),
    (
        "allow source only, plaintext",
        Action.ALLOW,
        Rule(sources=(Source(principals=m("*")),)),
        PLAIN,
        False,
    ),
    ("allow tcp condition", Action.ALLOW, Rule(conditions=(FROM_MTLS_IP,)), MTLS, True),
    # DENY: the HTTP parts are left out, the rest must match
    ("deny methods", Action.DENY, Rule(operations=(GET_ONLY,)), MTLS, True),
    ("deny ports and methods", Action.DENY, Rule(operations=(PORT_8080_POST,)), MTLS, True),
    (
        "deny ports and methods, other port",
        Action.DENY,
        Rule(operations=(PORT_8080_POST,)),
        OTHER_PORT,
        False,
    ),
    ("deny header condition", Action.DENY, Rule(conditions=(TENANT,)), MTLS, True),
    (
        "deny header and ip conditions",
        Action.DENY,
        Rule(conditions=(TENANT, FROM_MTLS_IP)),
        MTLS,
        True,
    ),
    (
        "deny header and ip conditions, other ip",
        Action.DENY,
        Rule(conditions=(TENANT, FROM_MTLS_IP)),
        PROD,
        False,
    ),
    (
        "deny paths from a principal",
        Action.DENY,
        Rule(sources=(Source(principals=m("*/sa/admin")),), operations=(TO_ADMIN,)),
        PROD,
        True,
    ),
    (
        "deny paths from a principal, other caller",
        Action.DENY,
        Rule(sources=(Source(principals=m("*/sa/admin")),), operations=(TO_ADMIN,)),
        MTLS,
        False,
    ),
]


@pytest.mark.parametrize(
    ("action", "rule", "peer", "matches"),
    [case[1:] for case in TCP],
    ids=[case[0] for case in TCP],
)
def test_tcp_connections(action: Action, rule: Rule, peer: Peer, matches: bool) -> None:
    """Istio's rule: a policy never lets more through over TCP than over HTTP."""
    verdict = Authorizer([AuthorizationPolicy("p", action, (rule,))]).check(peer)
    if action is Action.ALLOW:
        assert verdict == (Verdict(True, "p") if matches else DENIED_BY_DEFAULT)
    else:
        assert verdict == (Verdict(False, "p") if matches else ALLOWED_BY_DEFAULT)


def test_the_same_allow_rule_matches_http_but_not_tcp() -> None:
    """The ALLOW rule that lets a GET in does not open the port to raw TCP."""
    authorizer = Authorizer([allow(Rule(operations=(PORT_8080_POST,)), name="posts")])
    assert authorizer.check(MTLS, http("POST")) == Verdict(True, "posts")
    assert authorizer.check(MTLS) == DENIED_BY_DEFAULT


def test_the_same_deny_rule_is_narrower_over_http_than_tcp() -> None:
    """The DENY on POSTs to 8080 lets a GET through, but a TCP connection to 8080 (which
    could carry a POST) is refused."""
    authorizer = Authorizer([deny(Rule(operations=(PORT_8080_POST,)), name="no-posts")])
    assert authorizer.check(MTLS, http("GET")) == ALLOWED_BY_DEFAULT
    assert authorizer.check(MTLS, http("POST")) == Verdict(False, "no-posts")
    assert authorizer.check(MTLS) == Verdict(False, "no-posts")


def test_an_http_only_rule_of_an_allow_policy_does_not_hide_its_other_rules() -> None:
    policy = allow(Rule(operations=(GET_ONLY,)), Rule(operations=(PORT_8080,)), name="mixed")
    assert Authorizer([policy]).check(MTLS) == Verdict(True, "mixed")
    assert Authorizer([policy]).check(OTHER_PORT) == DENIED_BY_DEFAULT


# --- with the path normalisation, as the hook builds the request ---------------------------


def as_the_hook_sees_it(target: bytes, mode: EscapedSlashes) -> HttpAttributes:
    """The pipeline normalises the target, the hook matches its path (query excluded)."""
    path = normal_target(target, mode).partition(b"?")[0]
    return http(path=path.decode("latin-1"))


DENY_ADMIN = deny(Rule(operations=(Operation(paths=m("/admin*")),)), name="deny-admin")
UNESCAPE = EscapedSlashes.UNESCAPE_AND_FORWARD


@pytest.mark.parametrize(
    "target",
    [
        b"/admin",
        b"/admin/users?x=1",
        b"/public%2F..%2Fadmin",  # CVE-2021-31920
        b"/public%5C..%5Cadmin",
        b"/public%2f..%2fadmin/users",
        b"/admin#anything",  # CVE-2021-39156
        b"/public/../admin",
        b"/public\\..\\admin",
        b"//admin",
        b"/./admin",
        b"/%61dmin",
        b"/%2E%2E/admin",
        b"http://backend/public/../admin",
    ],
)
def test_every_spelling_of_admin_is_denied(target: bytes) -> None:
    verdict = Authorizer([DENY_ADMIN]).check(MTLS, as_the_hook_sees_it(target, UNESCAPE))
    assert verdict == Verdict(False, "deny-admin")


@pytest.mark.parametrize(
    "target", [b"/", b"/public/admin", b"/administrator/../api", b"/api?next=/admin"]
)
def test_other_paths_are_not_denied(target: bytes) -> None:
    verdict = Authorizer([DENY_ADMIN]).check(MTLS, as_the_hook_sees_it(target, UNESCAPE))
    assert verdict == ALLOWED_BY_DEFAULT


def test_an_allow_on_public_does_not_let_in_a_path_that_climbs_out_of_it() -> None:
    authorizer = Authorizer([allow(Rule(operations=(Operation(paths=m("/public/*")),)))])
    assert authorizer.check(MTLS, as_the_hook_sees_it(b"/public/a", UNESCAPE)).allowed
    climbing = as_the_hook_sees_it(b"/public/..%2Fadmin", UNESCAPE)
    assert climbing.path == "/admin"
    assert authorizer.check(MTLS, climbing) == DENIED_BY_DEFAULT


def test_paths_are_case_sensitive_as_in_istio() -> None:
    """Istio matches paths case-sensitively (Envoy's path matcher, ignore_case false): a
    DENY on /admin does not match /ADMIN. An app that serves /ADMIN as /admin needs a policy
    on both spellings (or an ALLOW list instead of a DENY)."""
    authorizer = Authorizer([DENY_ADMIN])
    assert authorizer.check(MTLS, as_the_hook_sees_it(b"/ADMIN", UNESCAPE)) == ALLOWED_BY_DEFAULT
    assert authorizer.check(MTLS, as_the_hook_sees_it(b"/Admin/x", UNESCAPE)) == ALLOWED_BY_DEFAULT
    assert authorizer.check(MTLS, as_the_hook_sees_it(b"/admin", UNESCAPE)).allowed is False
