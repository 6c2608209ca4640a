"""workload.authorization_policies and workload.path_normalization in the mesh file.

A valid file becomes the policy model exactly; every refusal names the document path and
the value found there (what an operator reads to find the mistake), and what Detour cannot
check is refused by name rather than ignored.
"""

from __future__ import annotations

import copy
import ipaddress
import textwrap
from typing import Any

import pytest
import yaml

from proxy.config.loader import MeshConfigError, parse_mesh
from proxy.config.model import Workload
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

SOURCE = "mesh.yaml"
P = "workload.authorization_policies"
R = f"{P}[0].rules[0]"
SRC = f"{R}.from[0].source"
OP = f"{R}.to[0].operation"
WHEN = f"{R}.when[0]"


def workload(document: dict[str, Any] | str) -> Workload:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    return parse_mesh(text, SOURCE).workload


def refusal(document: dict[str, Any] | str) -> MeshConfigError:
    with pytest.raises(MeshConfigError) as caught:
        workload(document)
    return caught.value


def policies(*entries: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"workload": {"authorization_policies": list(entries), **fields}}


def policy(**fields: Any) -> dict[str, Any]:
    return {"name": "p", **fields}


def one_rule(**rule: Any) -> dict[str, Any]:
    return policies(policy(rules=[rule]))


def source(**fields: Any) -> dict[str, Any]:
    return one_rule(**{"from": [{"source": fields}]})


def operation(**fields: Any) -> dict[str, Any]:
    return one_rule(to=[{"operation": fields}])


def condition(**fields: Any) -> dict[str, Any]:
    return one_rule(when=[fields])


def m(*texts: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(text) for text in texts)


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


# --- a valid file --------------------------------------------------------------------------

FULL = textwrap.dedent(
    """\
    workload:
      name: backend
      path_normalization: {escaped_slashes: UNESCAPE_AND_FORWARD}
      authorization_policies:
        - name: deny-admin
          action: DENY
          rules:
            - to: [{operation: {paths: ["/admin*"], not_ports: [9901]}}]
        - name: frontend-reads
          rules:
            - from:
                - source:
                    principals: ["cluster.local/ns/default/sa/frontend", "spiffe://td/ns/x/sa/*"]
                    not_principals: ["*/sa/legacy"]
                    namespaces: ["default", "team-*"]
                    not_namespaces: ["*-test"]
                    ip_blocks: ["10.0.0.0/8", "fd00::1", " 192.168.1.7 "]
                    not_ip_blocks: ["10.9.0.0/16"]
                - source: {principals: ["*"]}
              to:
                - operation:
                    methods: [GET, HEAD]
                    not_methods: ["DEL*"]
                    paths: ["/api/*", "*.css", "/health"]
                    not_paths: ["/api/internal/*"]
                    hosts: ["Example.COM", "api.example.com.", "*.example.com:8080"]
                    not_hosts: ["evil.*"]
                    ports: [8080, "8443"]
                - operation: {ports: ["9090"]}
              when:
                - key: "request.headers[X-Tenant]"
                  values: ["blue", "green*"]
                  not_values: ["*-old"]
                - {key: source.ip, values: ["10.0.0.0/8"], not_values: ["10.0.0.1"]}
                - {key: destination.ip, values: ["10.1.0.1"]}
                - {key: source.namespace, values: ["default"]}
                - {key: source.principal, not_values: ["spiffe://cluster.local/ns/a/sa/b"]}
                - {key: destination.port, values: ["8080", "8443"]}
        - name: everyone
          action: ALLOW
          rules: [{}]
        - name: nobody
    """
)

