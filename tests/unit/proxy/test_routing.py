"""RouteTable: the per-connection routing decision (outbound and inbound), without any I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from proxy.config.model import Mesh, Service, ServicePort, Workload
from proxy.routing import SIDECAR_PORTS, Passthrough, Refuse, RouteTable, ToCluster
from proxy.sidecar import Options

SIDECAR = (15000, 15001, 15006, 15020, 15021, 15053, 15090)


class LocalAddresses:
    """An ``is_local`` that answers from a fixed set and records every question."""

    def __init__(self, *local: str) -> None:
        self.local = set(local)
        self.calls: list[str] = []

    def __call__(self, address: str) -> bool:
        self.calls.append(address)
        return address in self.local


def never_local(address: str) -> bool:
    return False


def service(name: str, vips: tuple[str, ...], *ports: int, namespace: str = "default") -> Service:
    return Service(
        name=name,
        namespace=namespace,
        vips=tuple(ipaddress.ip_address(v) for v in vips),
        ports=tuple(ServicePort(f"p{p}", p) for p in ports),
    )


def table(
    *services: Service,
    policy: str = "ALLOW_ANY",
    is_local: Callable[[str], bool] = never_local,
    workload: Workload | None = None,
) -> RouteTable:
    mesh = Mesh(
        services=services,
        outbound_traffic_policy=policy,  # type: ignore[arg-type]
        workload=workload or Workload(),
    )
    return RouteTable.build(mesh, is_local)


def assert_refused(decision: object, flag: str = "NR") -> None:
    assert isinstance(decision, Refuse), decision
    assert decision.flag == flag
    assert decision.reason


# --- outbound: mesh services -----------------------------------------------------------------


def test_the_sidecar_ports_are_the_documented_ones() -> None:
    assert frozenset(SIDECAR) == SIDECAR_PORTS


def test_vip_and_service_port_go_to_that_services_cluster() -> None:
    reviews = service("reviews", ("240.240.0.1",), 9080)
    decision = table(reviews).decide(("240.240.0.1", 9080))
    assert decision == ToCluster(reviews, reviews.ports[0])
    assert decision.service is reviews
    assert decision.port.port == 9080


def test_each_port_of_a_multi_port_service_routes_to_its_own_port() -> None:
    web = service("web", ("240.240.0.2",), 80, 443, 8080)
    routes = table(web)
    for port in web.ports:
        decision = routes.decide(("240.240.0.2", port.port))
        assert isinstance(decision, ToCluster)
        assert decision.service is web
        assert decision.port is port


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_mesh_services_route_under_either_policy(policy: str) -> None:
    db = service("db", ("240.240.0.3",), 5432)
    assert isinstance(table(db, policy=policy).decide(("240.240.0.3", 5432)), ToCluster)


def test_same_vip_other_port_passes_through_under_allow_any() -> None:
    reviews = service("reviews", ("240.240.0.1",), 9080)
    decision = table(reviews, policy="ALLOW_ANY").decide(("240.240.0.1", 9081))
    assert decision == Passthrough("240.240.0.1", 9081)


def test_same_vip_other_port_is_refused_under_registry_only() -> None:
    reviews = service("reviews", ("240.240.0.1",), 9080)
    decision = table(reviews, policy="REGISTRY_ONLY").decide(("240.240.0.1", 9081))
    assert_refused(decision, "NR")
    assert "240.240.0.1:9081" in decision.reason


def test_unknown_destination_under_both_policies() -> None:
    reviews = service("reviews", ("240.240.0.1",), 9080)
    assert table(reviews).decide(("93.184.216.34", 443)) == Passthrough("93.184.216.34", 443)
    assert_refused(table(reviews, policy="REGISTRY_ONLY").decide(("93.184.216.34", 443)))


def test_a_service_port_on_another_address_is_not_that_service() -> None:
    reviews = service("reviews", ("240.240.0.1",), 9080)
    assert table(reviews).decide(("240.240.0.9", 9080)) == Passthrough("240.240.0.9", 9080)


def test_a_service_with_several_vips_routes_from_each() -> None:
    api = service("api", ("240.240.0.5", "10.96.0.5", "fd00:240::5"), 8000)
    routes = table(api)
    for vip in ("240.240.0.5", "10.96.0.5", "fd00:240::5"):
        decision = routes.decide((vip, 8000))
        assert isinstance(decision, ToCluster) and decision.service is api


# --- outbound: IPv6 --------------------------------------------------------------------------


def test_ipv6_vip_routes() -> None:
    v6 = service("v6", ("fd00:240::10",), 80)
    decision = table(v6).decide(("fd00:240::10", 80))
    assert decision == ToCluster(v6, v6.ports[0])


def test_ipv6_vip_is_keyed_by_its_compressed_text() -> None:
    """The original destination comes back as ``str(IPv6Address)``: the compressed form."""
    v6 = service("v6", ("fd00:0240:0000:0000:0000:0000:0000:0010",), 80)
    routes = table(v6)
    assert ("fd00:240::10", 80) in routes.by_destination
    assert isinstance(routes.decide(("fd00:240::10", 80)), ToCluster)


def test_ipv6_vip_other_port() -> None:
    v6 = service("v6", ("fd00:240::10",), 80)
    assert table(v6).decide(("fd00:240::10", 81)) == Passthrough("fd00:240::10", 81)
    assert_refused(table(v6, policy="REGISTRY_ONLY").decide(("fd00:240::10", 81)))


# --- outbound: refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_not_redirected_is_refused(policy: str) -> None:
    assert_refused(table(policy=policy).decide(None))


@pytest.mark.parametrize("port", SIDECAR)
@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::"])
def test_sidecar_port_on_loopback_or_unspecified_is_refused(address: str, port: int) -> None:
    is_local = LocalAddresses()
    decision = table(is_local=is_local).decide((address, port))
    assert_refused(decision)
    assert f"{address}:{port}" in decision.reason


@pytest.mark.parametrize("port", SIDECAR)
def test_sidecar_port_on_a_local_address_is_refused(port: int) -> None:
    is_local = LocalAddresses("10.1.2.3", "fd00::a")
    routes = table(is_local=is_local)
    assert_refused(routes.decide(("10.1.2.3", port)))
    assert_refused(routes.decide(("fd00::a", port)))
    assert is_local.calls == ["10.1.2.3", "fd00::a"]


@pytest.mark.parametrize("port", SIDECAR)
def test_sidecar_port_on_a_remote_address_passes_through(port: int) -> None:
    is_local = LocalAddresses("10.1.2.3")
    decision = table(is_local=is_local).decide(("10.9.9.9", port))
    assert decision == Passthrough("10.9.9.9", port)
    assert is_local.calls == ["10.9.9.9"]


def test_a_sidecar_started_on_other_ports_refuses_those_too() -> None:
    """``--admin-port 16000`` and friends: the ports it listens on are its own, whatever they
    are (and the default ones stay reserved, as Istio reserves them)."""
    options = Options(admin_port=16000, stats_port=16020, ready_port=16021, dns_port=0)
    own = options.own_ports()
    assert {16000, 16020, 16021} <= own and own >= SIDECAR_PORTS and 0 not in own
    mesh = Mesh(workload=Workload())
    routes = RouteTable.build(mesh, LocalAddresses("10.1.2.3"), own)
    for port in (16000, 16020, 16021, 15000):
        assert_refused(routes.decide(("127.0.0.1", port)))
        assert_refused(routes.decide(("10.1.2.3", port)))
        assert_refused(routes.decide_inbound(("10.1.2.3", port)))
    assert routes.decide(("127.0.0.1", 16001)) == Passthrough("127.0.0.1", 16001)
    assert table().decide(("127.0.0.1", 16000)) == Passthrough("127.0.0.1", 16000)


def test_sidecar_port_on_a_remote_address_under_registry_only_is_not_in_the_mesh() -> None:
    decision = table(policy="REGISTRY_ONLY").decide(("10.9.9.9", 15001))
    assert_refused(decision)
    assert "REGISTRY_ONLY" in decision.reason


def test_is_local_is_only_consulted_for_sidecar_ports() -> None:
    is_local = LocalAddresses("10.1.2.3")
    reviews = service("reviews", ("240.240.0.1",), 9080)
    routes = table(reviews, is_local=is_local)
    for destination in [
        ("10.1.2.3", 80),
        ("10.1.2.3", 15002),
        ("10.1.2.3", 14999),
        ("240.240.0.1", 9080),
        ("127.0.0.1", 8080),
        ("fd00::1", 443),
    ]:
        routes.decide(destination)
        routes.decide_inbound(destination)
    routes.decide(None)
    routes.decide_inbound(None)
    assert is_local.calls == []
    # Loopback and unspecified addresses are refused without asking either.
    routes.decide(("127.0.0.1", 15001))
    routes.decide(("::", 15006))
    assert is_local.calls == []
    routes.decide(("10.1.2.3", 15090))
    routes.decide_inbound(("10.1.2.3", 15021))
    assert is_local.calls == ["10.1.2.3", "10.1.2.3"]


def test_a_vip_on_a_sidecar_port_still_routes_when_the_vip_is_not_local() -> None:
    odd = service("odd", ("240.240.0.7",), 15001)
    is_local = LocalAddresses()
    decision = table(odd, is_local=is_local).decide(("240.240.0.7", 15001))
    assert isinstance(decision, ToCluster) and decision.service is odd
    assert is_local.calls == ["240.240.0.7"]


# --- inbound ---------------------------------------------------------------------------------


def test_inbound_declared_port_is_forwarded_to_the_original_destination() -> None:
    routes = table(workload=Workload("app", "ns", inbound_ports=(8080, 9090)))
    assert routes.decide_inbound(("10.0.0.5", 8080)) == Passthrough("10.0.0.5", 8080)
    assert routes.decide_inbound(("10.0.0.5", 9090)) == Passthrough("10.0.0.5", 9090)


def test_inbound_undeclared_port_is_refused_when_ports_are_declared() -> None:
    routes = table(workload=Workload("app", "ns", inbound_ports=(8080,)))
    decision = routes.decide_inbound(("10.0.0.5", 8081))
    assert_refused(decision)
    assert "8081" in decision.reason and "app" in decision.reason


@pytest.mark.parametrize("port", [1, 80, 8080, 14999, 65535])
def test_inbound_any_port_is_accepted_when_none_are_declared(port: int) -> None:
    routes = table(workload=Workload("app", "ns", inbound_ports=()))
    assert routes.decide_inbound(("10.0.0.5", port)) == Passthrough("10.0.0.5", port)


def test_inbound_ignores_the_outbound_policy() -> None:
    routes = table(policy="REGISTRY_ONLY", workload=Workload(inbound_ports=()))
    assert routes.decide_inbound(("10.0.0.5", 7000)) == Passthrough("10.0.0.5", 7000)


def test_inbound_ipv6() -> None:
    routes = table(workload=Workload(inbound_ports=(8080,)))
    assert routes.decide_inbound(("fd00::5", 8080)) == Passthrough("fd00::5", 8080)
    assert_refused(routes.decide_inbound(("fd00::5", 8081)))


def test_inbound_not_redirected_is_refused() -> None:
    assert_refused(table(workload=Workload(inbound_ports=())).decide_inbound(None))


@pytest.mark.parametrize("port", SIDECAR)
def test_inbound_to_a_sidecar_port_on_a_local_address_is_refused(port: int) -> None:
    is_local = LocalAddresses("10.0.0.5")
    routes = table(is_local=is_local, workload=Workload(inbound_ports=()))
    assert_refused(routes.decide_inbound(("10.0.0.5", port)))
    assert_refused(routes.decide_inbound(("127.0.0.1", port)))


def test_inbound_sidecar_port_is_refused_even_when_declared() -> None:
    routes = table(is_local=LocalAddresses("10.0.0.5"), workload=Workload(inbound_ports=(15000,)))
    assert_refused(routes.decide_inbound(("10.0.0.5", 15000)))


# --- the table is a dictionary ---------------------------------------------------------------


def many_services() -> list[Service]:
    return [
        service("reviews", ("240.240.0.1",), 9080),
        service("ratings", ("240.240.0.2", "fd00:240::2"), 9080, 9443),
        service("details", ("10.96.0.10",), 80, 443, 8080, namespace="bookinfo"),
        service("mysql", ("fd00:240::3",), 3306),
        service("redis", ("240.240.0.4", "240.240.0.5"), 6379, 26379, namespace="cache"),
    ]


def test_every_vip_port_pair_of_every_service_is_in_the_table() -> None:
    services = many_services()
    routes = table(*services, policy="REGISTRY_ONLY")
    expected = {
        (str(vip), port.port): (svc, port)
        for svc in services
        for vip in svc.vips
        for port in svc.ports
    }
    assert set(routes.by_destination) == set(expected)
    assert len(routes.by_destination) == 13
    for destination, (svc, port) in expected.items():
        decision = routes.decide(destination)
        assert isinstance(decision, ToCluster), destination
        assert decision.service is svc
        assert decision.port is port
        # decide is the dictionary lookup: it hands out the stored object itself.
        assert decision is routes.by_destination[destination]


def test_cross_pairs_of_vips_and_ports_are_not_routed() -> None:
    services = many_services()
    routes = table(*services, policy="REGISTRY_ONLY")
    vips = {str(vip) for svc in services for vip in svc.vips}
    ports = {port.port for svc in services for port in svc.ports}
    for vip in vips:
        for port in ports:
            decision = routes.decide((vip, port))
            if (vip, port) in routes.by_destination:
                assert isinstance(decision, ToCluster)
            else:
                assert_refused(decision)


def test_build_reflects_the_policy_and_the_workload() -> None:
    workload = Workload("app", "ns", (8080,))
    allow = table(policy="ALLOW_ANY", workload=workload)
    registry = table(policy="REGISTRY_ONLY", workload=workload)
    assert allow.allow_any is True
    assert registry.allow_any is False
    assert allow.workload is workload


def test_an_empty_mesh_passes_everything_through_under_allow_any() -> None:
    routes = table()
    assert routes.by_destination == {}
    assert routes.decide(("1.2.3.4", 80)) == Passthrough("1.2.3.4", 80)
