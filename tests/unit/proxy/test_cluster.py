"""ClusterRuntime and build_clusters: naming, picking with retries, outlier ejection, state kept
across rebuilds, /clusters text and gauges. Meshes are built from the model dataclasses."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from proxy.admin.clusters import render_rows
from proxy.config.model import (
    CircuitBreaker,
    Endpoint,
    LoadBalancer,
    Mesh,
    OutlierDetection,
    Service,
    ServicePort,
    Subset,
    TrafficPolicy,
)
from proxy.series import Stats
from proxy.stats import labels
from proxy.upstream.cluster import (
    MEMBERSHIP_HEALTHY,
    MEMBERSHIP_TOTAL,
    OUTLIER_DETECTION_EJECTIONS_ACTIVE,
    OUTLIER_DETECTION_EJECTIONS_ENFORCED,
    OUTLIER_DETECTION_EJECTIONS_TOTAL,
    ClusterRuntime,
    build_clusters,
    cluster_name,
)
from proxy.upstream.hosts import Host

EJECT_ON_FIRST = OutlierDetection(
    consecutive_5xx_errors=1, base_ejection_time=30.0, max_ejection_percent=100
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoints(*addresses: str, weights: tuple[int, ...] = ()) -> tuple[Endpoint, ...]:
    weights = weights or (1,) * len(addresses)
    return tuple(
        Endpoint(ipaddress.ip_address(a), w) for a, w in zip(addresses, weights, strict=True)
    )


def make_service(
    name: str = "reviews",
    namespace: str = "default",
    ports: tuple[ServicePort, ...] = (ServicePort("http", 9080),),
    eps: tuple[Endpoint, ...] | None = None,
    policy: TrafficPolicy | None = None,
    vip: str = "240.240.0.1",
) -> Service:
    return Service(
        name=name,
        namespace=namespace,
        vips=(ipaddress.ip_address(vip),),
        ports=ports,
        endpoints=endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3") if eps is None else eps,
        policy=policy or TrafficPolicy(),
    )


def with_outlier(outlier: OutlierDetection | None = EJECT_ON_FIRST, **policy) -> TrafficPolicy:
    return TrafficPolicy(outlier_detection=outlier, **policy)


def build(*services: Service, previous=None, stats: Stats | None = None, **mesh):
    return build_clusters(
        Mesh(services=services, **mesh), previous or {}, stats or Stats(), random.Random(7)
    )


def only(clusters: dict) -> ClusterRuntime:
    (cluster,) = clusters.values()
    return cluster


# --- one cluster per (service, port) ---------------------------------------------------------


def test_one_cluster_per_service_port_with_envoy_names() -> None:
    reviews = make_service(
        "reviews", ports=(ServicePort("http", 9080), ServicePort("grpc", 9090, "grpc"))
    )
    db = make_service("db", "data", ports=(ServicePort("pg", 5432),), vip="240.240.0.2")
    clusters = build(reviews, db)
    assert set(clusters) == {
        ("reviews.default", 9080, ""),
        ("reviews.default", 9090, ""),
        ("db.data", 5432, ""),
    }
    assert {key: c.name for key, c in clusters.items()} == {
        ("reviews.default", 9080, ""): "outbound|9080||reviews.default.svc.cluster.local",
        ("reviews.default", 9090, ""): "outbound|9090||reviews.default.svc.cluster.local",
        ("db.data", 5432, ""): "outbound|5432||db.data.svc.cluster.local",
    }
    for (_, port, _), cluster in clusters.items():
        assert cluster.port.port == port
        assert cluster.service in (reviews, db)


def test_each_subset_gets_a_cluster_of_its_endpoints_with_istio_names() -> None:
    v1 = Endpoint(ipaddress.ip_address("10.0.0.1"), labels=(("version", "v1"),))
    v2 = Endpoint(ipaddress.ip_address("10.0.0.2"), labels=(("app", "r"), ("version", "v2")))
    svc = dataclasses.replace(
        make_service(eps=(v1, v2)),
        subsets=(
            Subset("v1", (("version", "v1"),)),
            Subset("v2", (("version", "v2"),)),
            Subset("none", (("version", "v3"),)),
        ),
    )
    clusters = build(svc)
    assert clusters[("reviews.default", 9080, "v2")].name == (
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    )
    addresses = {
        subset: [h.address for h in clusters[("reviews.default", 9080, subset)].hosts.hosts]
        for subset in ("", "v1", "v2", "none")
    }
    assert addresses == {
        "": ["10.0.0.1", "10.0.0.2"],
        "v1": ["10.0.0.1"],
        "v2": ["10.0.0.2"],
        "none": [],
    }


def test_cluster_name_uses_the_mesh_cluster_domain() -> None:
    svc = make_service()
    assert only(build(svc, cluster_domain="corp.example")).name == (
        "outbound|9080||reviews.default.svc.corp.example"
    )
    assert cluster_name(svc, svc.ports[0], "cluster.local") == (
        "outbound|9080||reviews.default.svc.cluster.local"
    )


def test_an_empty_mesh_has_no_clusters() -> None:
    assert build() == {}


def test_hosts_follow_endpoints_and_target_ports() -> None:
    eps = (
        Endpoint(ipaddress.ip_address("10.0.0.1")),
        Endpoint(ipaddress.ip_address("10.0.0.2"), ports=(("http", 8081),)),
        Endpoint(ipaddress.ip_address("fd00::3"), weight=3),
    )
    svc = make_service(ports=(ServicePort("http", 80, target_port=8080),), eps=eps)
    cluster = only(build(svc))
    assert [h.key for h in cluster.hosts.hosts] == [
        "10.0.0.1:8080",
        "10.0.0.2:8081",
        "[fd00::3]:8080",
    ]
    assert [h.weight for h in cluster.hosts.hosts] == [1, 1, 3]
    assert [h.endpoint for h in cluster.hosts.hosts] == list(eps)


def test_a_service_without_endpoints_picks_nothing() -> None:
    cluster = only(build(make_service(eps=())))
    assert len(cluster.hosts) == 0
    assert cluster.pick(b"10.1.0.1", set()) is None
    assert cluster.pick(None, set()) is None


# --- picking with retries --------------------------------------------------------------------


def test_pick_without_avoid_round_robins() -> None:
    cluster = only(build(make_service()))
    picks = [cluster.pick(None, set()) for _ in range(6)]
    assert set(picks) == set(cluster.hosts.hosts)
    assert picks[:3] == picks[3:]


@pytest.mark.parametrize("tried", [1, 2])
def test_pick_skips_tried_hosts_round_robin(tried: int) -> None:
    cluster = only(build(make_service()))
    for _ in range(30):
        avoid = set(cluster.hosts.hosts[:tried])
        host = cluster.pick(b"10.1.0.1", avoid)
        assert host is not None and host not in avoid


def test_pick_returns_a_tried_host_when_every_host_was_tried() -> None:
    cluster = only(build(make_service()))
    everything = set(cluster.hosts.hosts)
    assert cluster.pick(None, everything) in everything


def test_pick_of_a_single_host_cluster_returns_it_even_if_tried() -> None:
    cluster = only(build(make_service(eps=endpoints("10.0.0.1"))))
    (host,) = cluster.hosts.hosts
    assert cluster.pick(None, {host}) is host


def client_keys(count: int) -> list[bytes]:
    """Hash keys as the session builds them: the downstream peer's IP address."""
    return [f"10.1.{i // 250}.{i % 250 + 1}".encode() for i in range(count)]