FULL_MODEL = (
    AuthorizationPolicy(
        "deny-admin",
        Action.DENY,
        (Rule(operations=(Operation(paths=m("/admin*"), not_ports=(9901,)),)),),
    ),
    AuthorizationPolicy(
        "frontend-reads",
        Action.ALLOW,
        (
            Rule(
                sources=(
                    Source(
                        principals=m("cluster.local/ns/default/sa/frontend", "td/ns/x/sa/*"),
                        not_principals=m("*/sa/legacy"),
                        namespaces=m("default", "team-*"),
                        not_namespaces=m("*-test"),
                        ip_blocks=nets("10.0.0.0/8", "fd00::1/128", "192.168.1.7/32"),
                        not_ip_blocks=nets("10.9.0.0/16"),
                    ),
                    Source(principals=(StringMatch("present", ""),)),
                ),
                operations=(
                    Operation(
                        methods=m("GET", "HEAD"),
                        not_methods=m("DEL*"),
                        paths=m("/api/*", "*.css", "/health"),
                        not_paths=m("/api/internal/*"),
                        hosts=m("example.com", "api.example.com", "*.example.com:8080"),
                        not_hosts=m("evil.*"),
                        ports=(8080, 8443),
                    ),
                    Operation(ports=(9090,)),
                ),
                conditions=(
                    Condition(
                        "request.headers",
                        values=m("blue", "green*"),
                        not_values=m("*-old"),
                        header="x-tenant",
                    ),
                    Condition(
                        "source.ip", networks=nets("10.0.0.0/8"), not_networks=nets("10.0.0.1/32")
                    ),
                    Condition("destination.ip", networks=nets("10.1.0.1/32")),
                    Condition("source.namespace", values=m("default")),
                    Condition("source.principal", not_values=m("cluster.local/ns/a/sa/b")),
                    Condition("destination.port", values=m("8080", "8443")),
                ),
            ),
        ),
    ),
    AuthorizationPolicy("everyone", Action.ALLOW, (Rule(),)),
    AuthorizationPolicy("nobody", Action.ALLOW, ()),
)


def test_a_full_file_becomes_the_model() -> None:
    parsed = workload(FULL)
    assert parsed.authorization_policies == FULL_MODEL
    assert parsed.escaped_slashes is EscapedSlashes.UNESCAPE_AND_FORWARD


def test_the_module_docstring_example_parses() -> None:
    """The YAML shape the module documents is accepted as documented."""
    from proxy.config import authorization

    doc = authorization.__doc__
    assert doc is not None
    example = textwrap.dedent(doc.split("\n\n", 1)[1].split("\n\n", 1)[0])
    parsed = workload(example)
    assert [p.name for p in parsed.authorization_policies] == ["deny-admin", "frontend-reads"]
    assert parsed.authorization_policies[1].rules[0].conditions[0].header == "x-tenant"


def test_without_the_sections_nothing_is_checked_and_escaped_slashes_are_rejected() -> None:
    parsed = workload({"workload": {"name": "backend"}})
    assert parsed.authorization_policies == ()
    assert parsed.escaped_slashes is EscapedSlashes.REJECT_REQUEST
    assert workload("").escaped_slashes is EscapedSlashes.REJECT_REQUEST


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (None, EscapedSlashes.REJECT_REQUEST),
        ({}, EscapedSlashes.REJECT_REQUEST),
        ({"escaped_slashes": "REJECT_REQUEST"}, EscapedSlashes.REJECT_REQUEST),
        ({"escaped_slashes": "UNESCAPE_AND_FORWARD"}, EscapedSlashes.UNESCAPE_AND_FORWARD),
        ({"escaped_slashes": "KEEP_UNCHANGED"}, EscapedSlashes.KEEP_UNCHANGED),
    ],
)
def test_path_normalization(section: dict[str, str] | None, expected: EscapedSlashes) -> None:
    assert workload({"workload": {"path_normalization": section}}).escaped_slashes is expected


@pytest.mark.parametrize(
    "rule",
    [
        {"to": [{"operation": {"methods": ["GET"], "ports": [8080]}}]},
        {"to": [{"operation": {"hosts": ["example.com"]}}]},
        {"from": [{"source": {"principals": ["*"]}}]},
        {"when": [{"key": "request.headers[x-path]", "values": ["/a"]}]},
    ],
)
def test_keep_unchanged_is_accepted_without_a_policy_on_paths(rule: dict[str, Any]) -> None:
    document = policies(
        policy(rules=[rule]), path_normalization={"escaped_slashes": "KEEP_UNCHANGED"}
    )
    assert workload(document).escaped_slashes is EscapedSlashes.KEEP_UNCHANGED


