"""loader.parse_mesh / load_mesh: the schema, its defaults, and refusal of every bad value.

Each refusal test checks the exact document path and value, because that is what an operator
reads to find the mistake in a long file.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import MAX_DURATION, MeshConfigError, load_mesh, parse_mesh
from proxy.config.model import (
    DEFAULT_VIP_RANGE_V4,
    DEFAULT_VIP_RANGE_V6,
    CircuitBreaker,
    Endpoint,
    HealthCheck,
    LoadBalancer,
    Mesh,
    OutlierDetection,
    RouteDestination,
    ServicePort,
    TrafficPolicy,
    Workload,
    WorkloadTls,
)
from proxy.config.vips import allocate_vips
from proxy.policy.model import Action, AuthorizationPolicy, Operation, Rule, StringMatch
from proxy.policy.paths import EscapedSlashes

ip = ipaddress.ip_address
EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "mesh.yaml"
SOURCE = "mesh.yaml"


def parse(document: dict[str, Any] | str) -> Mesh:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    return parse_mesh(text, SOURCE)


def refusal(document: dict[str, Any] | str) -> MeshConfigError:
    with pytest.raises(MeshConfigError) as caught:
        parse(document)
    return caught.value


def service(**fields: Any) -> dict[str, Any]:
    """A minimal valid service, with ``fields`` replacing or adding keys."""
    return {"name": "backend", "ports": [{"port": 8080}], **fields}


def with_services(*services: dict[str, Any]) -> dict[str, Any]:
    return {"services": list(services)}


def with_policy(**policy: Any) -> dict[str, Any]:
    return with_services(service(traffic_policy=policy))


def with_endpoint(**endpoint: Any) -> dict[str, Any]:
    return with_services(service(endpoints=[{"address": "10.0.0.1", **endpoint}]))


def with_port(**port: Any) -> dict[str, Any]:
    return with_services(service(ports=[port]))


# --- the error itself -------------------------------------------------------------------------


def test_error_message_names_source_path_value_and_reason() -> None:
    error = refusal(with_port(port=0))
    assert str(error) == "mesh.yaml: services[0].ports[0].port = 0: out of range (1-65535)"
    assert (error.source, error.path, error.value) == (SOURCE, "services[0].ports[0].port", 0)
    assert error.reason == "out of range (1-65535)"
    assert isinstance(error, ValueError)


def test_an_error_in_a_later_service_refuses_the_whole_document() -> None:
    good = service(name="a")
    bad = service(name="b", ports=[{"port": 8080, "protocol": "udp"}])
    error = refusal(with_services(good, bad))
    assert error.path == "services[1].ports[0].protocol"


# --- refusals ---------------------------------------------------------------------------------

OD = "services[0].traffic_policy.outlier_detection"
TP = "services[0].traffic_policy"
EP = "services[0].endpoints[0]"

REFUSALS: list[tuple[str, dict[str, Any] | str, str, object, str]] = [
    # document shape
    ("top-level list", "- a\n- b\n", "<document>", ["a", "b"], "expected a mapping"),
    ("top-level scalar", "hello\n", "<document>", "hello", "expected a mapping"),
    ("unknown top key", {"servics": []}, "servics", [], "did you mean 'services'"),
    ("mesh not mapping", {"mesh": [1]}, "mesh", [1], "expected a mapping"),
    ("services not list", {"services": {"a": 1}}, "services", {"a": 1}, "expected a list"),
    ("service not mapping", {"services": ["backend"]}, "services[0]", "backend", "mapping"),
    ("null service", {"services": [None]}, "services[0]", None, "expected a mapping"),
    # unknown keys at every level
    ("unknown mesh key", {"mesh": {"domain": "x"}}, "mesh.domain", "x", "unknown key"),
    ("unknown workload key", {"workload": {"nme": "a"}}, "workload.nme", "a", "'name'"),
    ("unknown service key", with_services(service(port=1)), "services[0].port", 1, "unknown"),
    (
        "unknown port key",
        with_port(port=80, proto="tcp"),
        "services[0].ports[0].proto",
        "tcp",
        "did you mean 'protocol'",
    ),
    ("unknown endpoint key", with_endpoint(wieght=2), f"{EP}.wieght", 2, "'weight'"),
    (
        "unknown policy key",
        with_policy(conect_timeout=1),
        f"{TP}.conect_timeout",
        1,
        "did you mean 'connect_timeout'",
    ),
    (
        "unknown lb key",
        with_policy(load_balancer={"ring": 1}),
        f"{TP}.load_balancer.ring",
        1,
        "unknown key",
    ),
    (
        "unknown breaker key",
        with_policy(circuit_breaker={"max_request": 1}),
        f"{TP}.circuit_breaker.max_request",
        1,
        "did you mean 'max_requests'",
    ),
    (
        "unknown outlier key",
        with_policy(outlier_detection={"base_ejection_tme": "1s"}),
        f"{OD}.base_ejection_tme",
        "1s",
        "did you mean 'base_ejection_time'",
    ),
    (
        "unknown health key",
        with_policy(health_check={"intervall": 1}),
        f"{TP}.health_check.intervall",
        1,
        "'interval'",
    ),
    # mesh settings
    (
        "outbound policy case",
        {"mesh": {"outbound_traffic_policy": "allow_any"}},
        "mesh.outbound_traffic_policy",
        "allow_any",
        "ALLOW_ANY, REGISTRY_ONLY",
    ),
    (
        "cluster domain caps",
        {"mesh": {"cluster_domain": "Cluster.Local"}},
        "mesh.cluster_domain",
        "Cluster.Local",
        "not a DNS name",
    ),
    (
        "cluster domain empty label",
        {"mesh": {"cluster_domain": "a..b"}},
        "mesh.cluster_domain",
        "a..b",
        "not a DNS name",
    ),
    (
        "cluster domain hyphen",
        {"mesh": {"cluster_domain": "-a.local"}},
        "mesh.cluster_domain",
        "-a.local",
        "not a DNS name",
    ),
    # workload
    ("workload name", {"workload": {"name": "My_App"}}, "workload.name", "My_App", "DNS label"),
    ("workload namespace", {"workload": {"namespace": 7}}, "workload.namespace", 7, "string"),
    (
        "inbound not list",
        {"workload": {"inbound_ports": 80}},
        "workload.inbound_ports",
        80,
        "expected a list",
    ),
    (
        "inbound range",
        {"workload": {"inbound_ports": [80, 70000]}},
        "workload.inbound_ports[1]",
        70000,
        "out of range (1-65535)",
    ),
    (
        "inbound duplicate",
        {"workload": {"inbound_ports": [80, 81, 80]}},
        "workload.inbound_ports[2]",
        80,
        "duplicate port (also workload.inbound_ports[0])",
    ),
    # service identity
    ("name missing", with_services({"ports": [{"port": 1}]}), "services[0].name", None, "required"),
    (
        "name caps",
        with_services(service(name="Backend")),
        "services[0].name",
        "Backend",
        "DNS label",
    ),
    (
        "name leading hyphen",
        with_services(service(name="-b")),
        "services[0].name",
        "-b",
        "DNS label",
    ),
    ("name too long", with_services(service(name="a" * 64)), "services[0].name", "a" * 64, "1-63"),
    ("name not string", with_services(service(name=12)), "services[0].name", 12, "string"),
    (
        "namespace dots",
        with_services(service(namespace="a.b")),
        "services[0].namespace",
        "a.b",
        "DNS label",
    ),
    (
        "duplicate service",
        with_services(service(), service(namespace="default")),
        "services[1].name",
        "backend",
        "duplicate service backend.default (also services[0])",
    ),
    # ports
    ("ports missing", with_services({"name": "a"}), "services[0].ports", None, "at least one"),
    ("ports empty", with_services(service(ports=[])), "services[0].ports", [], "at least one"),
    ("port missing", with_port(name="http"), "services[0].ports[0].port", None, "required"),
    ("port zero", with_port(port=0), "services[0].ports[0].port", 0, "out of range"),
    ("port too big", with_port(port=65536), "services[0].ports[0].port", 65536, "out of range"),
    ("port text", with_port(port="80"), "services[0].ports[0].port", "80", "expected an integer"),
    ("port bool", with_port(port=True), "services[0].ports[0].port", True, "expected an integer"),
    (
        "target port",
        with_port(port=80, target_port=0),
        "services[0].ports[0].target_port",
        0,
        "out of range",
    ),
    (
        "protocol",
        with_port(port=80, protocol="udp"),
        "services[0].ports[0].protocol",
        "udp",
        "expected one of: auto, tcp, http, http2, grpc, tls",
    ),
    (
        "port name",
        with_port(port=80, name="HTTP"),
        "services[0].ports[0].name",
        "HTTP",
        "DNS label",
    ),
    (
        "duplicate port number",
        with_services(service(ports=[{"port": 80}, {"port": 80, "name": "other"}])),
        "services[0].ports[1].port",
        80,
        "duplicate port (also services[0].ports[0])",
    ),
    (
        "duplicate port name",
        with_services(service(ports=[{"port": 80, "name": "web"}, {"port": 81, "name": "web"}])),
        "services[0].ports[1].name",
        "web",
        "duplicate port name (also services[0].ports[0])",
    ),
    (
        "duplicate derived port name",
        with_services(service(ports=[{"port": 81, "name": "tcp-80"}, {"port": 80}])),
        "services[0].ports[1].name",
        "tcp-80",
        "duplicate port name",
    ),
    # endpoints
    (
        "endpoints not list",
        with_services(service(endpoints={"address": "10.0.0.1"})),
        "services[0].endpoints",
        {"address": "10.0.0.1"},
        "expected a list",
    ),
    (
        "address missing",
        with_services(service(endpoints=[{"weight": 1}])),
        f"{EP}.address",
        None,
        "required",
    ),
    (
        "address invalid",
        with_endpoint(address="10.0.0.300"),
        f"{EP}.address",
        "10.0.0.300",
        "not an IPv4 or IPv6 address",
    ),
    (
        "address hostname",
        with_endpoint(address="backend"),
        f"{EP}.address",
        "backend",
        "not an IPv4 or IPv6 address",
    ),
    ("weight zero", with_endpoint(weight=0), f"{EP}.weight", 0, "out of range (1-1000000)"),
    ("weight big", with_endpoint(weight=1_000_001), f"{EP}.weight", 1_000_001, "out of range"),
    ("weight bool", with_endpoint(weight=True), f"{EP}.weight", True, "expected an integer"),
    ("weight float", with_endpoint(weight=1.5), f"{EP}.weight", 1.5, "expected an integer"),
    ("labels list", with_endpoint(labels=["v1"]), f"{EP}.labels", ["v1"], "mapping of strings"),
    (
        "label value float",
        with_endpoint(labels={"version": 1.0}),
        f"{EP}.labels.version",
        1.0,
        "a label value must be a string",
    ),
    (
        "label value bool",
        with_endpoint(labels={"canary": True}),
        f"{EP}.labels.canary",
        True,
        "a label value must be a string",
    ),
    (
        "label key int",
        with_endpoint(labels={1: "a"}),
        f"{EP}.labels.1",
        1,
        "a label key must be a string",
    ),
    (
        "endpoint port name",
        with_endpoint(ports={"htp": 9080}),
        f"{EP}.ports.htp",
        "htp",
        "not a port name of this service (tcp-8080)",
    ),
    (
        "endpoint port range",
        with_endpoint(ports={"tcp-8080": 0}),
        f"{EP}.ports.tcp-8080",
        0,
        "out of range",
    ),
    ("endpoint ports list", with_endpoint(ports=[9080]), f"{EP}.ports", [9080], "mapping"),
    # load balancer
    (
        "lb policy",
        with_policy(load_balancer="roundrobin"),
        f"{TP}.load_balancer",
        "roundrobin",
        "expected one of: round_robin, least_request, random, ring_hash",
    ),
    (
        "lb policy in mapping",
        with_policy(load_balancer={"policy": "maglev"}),
        f"{TP}.load_balancer.policy",
        "maglev",
        "expected one of",
    ),
    (
        "lb not name or mapping",
        with_policy(load_balancer=3),
        f"{TP}.load_balancer",
        3,
        "expected a policy",
    ),
    (
        "ring size for round robin",
        with_policy(load_balancer={"ring_size": 2048}),
        f"{TP}.load_balancer.ring_size",
        2048,
        "applies only to policy ring_hash, not round_robin",
    ),
    (
        "choice count for ring hash",
        with_policy(load_balancer={"policy": "ring_hash", "choice_count": 3}),
        f"{TP}.load_balancer.choice_count",
        3,
        "applies only to policy least_request",
    ),
    (
        "ring size zero",
        with_policy(load_balancer={"policy": "ring_hash", "ring_size": 0}),
        f"{TP}.load_balancer.ring_size",
        0,
        "out of range",
    ),
    (
        "choice count one",
        with_policy(load_balancer={"policy": "least_request", "choice_count": 1}),
        f"{TP}.load_balancer.choice_count",
        1,
        "out of range (2-100)",
    ),
    # durations and counts
    (
        "timeout zero",
        with_policy(connect_timeout=0),
        f"{TP}.connect_timeout",
        0,
        "greater than zero",
    ),
    (
        "timeout zero text",
        with_policy(connect_timeout="0s"),
        f"{TP}.connect_timeout",
        "0s",
        "greater than zero",
    ),
    (
        "timeout negative",
        with_policy(connect_timeout=-1),
        f"{TP}.connect_timeout",
        -1,
        "greater than zero",
    ),
    (
        "timeout too long",
        with_policy(idle_timeout="25h"),
        f"{TP}.idle_timeout",
        "25h",
        "at most one day",
    ),
    (
        "timeout too long number",
        with_policy(idle_timeout=86401),
        f"{TP}.idle_timeout",
        86401,
        "at most one day",
    ),
    (
        "timeout huge int",
        with_policy(idle_timeout=10**400),
        f"{TP}.idle_timeout",
        10**400,
        "at most one day",
    ),
    (
        "timeout days unit",
        with_policy(idle_timeout="1d"),
        f"{TP}.idle_timeout",
        "1d",
        "like 250ms, 1.5s, 2m, 1h",
    ),
    (
        "timeout no unit",
        with_policy(idle_timeout="10"),
        f"{TP}.idle_timeout",
        "10",
        "expected seconds as a number",
    ),
    (
        "timeout word",
        with_policy(connect_timeout="fast"),
        f"{TP}.connect_timeout",
        "fast",
        "expected seconds",
    ),
    (
        "timeout bool",
        with_policy(connect_timeout=True),
        f"{TP}.connect_timeout",
        True,
        "expected seconds",
    ),
    (
        "attempts zero",
        with_policy(connect_attempts=0),
        f"{TP}.connect_attempts",
        0,
        "out of range (1-10)",
    ),
    (
        "attempts eleven",
        with_policy(connect_attempts=11),
        f"{TP}.connect_attempts",
        11,
        "out of range (1-10)",
    ),
    (
        "max connections",
        with_policy(circuit_breaker={"max_connections": 0}),
        f"{TP}.circuit_breaker.max_connections",
        0,
        "out of range",
    ),
    (
        "max pending",
        with_policy(circuit_breaker={"max_pending": -5}),
        f"{TP}.circuit_breaker.max_pending",
        -5,
        "out of range",
    ),
    (
        "consecutive 5xx errors",
        with_policy(outlier_detection={"consecutive_5xx_errors": -1}),
        f"{OD}.consecutive_5xx_errors",
        -1,
        "out of range",
    ),
    (
        "consecutive gateway errors",
        with_policy(outlier_detection={"consecutive_gateway_errors": "five"}),
        f"{OD}.consecutive_gateway_errors",
        "five",
        "",
    ),
    (
        "ejection time",
        with_policy(outlier_detection={"base_ejection_time": "0ms"}),
        f"{OD}.base_ejection_time",
        "0ms",
        "greater than zero",
    ),
    (
        "ejection percent high",
        with_policy(outlier_detection={"max_ejection_percent": 101}),
        f"{OD}.max_ejection_percent",
        101,
        "out of range (0-100)",
    ),
    (
        "ejection percent low",
        with_policy(outlier_detection={"max_ejection_percent": -1}),
        f"{OD}.max_ejection_percent",
        -1,
        "out of range (0-100)",
    ),
    ("outlier not mapping", with_policy(outlier_detection=True), OD, True, "expected a mapping"),
    (
        "health interval",
        with_policy(health_check={"interval": 0}),
        f"{TP}.health_check.interval",
        0,
        "greater than zero",
    ),
    (
        "health timeout",
        with_policy(health_check={"timeout": "1 s"}),
        f"{TP}.health_check.timeout",
        "1 s",
        "expected seconds",
    ),
    (
        "health threshold",
        with_policy(health_check={"healthy_threshold": 0}),
        f"{TP}.health_check.healthy_threshold",
        0,
        "out of range",
    ),
    # VIPs
    (
        "vip loopback",
        with_services(service(vip="127.0.0.1")),
        "services[0].vip",
        "127.0.0.1",
        "a VIP cannot be a loopback address",
    ),
    ("vip loopback v6", with_services(service(vip="::1")), "services[0].vip", "::1", "loopback"),
    (
        "vip unspecified",
        with_services(service(vip="0.0.0.0")),
        "services[0].vip",
        "0.0.0.0",
        "a VIP cannot be a unspecified address",
    ),
    (
        "vip unspecified v6",
        with_services(service(vip=["::"])),
        "services[0].vip[0]",
        "::",
        "unspecified",
    ),
    (
        "vip multicast",
        with_services(service(vip="224.0.0.1")),
        "services[0].vip",
        "224.0.0.1",
        "a VIP cannot be a multicast address",
    ),
    (
        "vip multicast v6",
        with_services(service(vip="ff02::1")),
        "services[0].vip",
        "ff02::1",
        "multicast",
    ),
    (
        "vip not an address",
        with_services(service(vip="Auto")),
        "services[0].vip",
        "Auto",
        "expected 'auto' or an IPv4 or IPv6 address",
    ),
    ("vip number", with_services(service(vip=5)), "services[0].vip", 5, "expected 'auto'"),
    ("vip empty list", with_services(service(vip=[])), "services[0].vip", [], "non-empty list"),
    (
        "vip two v4",
        with_services(service(vip=["10.96.0.1", "10.96.0.2"])),
        "services[0].vip[1]",
        "10.96.0.2",
        "a second IPv4 VIP (one per family)",
    ),
    (
        "vip two v6",
        with_services(service(vip=["fd00::1", "10.96.0.1", "fd00::2"])),
        "services[0].vip[2]",
        "fd00::2",
        "a second IPv6 VIP",
    ),
    (
        "vip shared",
        with_services(service(name="a", vip="10.96.0.1"), service(name="b", vip="10.96.0.1")),
        "services[1].vip",
        "10.96.0.1",
        "VIP already used by services[0] (a.default)",
    ),
    (
        "vip shared in list",
        with_services(
            service(name="a", vip=["fd00::1"]), service(name="b", vip=["10.96.0.1", "fd00::1"])
        ),
        "services[1].vip[1]",
        "fd00::1",
        "VIP already used by services[0] (a.default)",
    ),
]


@pytest.mark.parametrize(
    ("document", "path", "value", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refuses(document: dict[str, Any] | str, path: str, value: object, reason: str) -> None:
    error = refusal(copy.deepcopy(document))
    assert error.path == path
    assert error.value == value
    assert f"{SOURCE}: {path} = {value!r}: " in str(error)
    assert reason in error.reason


# --- YAML itself --------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line() -> None:
    error = refusal("mesh:\n  cluster_domain: a\n bad: 1\n")
    assert error.path == "<document>"
    assert error.value == "bad: 1"
    assert "invalid YAML at line 3" in error.reason


def test_yaml_tab_indentation_names_the_line() -> None:
    error = refusal("services:\n\t- name: a\n")
    assert error.path == "<document>"
    assert "line 2" in error.reason


def test_yaml_control_character_names_the_line() -> None:
    error = refusal("mesh: {}\nworkload: {name: a\x07}\n")
    assert error.path == "<document>"
    assert "invalid YAML at line 2" in error.reason


def test_yaml_python_tags_are_refused_not_executed() -> None:
    error = refusal("!!python/object/apply:os.system ['echo pwned']\n")
    assert error.path == "<document>"
    assert "could not determine a constructor" in error.reason


def test_yaml_with_two_documents_is_refused() -> None:
    error = refusal("services: []\n---\nservices: []\n")
    assert error.path == "<document>"
    assert "line 2" in error.reason


def test_unquoted_version_label_explains_the_fix() -> None:
    error = refusal(
        "services:\n- name: a\n  ports: [{port: 1}]\n"
        "  endpoints: [{address: 10.0.0.1, labels: {version: 1.0}}]\n"
    )
    assert error.path == "services[0].endpoints[0].labels.version"
    assert "quote it" in error.reason


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (1, 1.0),
        (0.25, 0.25),
        (2.5, 2.5),
        ("1s", 1.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("2m", 120.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("24h", 86400.0),
        (" 3s ", 3.0),
        (MAX_DURATION, MAX_DURATION),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    mesh = parse(with_policy(connect_timeout=text))
    assert mesh.services[0].policy.connect_timeout == pytest.approx(seconds)


def test_durations_in_every_duration_field() -> None:
    policy = {
        "idle_timeout": "2m",
        "outlier_detection": {"base_ejection_time": "500ms"},
        "health_check": {"interval": "1.5s", "timeout": 0.2},
    }
    parsed = parse(with_policy(**policy)).services[0].policy
    assert parsed.idle_timeout == 120.0
    assert parsed.outlier_detection == OutlierDetection(base_ejection_time=0.5)
    assert parsed.health_check == HealthCheck(interval=1.5, timeout=0.2)


# --- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}", "~\n"])
def test_empty_document_is_an_empty_mesh(text: str) -> None:
    assert parse_mesh(text, "empty.yaml") == Mesh(source="empty.yaml")


def test_empty_sections_mean_their_defaults() -> None:
    mesh = parse("mesh:\nworkload:\nservices:\n")
    assert mesh == Mesh(source=SOURCE)


def test_minimal_service_gets_every_default() -> None:
    backend = parse(with_services(service())).services[0]
    assert backend.namespace == "default"
    assert backend.ports == (ServicePort("tcp-8080", 8080, "tcp", 8080),)
    assert backend.endpoints == ()
    assert backend.policy == TrafficPolicy()
    assert backend.policy.outlier_detection is None
    assert backend.policy.health_check is None


def test_minimal_endpoint_gets_every_default() -> None:
    endpoint = parse(with_endpoint()).services[0].endpoints[0]
    assert endpoint == Endpoint(ip("10.0.0.1"), weight=1, labels=(), ports=())


def test_port_name_defaults_to_protocol_and_port() -> None:
    port = parse(with_port(port=9000, protocol="grpc", target_port=9001)).services[0].ports[0]
    assert port == ServicePort("grpc-9000", 9000, "grpc", 9001)


def test_empty_feature_sections_enable_the_model_defaults() -> None:
    policy = (
        parse(
            with_policy(outlier_detection={}, health_check={}, circuit_breaker={}, load_balancer={})
        )
        .services[0]
        .policy
    )
    assert policy.outlier_detection == OutlierDetection()
    assert policy.health_check == HealthCheck()
    assert policy.circuit_breaker == CircuitBreaker()
    assert policy.load_balancer == LoadBalancer()


def test_null_feature_sections_leave_them_disabled() -> None:
    policy = (
        parse(
            "services:\n- name: a\n  ports: [{port: 1}]\n  traffic_policy:\n"
            "    outlier_detection:\n    health_check:\n"
        )
        .services[0]
        .policy
    )
    assert policy.outlier_detection is None
    assert policy.health_check is None


def test_default_vip_is_auto_one_per_family_inside_the_ranges() -> None:
    vips = parse(with_services(service())).services[0].vips
    assert [v.version for v in vips] == [4, 6]
    assert vips[0] in DEFAULT_VIP_RANGE_V4
    assert vips[1] in DEFAULT_VIP_RANGE_V6


# --- the full schema --------------------------------------------------------------------------

FULL = """
mesh:
  cluster_domain: corp.example
  outbound_traffic_policy: REGISTRY_ONLY