def test_pick_skips_the_tried_host_with_ring_hash() -> None:
    svc = make_service(policy=TrafficPolicy(load_balancer=LoadBalancer("ring_hash")))
    cluster = only(build(svc))
    returned_tried = []
    for key in client_keys(60):
        first = cluster.pick(key, set())
        retry = cluster.pick(key, {first})
        if retry is first:
            returned_tried.append(key)
    assert returned_tried == []


def test_pick_skips_a_tried_heavy_host_with_weighted_round_robin() -> None:
    svc = make_service(eps=endpoints("10.0.0.1", "10.0.0.2", weights=(5, 1)))
    cluster = only(build(svc))
    heavy, light = cluster.hosts.hosts
    assert [cluster.pick(None, {heavy}) for _ in range(12)] == [light] * 12


@pytest.mark.parametrize("policy", ["random", "least_request"])
def test_pick_skips_the_tried_host_with_random_balancers(policy: str) -> None:
    svc = make_service(
        eps=endpoints("10.0.0.1", "10.0.0.2"),
        policy=TrafficPolicy(load_balancer=LoadBalancer(policy)),
    )
    failures = 0
    for seed in range(200):
        clusters = build_clusters(Mesh(services=(svc,)), {}, Stats(), random.Random(seed))
        cluster = only(clusters)
        tried = {cluster.hosts.hosts[0]}
        if cluster.pick(None, tried) in tried:
            failures += 1
    assert failures == 0


