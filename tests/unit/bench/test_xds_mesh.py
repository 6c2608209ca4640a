"""The scale bench's snapshots and summaries: the shape istiod would send, and figures that
mean what the table says."""

from __future__ import annotations

import pytest

from bench import xds_scale
from bench.xds_mesh import (
    Scale,
    Spread,
    endpoint_ip,
    full_snapshot,
    move_one_endpoint,
    net_cpu,
    percentile,
)
from proxy.config.model import Mesh
from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    resource_name,
)
from proxy.xds.translate import Resources, build_mesh


def addresses(resources: dict) -> list[str]:
    return [
        lb.endpoint.address.socket_address.address
        for cla in resources[TYPE_ENDPOINT]
        for group in cla.endpoints
        for lb in group.lb_endpoints
    ]


def as_resources(resources: dict) -> Resources:
    by = {t: {resource_name(m): m for m in ms} for t, ms in resources.items()}
    return Resources(by[TYPE_LISTENER], by[TYPE_ROUTE], by[TYPE_CLUSTER], by[TYPE_ENDPOINT])


def test_a_snapshot_is_one_cluster_and_assignment_per_service_and_builds_a_mesh() -> None:
    scale = Scale(30, 4)
    resources = full_snapshot(scale)
    assert len(resources[TYPE_CLUSTER]) == 31  # and the PassthroughCluster
    assert len(resources[TYPE_ENDPOINT]) == 30 and len(resources[TYPE_ROUTE]) == 1
    assert len(set(addresses(resources))) == scale.total_endpoints == 120
    mesh = build_mesh(as_resources(resources), Mesh(), "bench")  # Detour takes it whole
    assert len(mesh.services) == 30 and all(len(s.endpoints) == 4 for s in mesh.services)


def test_a_new_generation_moves_every_endpoint() -> None:
    before = set(addresses(full_snapshot(Scale(10, 3), generation=0)))
    after = set(addresses(full_snapshot(Scale(10, 3), generation=1)))
    assert before.isdisjoint(after)
    assert endpoint_ip(300, 2, 5) == "105.1.50.3"


def test_moving_one_endpoint_changes_one_message_and_shares_the_rest() -> None:
    resources = full_snapshot(Scale(5, 3))
    moved = move_one_endpoint(resources, generation=100)
    changed = [
        i
        for i, (a, b) in enumerate(zip(resources[TYPE_ENDPOINT], moved[TYPE_ENDPOINT], strict=True))
        if a is not b
    ]
    assert changed == [0]
    diff = set(addresses(moved)) ^ set(addresses(resources))
    assert diff == {endpoint_ip(0, 0, 0), endpoint_ip(0, 0, 100)}
    assert moved[TYPE_CLUSTER] is resources[TYPE_CLUSTER]


def test_scale_refuses_what_the_addresses_cannot_hold() -> None:
    with pytest.raises(ValueError, match="endpoints=251"):
        Scale(10, 251)
    with pytest.raises(ValueError, match="services=0"):
        Scale(0, 1)


def test_percentiles_and_cpu_net_of_idle() -> None:
    values = [float(v) for v in range(1, 101)]
    assert Spread.of(values) == Spread(50.0, 99.0)
    assert percentile([3.0], 0.99) == 3.0
    assert net_cpu(used=0.5, idle_rate=0.01, elapsed=10) == pytest.approx(0.4)
    assert net_cpu(used=0.05, idle_rate=0.01, elapsed=10) == 0.0


def test_the_command_line_names_a_bad_value() -> None:
    with pytest.raises(SystemExit):
        xds_scale.parse_args(["--variants", "sotw,bogus"])
    plan, _ = xds_scale.parse_args(["--sidecars", "3,5", "--services", "200"])
    assert plan.sidecars == (3, 5) and plan.scale == Scale(200, 10)
    quick, _ = xds_scale.parse_args(["--quick"])
    assert quick.sidecars == (2,) and quick.scale.total_endpoints == 200