def test_policy_defaults() -> None:
    (parsed,) = workload(policies({"name": "p"})).authorization_policies
    assert parsed == AuthorizationPolicy("p", Action.ALLOW, ())


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (source(principals=["spiffe://cluster.local/ns/a/sa/b"]), m("cluster.local/ns/a/sa/b")),
        (source(principals=["spiffe://*"]), m("*")),
        (source(not_principals=["spiffe://td/ns/*"]), m("td/ns/*")),
    ],
)
def test_a_spiffe_prefix_is_taken_off_principals(
    document: dict[str, Any], expected: tuple[StringMatch, ...]
) -> None:
    (rule,) = workload(document).authorization_policies[0].rules
    (src,) = rule.sources
    assert (src.principals or src.not_principals) == expected


@pytest.mark.parametrize(
    ("value", "port"), [(8080, 8080), ("8080", 8080), ("1", 1), (65535, 65535)]
)
def test_ports_as_numbers_or_strings(value: object, port: int) -> None:
    (rule,) = workload(operation(ports=[value], not_ports=[value])).authorization_policies[0].rules
    assert rule.operations == (Operation(ports=(port,), not_ports=(port,)),)


# --- refusals --------------------------------------------------------------------------------

KEEP = {"escaped_slashes": "KEEP_UNCHANGED"}
PATHS_RULE = {"to": [{"operation": {"paths": ["/api/*"]}}]}
NOT_PATHS_RULE = {"to": [{"operation": {"not_paths": ["/admin"]}}]}