# --- connect outcomes and outlier detection --------------------------------------------------


def test_report_connect_success_counts() -> None:
    cluster = only(build(make_service(policy=with_outlier())))
    host = cluster.hosts.hosts[0]
    cluster.report_connect(host, True)
    cluster.report_connect(host, True)
    assert (host.connections_total, host.connect_failures_total) == (2, 0)
    assert not host.ejected


def test_connect_failure_ejects_with_consecutive_5xx_errors_one() -> None:
    stats = Stats()
    cluster = only(build(make_service(policy=with_outlier()), stats=stats))
    host = cluster.hosts.hosts[1]
    cluster.report_connect(host, False)
    assert host.connect_failures_total == 1
    assert host.ejected and not host.usable
    assert cluster.outlier is not None and cluster.outlier.ejections_active == 1
    key = (OUTLIER_DETECTION_EJECTIONS_TOTAL, labels(cluster=cluster.name))
    assert stats.counters[key] == 1
    # The ejected host is no longer picked.
    assert host not in {cluster.pick(None, set()) for _ in range(10)}


def test_an_http_connect_leaves_the_5xx_run_to_the_responses() -> None:
    """Envoy's LocalOriginConnectSuccess: for HTTP, connecting says nothing of the answers."""
    stats = Stats()
    policy = with_outlier(OutlierDetection(consecutive_5xx_errors=2, max_ejection_percent=100))
    cluster = only(build(make_service(policy=policy), stats=stats))
    host = cluster.hosts.hosts[0]
    cluster.report_response(host, 500)
    cluster.report_connect(host, True, final=False)  # a new keep-alive connection
    cluster.report_response(host, 503)
    assert host.ejected
    key = (
        OUTLIER_DETECTION_EJECTIONS_ENFORCED,
        labels(cluster=cluster.name, kind="consecutive_5xx"),
    )
    assert stats.counters[key] == 1
    other = cluster.hosts.hosts[1]
    cluster.report_response(other, 500)
    cluster.report_connect(other, True)  # a TCP connection: the exchange itself succeeded
    cluster.report_local_failure(other)
    assert not other.ejected


def test_a_failure_of_an_ejected_host_does_not_count_another_ejection() -> None:
    stats = Stats()
    cluster = only(build(make_service(policy=with_outlier()), stats=stats))
    host = cluster.hosts.hosts[0]
    cluster.report_connect(host, False)
    cluster.report_connect(host, False)
    assert host.connect_failures_total == 2
    assert stats.counters[(OUTLIER_DETECTION_EJECTIONS_TOTAL, labels(cluster=cluster.name))] == 1


def test_without_outlier_detection_failures_only_count() -> None:
    stats = Stats()
    cluster = only(build(make_service(), stats=stats))
    assert cluster.outlier is None
    host = cluster.hosts.hosts[0]
    for _ in range(10):
        cluster.report_connect(host, False)
    assert host.connect_failures_total == 10
    assert not host.ejected
    assert not any(metric is OUTLIER_DETECTION_EJECTIONS_TOTAL for metric, _ in stats.counters)


def test_ejections_are_counted_per_cluster() -> None:
    stats = Stats()
    a = make_service("a", policy=with_outlier(), vip="240.240.0.1")
    b = make_service("b", policy=with_outlier(), vip="240.240.0.2")
    clusters = build(a, b, stats=stats)
    ca, cb = clusters[("a.default", 9080, "")], clusters[("b.default", 9080, "")]
    ca.report_connect(ca.hosts.hosts[0], False)
    ca.report_connect(ca.hosts.hosts[1], False)
    cb.report_connect(cb.hosts.hosts[0], False)
    assert stats.counters[(OUTLIER_DETECTION_EJECTIONS_TOTAL, labels(cluster=ca.name))] == 2
    assert stats.counters[(OUTLIER_DETECTION_EJECTIONS_TOTAL, labels(cluster=cb.name))] == 1