workload:
  name: client
  namespace: shop
  inbound_ports: [8080, 9090]
services:
  - name: backend
    namespace: shop
    vip: [fd00::10, 10.96.0.10]
    ports:
      - {name: http, port: 8080, protocol: http, target_port: 8081}
      - {port: 9000, protocol: grpc}
    endpoints:
      - {address: 10.0.0.11, weight: 3, labels: {zone: b, version: v1}, ports: {http: 9080}}
      - {address: "fd00::11"}
    traffic_policy:
      load_balancer: {policy: ring_hash, ring_size: 4096}
      connect_timeout: 250ms
      idle_timeout: 1h
      connect_attempts: 3
      circuit_breaker: {max_connections: 100, max_pending: 10}
      outlier_detection: {consecutive_5xx_errors: 3, consecutive_gateway_errors: 2,
                          base_ejection_time: 10s,
                          max_ejection_percent: 50}
      health_check: {interval: 1s, timeout: 500ms, unhealthy_threshold: 3, healthy_threshold: 2}
"""


def test_every_field_of_the_schema() -> None:
    mesh = parse(FULL)
    assert mesh.cluster_domain == "corp.example"
    assert mesh.outbound_traffic_policy == "REGISTRY_ONLY"
    assert mesh.workload == Workload("client", "shop", (8080, 9090))
    backend = mesh.service("backend.shop")
    assert backend is not None
    assert backend.vips == (ip("10.96.0.10"), ip("fd00::10"))  # IPv4 first, as auto VIPs
    assert backend.ports == (
        ServicePort("http", 8080, "http", 8081),
        ServicePort("grpc-9000", 9000, "grpc", 9000),
    )
    first, second = backend.endpoints
    assert first == Endpoint(
        ip("10.0.0.11"), 3, (("version", "v1"), ("zone", "b")), (("http", 9080),)
    )
    assert first.port_for(backend.ports[0]) == 9080
    assert first.port_for(backend.ports[1]) == 9000
    assert second == Endpoint(ip("fd00::11"))
    assert backend.policy == TrafficPolicy(
        load_balancer=LoadBalancer("ring_hash", ring_size=4096),
        connect_timeout=0.25,
        idle_timeout=3600.0,
        connect_attempts=3,
        circuit_breaker=CircuitBreaker(100, 10),
        outlier_detection=OutlierDetection(3, 2, 10.0, 50),
        health_check=HealthCheck(1.0, 0.5, 3, 2),
    )


def test_same_name_in_two_namespaces_is_two_services() -> None:
    mesh = parse(with_services(service(namespace="a"), service(namespace="b")))
    assert [s.key for s in mesh.services] == ["backend.a", "backend.b"]
    assert mesh.services[0].vips != mesh.services[1].vips


def test_lb_tuning_for_its_own_policy_is_accepted() -> None:
    lb = {"policy": "least_request", "choice_count": 3}
    parsed = parse(with_policy(load_balancer=lb)).services[0].policy.load_balancer
    assert parsed == LoadBalancer("least_request", choice_count=3)


def test_source_is_recorded() -> None:
    assert parse_mesh("{}", "/etc/detour/mesh.yaml").source == "/etc/detour/mesh.yaml"


# --- VIPs in the loader -----------------------------------------------------------------------


def test_auto_vip_never_takes_an_explicit_vip() -> None:
    home_v4, home_v6 = allocate_vips(["backend.default"])["backend.default"]
    squatter = service(name="squatter", vip=[str(home_v4), str(home_v6)])
    mesh = parse(with_services(service(), squatter))
    backend = mesh.service("backend.default")
    assert backend is not None
    assert home_v4 not in backend.vips
    assert home_v6 not in backend.vips


def test_auto_vip_does_not_depend_on_file_order() -> None:
    a, b = service(name="a"), service(name="b", vip="10.96.0.1")
    forward = parse(with_services(a, b))
    backward = parse(with_services(b, a))
    assert forward.service("a.default") == backward.service("a.default")


# --- files ------------------------------------------------------------------------------------


def test_example_file_loads() -> None:
    mesh = load_mesh(EXAMPLE)
    assert mesh.source == str(EXAMPLE)
    no_debug = AuthorizationPolicy(
        "no-debug",
        Action.DENY,
        (Rule(operations=(Operation(ports=(8080,), paths=(StringMatch("prefix", "/debug/"),)),)),),
    )
    assert mesh.workload == Workload(
        "client",
        "default",
        (),
        service_account="client",
        tls=WorkloadTls(),
        authorization_policies=(no_debug,),
        escaped_slashes=EscapedSlashes.REJECT_REQUEST,
    )
    assert mesh.trust_domain == "cluster.local"
    backend, echo = mesh.services
    assert backend.key == "backend.default"
    assert backend.ports == (ServicePort("http", 8080, "http", 8080),)
    assert [str(e.address) for e in backend.endpoints] == ["10.88.0.11", "10.88.0.12", "10.88.0.13"]
    assert [dict(e.labels)["version"] for e in backend.endpoints] == ["v1", "v1", "v2"]
    assert {e.service_account for e in backend.endpoints} == {"backend"}  # meshed: mTLS
    assert backend.policy.load_balancer.policy == "round_robin"
    assert backend.policy.connect_timeout == 1.0
    assert backend.policy.outlier_detection == OutlierDetection(1, 0, 10.0, 100)
    assert backend.vips == allocate_vips([backend.key])[backend.key]
    assert [s.name for s in backend.subsets] == ["v1", "v2"]
    canary, default = backend.http_routes
    assert canary.destinations == (RouteDestination("v2", 90), RouteDestination("v1", 10))
    assert default.matches == ()
    assert default.destinations == (RouteDestination(),)  # the demo's calls reach every endpoint
    assert default.fault is None
    assert echo.http_routes == ()
    assert echo.key == "echo.default"
    assert echo.vips == (ip("10.96.0.20"),)
    assert echo.ports == (ServicePort("tcp-7000", 7000, "tcp", 7000),)
    assert echo.endpoints == (Endpoint(ip("10.88.0.21")),)
    assert echo.policy.load_balancer.policy == "least_request"


def test_load_mesh_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(with_services(service())), encoding="utf-8")
    mesh = load_mesh(path)
    assert mesh.source == str(path)
    assert mesh.services[0].key == "backend.default"


def test_load_mesh_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services: 3\n", encoding="utf-8")
    with pytest.raises(MeshConfigError) as caught:
        load_mesh(path)
    assert str(caught.value) == f"{path}: services = 3: expected a list"


def test_missing_file_is_a_mesh_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(MeshConfigError) as caught:
        load_mesh(path)
    assert caught.value.path == "<document>"
    assert "cannot read" in caught.value.reason


def test_non_utf8_file_is_a_mesh_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"workload: {name: caf\xe9}\n")
    with pytest.raises(MeshConfigError) as caught:
        load_mesh(path)
    assert "not UTF-8" in caught.value.reason
