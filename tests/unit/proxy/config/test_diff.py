"""replaced_services: which services a new mesh swapped in place, or None for a rebuild."""

from __future__ import annotations

import dataclasses
import ipaddress

from support.services import http_service

from proxy.config.diff import replaced_services
from proxy.config.model import Endpoint, Mesh, ServicePort, Workload

A, B = http_service("a", "240.240.0.1"), http_service("b", "240.240.0.2")
MESH = Mesh(services=(A, B))


def test_services_swapped_for_ones_with_new_endpoints_are_the_pairs():
    moved = dataclasses.replace(B, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.9")),))
    assert replaced_services(MESH, dataclasses.replace(MESH, services=(A, moved))) == ((B, moved),)
    assert replaced_services(MESH, dataclasses.replace(MESH, source="v2")) == ()


def test_anything_else_is_a_rebuild():
    other_vip = dataclasses.replace(B, vips=(ipaddress.ip_address("240.240.0.9"),))
    other_port = dataclasses.replace(B, ports=(ServicePort("http", 8081, "http"),))
    for new in (
        dataclasses.replace(MESH, services=(A, other_vip)),
        dataclasses.replace(MESH, services=(A, other_port)),
        dataclasses.replace(
            MESH, services=(A, http_service("c", "240.240.0.1"))
        ),  # another key in B's place
        dataclasses.replace(MESH, services=(A,)),  # removed
        dataclasses.replace(MESH, services=(B, A)),  # moved
        dataclasses.replace(MESH, workload=Workload(name="x")),
        dataclasses.replace(MESH, outbound_traffic_policy="REGISTRY_ONLY"),
        Mesh(services=(A, B)),  # equal, but a workload of its own: not known to be the same
    ):
        assert replaced_services(MESH, new) is None, new


def test_a_worker_process_rebuilds_the_update_from_the_replaced_services_alone():
    from proxy.config.diff import replaced_indexes, with_replaced

    moved = dataclasses.replace(B, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.9")),))
    update = dataclasses.replace(MESH, services=(A, moved), source="eds v2")
    indexes = replaced_indexes(MESH, update)
    assert indexes == (1,)
    rebuilt = with_replaced(MESH, [(i, update.services[i]) for i in indexes], update.source)
    assert rebuilt == update and rebuilt.services[0] is A
    assert replaced_services(MESH, rebuilt) == ((B, moved),)