# --- rebuilds --------------------------------------------------------------------------------


def fresh_copy(service: Service, **changes) -> Service:
    """An equal service made of new objects, as a reload of an unchanged file would give."""
    eps = tuple(dataclasses.replace(e) for e in service.endpoints)
    return dataclasses.replace(service, endpoints=eps, **changes)


def test_rebuild_with_the_same_endpoints_keeps_hosts_and_the_ejection() -> None:
    stats = Stats()
    svc = make_service(policy=with_outlier())
    old = build(svc, stats=stats)
    ejected = only(old).hosts.hosts[0]
    only(old).report_connect(ejected, False)
    ejected.connections_total = 5
    new = build(fresh_copy(svc), previous=old, stats=stats)
    cluster = only(new)
    assert cluster is not only(old)
    assert all(a is b for a, b in zip(cluster.hosts.hosts, only(old).hosts.hosts, strict=True))
    assert ejected.ejected and ejected.connections_total == 5
    assert cluster.outlier is only(old).outlier
    assert cluster.outlier.ejections_active == 1
    assert cluster.breaker is only(old).breaker
    assert ejected not in {cluster.pick(None, set()) for _ in range(10)}
    assert cluster.hosts.usable() == cluster.hosts.hosts[1:]


def test_rebuild_with_the_very_same_service_object_keeps_its_clusters_whole() -> None:
    """An xDS update keeps the Service objects of the services it did not touch: their
    clusters (pools, balancer position, subsets) go on as they are; an equal but rebuilt
    Service gets new clusters carrying the hosts over."""
    svc = dataclasses.replace(
        make_service(eps=(Endpoint(ipaddress.ip_address("10.0.0.1"), labels=(("v", "1"),)),)),
        subsets=(Subset("v1", (("v", "1"),)),),
    )
    other = make_service("db", vip="240.240.0.2")
    first = build(svc, other)
    second = build(svc, dataclasses.replace(other), previous=first)
    assert second[("reviews.default", 9080, "")] is first[("reviews.default", 9080, "")]
    assert second[("reviews.default", 9080, "v1")] is first[("reviews.default", 9080, "v1")]
    rebuilt = second[("db.default", 9080, "")]
    assert rebuilt is not first[("db.default", 9080, "")]
    assert rebuilt.hosts.hosts == first[("db.default", 9080, "")].hosts.hosts


def test_rebuild_keeps_surviving_hosts_and_adds_new_ones() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    kept = only(old).hosts.hosts[1]
    only(old).report_connect(kept, False)
    changed = dataclasses.replace(svc, endpoints=endpoints("10.0.0.2", "10.0.0.4"))
    cluster = only(build(changed, previous=old))
    assert cluster.hosts.hosts[0] is kept
    assert kept.ejected
    assert cluster.hosts.hosts[1].address == "10.0.0.4"
    assert cluster.outlier.ejections_active == 1


def test_rebuild_that_removes_an_ejected_host_forgets_its_ejection() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    gone = only(old).hosts.hosts[0]
    only(old).report_connect(gone, False)
    cluster = only(build(dataclasses.replace(svc, endpoints=svc.endpoints[1:]), previous=old))
    assert gone not in cluster.hosts.hosts
    assert cluster.outlier.ejections_active == 0


def test_rebuild_with_a_changed_target_port_makes_new_hosts() -> None:
    svc = make_service()
    old = build(svc)
    moved = dataclasses.replace(svc, ports=(ServicePort("http", 9080, target_port=9999),))
    cluster = only(build(moved, previous=old))
    assert not set(cluster.hosts.hosts) & set(only(old).hosts.hosts)
    assert {h.port for h in cluster.hosts.hosts} == {9999}


