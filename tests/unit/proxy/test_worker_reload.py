"""Worker.apply_mesh: a reload replaces the clusters of services that changed and keeps
the others whole (an xDS update hands over the same Service objects for those)."""

from __future__ import annotations

import dataclasses
import ipaddress

from support.services import http_service

from proxy.config.model import Endpoint, Mesh, Service, ServicePort
from proxy.routing import RouteTable
from proxy.worker import Worker


def retired(clusters: dict) -> list[str]:
    return [cluster.name for cluster in clusters.values() if cluster.retired]


def test_a_reload_retires_only_the_clusters_whose_service_changed() -> None:
    kept, changed = http_service("kept", "240.240.0.1"), http_service("changed", "240.240.0.2")
    worker = Worker(Mesh(services=(kept, changed)))
    before = dict(worker.clusters)
    moved = dataclasses.replace(changed, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.2")),))
    worker.apply_mesh(Mesh(services=(kept, moved)))
    assert worker.clusters[("kept.default", 8080, "")] is before[("kept.default", 8080, "")]
    assert (
        worker.clusters[("changed.default", 8080, "")] is not before[("changed.default", 8080, "")]
    )
    assert retired(before) == ["outbound|8080||changed.default.svc.cluster.local"]


def subset_service(name: str, vip: str, addresses: list[str]) -> Service:
    """A service on two ports with a v1 subset (three clusters per port)."""
    from proxy.config.model import Subset

    return Service(
        name=name,
        namespace="default",
        vips=(ipaddress.ip_address(vip),),
        ports=(ServicePort("http", 8080, "http"), ServicePort("admin", 9090, "http")),
        endpoints=tuple(
            Endpoint(ipaddress.ip_address(a), labels=(("version", "v1"),)) for a in addresses
        ),
        subsets=(Subset("v1", (("version", "v1"),)),),
    )


def state_of(worker: Worker) -> dict:
    """What a worker routes by: each destination's service, each cluster's endpoints."""
    return {
        "routes": {k: (v.service, v.port) for k, v in worker.routes.by_destination.items()},
        "clusters": {
            key: (runtime.name, tuple(h.endpoint for h in runtime.hosts.hosts))
            for key, runtime in worker.clusters.items()
        },
    }


def test_an_endpoint_update_touches_only_its_service_and_equals_a_whole_apply(monkeypatch):
    kept = subset_service("kept", "240.240.0.1", ["10.0.0.1"])
    changed = subset_service("changed", "240.240.0.2", ["10.0.0.2"])
    mesh = Mesh(services=(kept, changed))
    worker = Worker(mesh)
    before = dict(worker.clusters)
    moved = dataclasses.replace(
        changed, endpoints=(*changed.endpoints, Endpoint(ipaddress.ip_address("10.0.0.3")))
    )
    update = dataclasses.replace(mesh, services=(kept, moved), source="eds v2")

    def whole_table(*args):
        raise AssertionError("the whole route table was built again")

    monkeypatch.setattr(RouteTable, "build", whole_table)
    worker.apply_mesh(update)  # same workload object: only "changed" is replaced
    monkeypatch.undo()
    for key, cluster in before.items():
        assert (worker.clusters[key] is cluster) == (key[0] == "kept.default"), key
    assert sorted(retired(before)) == sorted(
        c.name for k, c in before.items() if k[0] == "changed.default"
    )
    assert worker.mesh is update
    assert state_of(worker) == state_of(Worker(update))  # what a whole apply would build


def test_a_change_beyond_endpoints_takes_the_whole_apply():
    kept = subset_service("kept", "240.240.0.1", ["10.0.0.1"])
    mesh = Mesh(services=(kept,))
    worker = Worker(mesh)
    elsewhere = dataclasses.replace(kept, vips=(ipaddress.ip_address("240.240.0.9"),))
    worker.apply_mesh(dataclasses.replace(mesh, services=(elsewhere,)))
    assert set(worker.routes.by_destination) == {("240.240.0.9", 8080), ("240.240.0.9", 9090)}
