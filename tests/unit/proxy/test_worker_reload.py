"""Worker.apply_mesh: a reload replaces the clusters of services that changed and keeps
the others whole (an xDS update hands over the same Service objects for those)."""

from __future__ import annotations

import dataclasses
import ipaddress

from proxy.config.model import Endpoint, Mesh, Service, ServicePort
from proxy.worker import Worker


def service(name: str, vip: str) -> Service:
    return Service(
        name=name,
        namespace="default",
        vips=(ipaddress.ip_address(vip),),
        ports=(ServicePort("http", 8080, "http"),),
        endpoints=(Endpoint(ipaddress.ip_address("10.0.0.1")),),
    )


class Retired(list):
    def record(self, cluster) -> None:
        self.append(cluster.name)


def test_a_reload_retires_only_the_clusters_whose_service_changed(monkeypatch) -> None:
    kept, changed = service("kept", "240.240.0.1"), service("changed", "240.240.0.2")
    worker = Worker(Mesh(services=(kept, changed)))
    before = dict(worker.clusters)
    retired = Retired()
    for cluster in before.values():
        monkeypatch.setattr(cluster, "retire", lambda c=cluster: retired.record(c))
    moved = dataclasses.replace(changed, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.2")),))
    worker.apply_mesh(Mesh(services=(kept, moved)))
    assert worker.clusters[("kept.default", 8080, "")] is before[("kept.default", 8080, "")]
    assert (
        worker.clusters[("changed.default", 8080, "")] is not before[("changed.default", 8080, "")]
    )
    assert retired == ["outbound|8080||changed.default.svc.cluster.local"]