REFUSALS: list[tuple[str, dict[str, Any] | str, str, object, str]] = [
    # shapes
    (
        "policies not a list",
        {"workload": {"authorization_policies": {"name": "p"}}},
        P,
        {"name": "p"},
        "expected a list",
    ),
    ("policy not a mapping", policies("p"), f"{P}[0]", "p", "expected a mapping"),
    (
        "rules not a list",
        policies(policy(rules={"to": []})),
        f"{P}[0].rules",
        {"to": []},
        "expected a list",
    ),
    ("rule not a mapping", policies(policy(rules=["x"])), R, "x", "expected a mapping"),
    (
        "from entry without source",
        one_rule(**{"from": [{}]}),
        f"{R}.from[0].source",
        None,
        "required",
    ),
    ("to entry without operation", one_rule(to=[{}]), f"{R}.to[0].operation", None, "required"),
    (
        "source not a mapping",
        one_rule(**{"from": [{"source": ["a"]}]}),
        SRC,
        ["a"],
        "expected a mapping",
    ),
    ("values not a list", source(principals="*"), f"{SRC}.principals", "*", "expected a list"),
    ("value not a string", source(namespaces=[3]), f"{SRC}.namespaces[0]", 3, "expected a string"),
    # unknown keys, with did-you-mean
    ("unknown policy key", policies(policy(rule=[])), f"{P}[0].rule", [], "did you mean 'rules'?"),
    ("unknown rule key", one_rule(form=[]), f"{R}.form", [], "did you mean 'from'?"),
    (
        "unknown source key",
        source(principal=["*"]),
        f"{SRC}.principal",
        ["*"],
        "did you mean 'principals'?",
    ),
    (
        "unknown operation key",
        operation(method=["GET"]),
        f"{OP}.method",
        ["GET"],
        "did you mean 'methods'?",
    ),
    ("camelCase key", operation(notPaths=["/a"]), f"{OP}.notPaths", ["/a"], "unknown key"),
    (
        "unknown condition field",
        condition(key="source.ip", value=["1.2.3.4"]),
        f"{WHEN}.value",
        ["1.2.3.4"],
        "did you mean 'values'?",
    ),
    (
        "unknown path_normalization key",
        {"workload": {"path_normalization": {"escaped_slash": "x"}}},
        "workload.path_normalization.escaped_slash",
        "x",
        "did you mean 'escaped_slashes'?",
    ),
    # names
    ("policy without a name", policies({"action": "DENY"}), f"{P}[0].name", None, "required"),
    (
        "policy name not a DNS label",
        policies({"name": "Deny_Admin"}),
        f"{P}[0].name",
        "Deny_Admin",
        "DNS label",
    ),
    (
        "duplicate policy name",
        policies({"name": "a"}, {"name": "b"}, {"name": "a"}),
        f"{P}[2].name",
        "a",
        "duplicate policy name (also workload.authorization_policies[0])",
    ),
    # actions
    ("AUDIT action", policies(policy(action="AUDIT")), f"{P}[0].action", "AUDIT", "not supported"),
    (
        "CUSTOM action",
        policies(policy(action="CUSTOM")),
        f"{P}[0].action",
        "CUSTOM",
        "not supported",
    ),
    (
        "lowercase action",
        policies(policy(action="allow")),
        f"{P}[0].action",
        "allow",
        "ALLOW, DENY",
    ),
    # what Detour cannot check, refused by name
    (
        "selector",
        policies(policy(selector={"matchLabels": {"app": "x"}})),
        f"{P}[0].selector",
        {"matchLabels": {"app": "x"}},
        "not supported",
    ),
    (
        "provider",
        policies(policy(provider={"name": "ext-authz"})),
        f"{P}[0].provider",
        {"name": "ext-authz"},
        "CUSTOM",
    ),
    (
        "request_principals",
        source(request_principals=["*"]),
        f"{SRC}.request_principals",
        ["*"],
        "JWT",
    ),
    (
        "not_request_principals",
        source(not_request_principals=["*"]),
        f"{SRC}.not_request_principals",
        ["*"],
        "JWT",
    ),
    (
        "remote_ip_blocks",
        source(remote_ip_blocks=["10.0.0.0/8"]),
        f"{SRC}.remote_ip_blocks",
        ["10.0.0.0/8"],
        "use ip_blocks",
    ),
    (
        "not_remote_ip_blocks",
        source(not_remote_ip_blocks=["10.0.0.0/8"]),
        f"{SRC}.not_remote_ip_blocks",
        ["10.0.0.0/8"],
        "use not_ip_blocks",
    ),
    (
        "request.auth.claims condition",
        condition(key="request.auth.claims[iss]", values=["x"]),
        f"{WHEN}.key",
        "request.auth.claims[iss]",
        "JWT",
    ),
    (
        "request.auth.principal condition",
        condition(key="request.auth.principal", values=["x"]),
        f"{WHEN}.key",
        "request.auth.principal",
        "JWT",
    ),
    # conditions
    (
        "unknown condition key",
        condition(key="source.port", values=["1"]),
        f"{WHEN}.key",
        "source.port",
        "unknown key (expected one of: source.ip",
    ),
    (
        "condition header without a name",
        condition(key="request.headers[]", values=["x"]),
        f"{WHEN}.key",
        "request.headers[]",
        "request.headers[NAME]",
    ),
    (
        "condition header name with a space",
        condition(key="request.headers[x y]", values=["x"]),
        f"{WHEN}.key",
        "request.headers[x y]",
        "unknown key",
    ),
    ("condition without a key", condition(values=["x"]), f"{WHEN}.key", None, "required"),
    (
        "condition key not a string",
        condition(key=7, values=["x"]),
        f"{WHEN}.key",
        7,
        "expected a string",
    ),
    (
        "condition without values",
        condition(key="source.ip"),
        WHEN,
        {"key": "source.ip"},
        "needs values or not_values",
    ),
    (
        "condition with empty values",
        condition(key="source.ip", values=[]),
        WHEN,
        {"key": "source.ip", "values": []},
        "needs values or not_values",
    ),
    (
        "condition with empty not_values",
        condition(key="source.namespace", not_values=[]),
        WHEN,
        {"key": "source.namespace", "not_values": []},
        "needs values or not_values",
    ),
    (
        "condition bad source.ip",
        condition(key="source.ip", values=["10.0.0.300"]),
        f"{WHEN}.values[0]",
        "10.0.0.300",
        "not an IP address or CIDR block",
    ),
    (
        "condition bad destination.ip",
        condition(key="destination.ip", not_values=["nope"]),
        f"{WHEN}.not_values[0]",
        "nope",
        "not an IP address",
    ),
    (
        "condition bad destination.port",
        condition(key="destination.port", values=["http"]),
        f"{WHEN}.values[0]",
        "http",
        "not a port number",
    ),
    (
        "condition destination.port pattern",
        condition(key="destination.port", values=["80*"]),
        f"{WHEN}.values[0]",
        "80*",
        "not a port number",
    ),
    (
        "condition destination.port 0",
        condition(key="destination.port", values=["0"]),
        f"{WHEN}.values[0]",
        "0",
        "not a port number",
    ),
    (
        "condition bad source.principal",
        condition(key="source.principal", values=["frontend"]),
        f"{WHEN}.values[0]",
        "frontend",
        "not a principal",
    ),
    (
        "condition * in the middle",
        condition(key="request.headers[x]", values=["a*b"]),
        f"{WHEN}.values[0]",
        "a*b",
        "'*' may only stand alone, first or last",
    ),
    # principals
    (
        "* in the middle of a principal",
        source(principals=["cluster.local/*/sa/x"]),
        f"{SRC}.principals[0]",
        "cluster.local/*/sa/x",
        "'*' may only stand alone, first or last",
    ),
    (
        "* on both ends of a principal",
        source(principals=["*/ns/*"]),
        f"{SRC}.principals[0]",
        "*/ns/*",
        "'*' may only",
    ),
    (
        "* in a spiffe principal",
        source(principals=["spiffe://td/*/sa/x"]),
        f"{SRC}.principals[0]",
        "spiffe://td/*/sa/x",
        "'*' may only",
    ),
    (
        "exact principal not a principal",
        source(principals=["frontend"]),
        f"{SRC}.principals[0]",
        "frontend",
        "not a principal (trust-domain/ns/NAMESPACE/sa/ACCOUNT",
    ),
    (
        "exact principal missing sa",
        source(not_principals=["cluster.local/ns/default"]),
        f"{SRC}.not_principals[0]",
        "cluster.local/ns/default",
        "not a principal",
    ),
    (
        "spiffe principal not a principal",
        source(principals=["spiffe://frontend"]),
        f"{SRC}.principals[0]",
        "spiffe://frontend",
        "not a principal",
    ),
    ("empty principal", source(principals=[""]), f"{SRC}.principals[0]", "", "empty"),
    (
        "empty namespace",
        source(namespaces=["ok", ""]),
        f"{SRC}.namespaces[1]",
        "",
        "empty (omit the field",
    ),
    (
        "* in the middle of a namespace",
        source(namespaces=["a*b"]),
        f"{SRC}.namespaces[0]",
        "a*b",
        "'*' may only",
    ),
    # ip blocks
    (
        "bad CIDR",
        source(ip_blocks=["10.0.0.0/33"]),
        f"{SRC}.ip_blocks[0]",
        "10.0.0.0/33",
        "not an IP address or CIDR block",
    ),
    (
        "bad address",
        source(not_ip_blocks=["10.0.0.0/8", "ten"]),
        f"{SRC}.not_ip_blocks[1]",
        "ten",
        "not an IP address or CIDR block",
    ),
    (
        "ip block not a string",
        source(ip_blocks=[10]),
        f"{SRC}.ip_blocks[0]",
        10,
        "expected a string",
    ),
    # ports
    ("port 0", operation(ports=[0]), f"{OP}.ports[0]", 0, "out of range (1-65535)"),
    ("port too big", operation(ports=[8080, 65536]), f"{OP}.ports[1]", 65536, "out of range"),
    (
        "port string too big",
        operation(not_ports=["70000"]),
        f"{OP}.not_ports[0]",
        70000,
        "out of range",
    ),
    ("port a name", operation(ports=["http"]), f"{OP}.ports[0]", "http", "expected an integer"),
    ("port a boolean", operation(ports=[True]), f"{OP}.ports[0]", True, "expected an integer"),
    (
        "port negative string",
        operation(ports=["-1"]),
        f"{OP}.ports[0]",
        "-1",
        "expected an integer",
    ),
    # methods
    (
        "lowercase method",
        operation(methods=["get"]),
        f"{OP}.methods[0]",
        "get",
        "not an HTTP method (uppercase",
    ),
    (
        "mixed-case not_method",
        operation(not_methods=["Post"]),
        f"{OP}.not_methods[0]",
        "Post",
        "not an HTTP method",
    ),
    (
        "method with a space",
        operation(methods=["GET "]),
        f"{OP}.methods[0]",
        "GET ",
        "not an HTTP method",
    ),
    (
        "* in the middle of a method",
        operation(methods=["G*T"]),
        f"{OP}.methods[0]",
        "G*T",
        "'*' may only",
    ),
    # paths
    (
        "path without a slash",
        operation(paths=["admin"]),
        f"{OP}.paths[0]",
        "admin",
        "a path starts with '/'",
    ),
    (
        "not_path without a slash",
        operation(not_paths=["/ok", "admin*"]),
        f"{OP}.not_paths[1]",
        "admin*",
        "starts with '/'",
    ),
    (
        "path with a query",
        operation(paths=["/a?b=1"]),
        f"{OP}.paths[0]",
        "/a?b=1",
        "without its query or fragment",
    ),
    (
        "path with a fragment",
        operation(paths=["/a#b"]),
        f"{OP}.paths[0]",
        "/a#b",
        "without its query or fragment",
    ),
    (
        "* in the middle of a path",
        operation(paths=["/api/*/items"]),
        f"{OP}.paths[0]",
        "/api/*/items",
        "'*' may only",
    ),
    ("empty path", operation(paths=[""]), f"{OP}.paths[0]", "", "empty"),
    # hosts
    (
        "* in the middle of a host",
        operation(hosts=["a.*.com"]),
        f"{OP}.hosts[0]",
        "a.*.com",
        "'*' may only",
    ),
    ("empty host", operation(not_hosts=[""]), f"{OP}.not_hosts[0]", "", "empty"),
    # path normalisation
    (
        "path_normalization unknown value",
        {"workload": {"path_normalization": {"escaped_slashes": "DECODE"}}},
        "workload.path_normalization.escaped_slashes",
        "DECODE",
        "expected one of: REJECT_REQUEST, UNESCAPE_AND_FORWARD, KEEP_UNCHANGED",
    ),
    (
        "path_normalization lowercase value",
        {"workload": {"path_normalization": {"escaped_slashes": "reject_request"}}},
        "workload.path_normalization.escaped_slashes",
        "reject_request",
        "expected one of",
    ),
    (
        "path_normalization not a mapping",
        {"workload": {"path_normalization": "REJECT_REQUEST"}},
        "workload.path_normalization",
        "REJECT_REQUEST",
        "expected a mapping",
    ),
    (
        "KEEP_UNCHANGED with a policy on paths",
        policies(policy(name="api", rules=[PATHS_RULE]), path_normalization=KEEP),
        "workload.path_normalization.escaped_slashes",
        "KEEP_UNCHANGED",
        "policy 'api' matches paths",
    ),
    (
        "KEEP_UNCHANGED with a policy on not_paths",
        policies(
            {"name": "ok"},
            policy(name="na", action="DENY", rules=[{}, NOT_PATHS_RULE]),
            path_normalization=KEEP,
        ),
        "workload.path_normalization.escaped_slashes",
        "KEEP_UNCHANGED",
        "policy 'na' matches paths",
    ),
]


@pytest.mark.parametrize(
    ("document", "path", "value", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refuses(document: dict[str, Any] | str, path: str, value: object, reason: str) -> None:
    error = refusal(copy.deepcopy(document))
    assert (error.path, error.value) == (path, value)
    assert str(error).startswith(f"{SOURCE}: {path} = {value!r}: ")
    assert reason in error.reason


def test_keep_unchanged_refusal_explains_the_fix() -> None:
    error = refusal(policies(policy(name="api", rules=[PATHS_RULE]), path_normalization=KEEP))
    assert "use REJECT_REQUEST or UNESCAPE_AND_FORWARD" in error.reason


def test_too_many_policies_are_refused() -> None:
    from proxy.config.authorization import MAX_POLICIES

    many = [{"name": f"p{i}"} for i in range(MAX_POLICIES + 1)]
    error = refusal(policies(*many))
    assert error.path == P
    assert f"at most {MAX_POLICIES}" in error.reason
    assert len(workload(policies(*many[:MAX_POLICIES])).authorization_policies) == MAX_POLICIES