def test_rebuild_with_a_changed_outlier_config_clears_ejections() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    host = only(old).hosts.hosts[0]
    only(old).report_connect(host, False)
    assert host.ejected
    other = OutlierDetection(consecutive_5xx_errors=2, base_ejection_time=10.0)
    cluster = only(build(fresh_copy(svc, policy=with_outlier(other)), previous=old))
    # A new detector starts from fresh hosts: the old one's ejection does not follow them.
    fresh = cluster.hosts.hosts[0]
    assert fresh is not host and fresh.key == host.key
    assert not fresh.ejected and fresh.usable
    assert cluster.outlier is not only(old).outlier
    assert cluster.outlier.ejections_active == 0
    assert cluster.hosts.usable() == cluster.hosts.hosts
    assert fresh in {cluster.pick(None, set()) for _ in range(3)}


def test_rebuild_without_outlier_detection_clears_ejections() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    host = only(old).hosts.hosts[0]
    only(old).report_connect(host, False)
    cluster = only(build(fresh_copy(svc, policy=with_outlier(None)), previous=old))
    assert cluster.outlier is None
    assert host not in cluster.hosts.hosts  # fresh hosts: no ejection without its detector
    assert not any(h.ejected for h in cluster.hosts.hosts)
    assert len(cluster.hosts.usable()) == 3


def test_rebuild_with_a_changed_breaker_replaces_only_the_breaker() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    host = only(old).hosts.hosts[0]
    only(old).report_connect(host, False)
    assert only(old).breaker.try_open_connection()
    tighter = with_outlier(circuit_breaker=CircuitBreaker(max_connections=1))
    cluster = only(build(fresh_copy(svc, policy=tighter), previous=old))
    assert cluster.breaker is not only(old).breaker
    assert cluster.breaker.connections == 0
    assert cluster.outlier is only(old).outlier
    assert host.ejected


def test_rebuild_of_another_port_does_not_share_hosts() -> None:
    svc = make_service(ports=(ServicePort("http", 80), ServicePort("admin", 81)))
    clusters = build(svc)
    a, b = clusters[("reviews.default", 80, "")], clusters[("reviews.default", 81, "")]
    assert not set(a.hosts.hosts) & set(b.hosts.hosts)
    rebuilt = build(fresh_copy(svc), previous=clusters)
    assert rebuilt[("reviews.default", 80, "")].hosts.hosts == a.hosts.hosts
    assert rebuilt[("reviews.default", 81, "")].hosts.hosts == b.hosts.hosts


def test_a_late_failure_on_the_previous_cluster_does_not_eject_forever() -> None:
    clock, stats, rng = FakeClock(), Stats(), random.Random(1)
    svc = make_service(policy=with_outlier())
    port = svc.ports[0]
    old = ClusterRuntime("c", svc, port, stats, None, rng, clock)
    other = OutlierDetection(consecutive_5xx_errors=3, base_ejection_time=5.0)
    new = ClusterRuntime(
        "c", fresh_copy(svc, policy=with_outlier(other)), port, stats, old, rng, clock
    )
    host = old.hosts.hosts[0]  # what a session that captured ``old`` before the reload holds
    old.report_connect(host, False)
    clock.now += 10 * 300.0  # far beyond any ejection time
    new.pick(None, set())  # sweeps the new cluster's detector
    assert host not in new.hosts.hosts
    assert not any(h.ejected for h in new.hosts.hosts)
    assert len(new.hosts.usable()) == 3


# --- /clusters and gauges --------------------------------------------------------------------


def describe(cluster: ClusterRuntime) -> list[str]:
    """The cluster's /clusters lines, as the admin endpoint prints them for one worker."""
    return render_rows(cluster.rows()).splitlines()


def test_clusters_lines() -> None:
    svc = make_service(
        policy=with_outlier(circuit_breaker=CircuitBreaker(max_connections=77)),
        eps=(
            Endpoint(ipaddress.ip_address("10.0.0.1"), 2, labels=(("version", "v1"),)),
            Endpoint(ipaddress.ip_address("fd00::2")),
        ),
    )
    cluster = only(build(svc))
    first, second = cluster.hosts.hosts
    cluster.report_connect(first, True)
    cluster.report_connect(second, False)
    first.active_requests = 4
    name = "outbound|9080||reviews.default.svc.cluster.local"
    assert describe(cluster) == [
        f"{name}::outlier_detection_ejections_active::1",
        f"{name}::max_connections::77",
        f"{name}::10.0.0.1:9080::cx_active::4",
        f"{name}::10.0.0.1:9080::cx_total::1",
        f"{name}::10.0.0.1:9080::cx_connect_fail::0",
        f"{name}::10.0.0.1:9080::weight::2",
        f"{name}::10.0.0.1:9080::health_flags::healthy",
        f"{name}::[fd00::2]:9080::cx_active::0",
        f"{name}::[fd00::2]:9080::cx_total::0",
        f"{name}::[fd00::2]:9080::cx_connect_fail::1",
        f"{name}::[fd00::2]:9080::weight::1",
        f"{name}::[fd00::2]:9080::health_flags::/failed_outlier_check",
    ]


def test_clusters_rows_of_an_ejected_host() -> None:
    cluster = only(build(make_service(policy=with_outlier())))
    host = cluster.hosts.hosts[1]
    cluster.report_connect(host, False)
    rows = cluster.rows()
    assert (cluster.name, "10.0.0.2:9080", "health_flags", "/failed_outlier_check") in rows
    assert (cluster.name, "10.0.0.1:9080", "health_flags", "healthy") in rows
    assert (cluster.name, "", "outlier_detection_ejections_active", 1) in rows
    assert f"{cluster.name}::10.0.0.2:9080::health_flags::/failed_outlier_check" in describe(
        cluster
    )


def test_clusters_flags_an_ejected_and_unhealthy_host() -> None:
    cluster = only(build(make_service(policy=with_outlier())))
    host = cluster.hosts.hosts[2]
    cluster.report_connect(host, False)
    host.healthy = False
    cluster.hosts.hosts[0].healthy = False
    lines = describe(cluster)
    assert (
        f"{cluster.name}::10.0.0.3:9080::health_flags::/failed_outlier_check/failed_active_hc"
        in (lines)
    )
    assert f"{cluster.name}::10.0.0.1:9080::health_flags::/failed_active_hc" in lines
    assert f"{cluster.name}::10.0.0.2:9080::health_flags::healthy" in lines


def test_clusters_lines_without_outlier_detection() -> None:
    cluster = only(build(make_service()))
    assert describe(cluster)[0] == f"{cluster.name}::outlier_detection_ejections_active::0"


def test_clusters_ejection_is_lifted_by_a_rebuild_with_a_changed_config() -> None:
    svc = make_service(policy=with_outlier())
    old = build(svc)
    only(old).report_connect(only(old).hosts.hosts[0], False)
    cluster = only(build(fresh_copy(svc, policy=with_outlier(None)), previous=old))
    assert not any("/failed_outlier_check" in line for line in describe(cluster))


def gauges(stats: Stats, cluster: ClusterRuntime) -> dict[str, int]:
    metrics = (MEMBERSHIP_TOTAL, MEMBERSHIP_HEALTHY, OUTLIER_DETECTION_EJECTIONS_ACTIVE)
    return {m.name: stats.gauges[(m, labels(cluster=cluster.name))] for m in metrics}


def test_publish_gauges_membership() -> None:
    cluster = only(build(make_service(policy=with_outlier())))
    stats = Stats()
    cluster.publish_gauges(stats)
    assert gauges(stats, cluster) == {
        "membership_total": 3,
        "membership_healthy": 3,
        "outlier_detection_ejections_active": 0,
    }
    cluster.report_connect(cluster.hosts.hosts[0], False)
    cluster.hosts.hosts[1].healthy = False
    cluster.publish_gauges(stats)
    assert gauges(stats, cluster) == {
        "membership_total": 3,
        "membership_healthy": 1,
        "outlier_detection_ejections_active": 1,
    }


def test_publish_gauges_sets_rather_than_adds() -> None:
    cluster = only(build(make_service()))
    stats = Stats()
    for _ in range(3):
        cluster.publish_gauges(stats)
    assert gauges(stats, cluster)["membership_total"] == 3


def test_publish_gauges_of_an_empty_cluster() -> None:
    cluster = only(build(make_service(eps=())))
    stats = Stats()
    cluster.publish_gauges(stats)
    assert gauges(stats, cluster) == {
        "membership_total": 0,
        "membership_healthy": 0,
        "outlier_detection_ejections_active": 0,
    }


def test_hosts_are_host_objects() -> None:
    cluster = only(build(make_service()))
    assert all(isinstance(h, Host) for h in cluster.hosts.hosts)
