"""DnsProxy.apply_mesh: names follow each mesh version, and an update that only replaced
services in place (an endpoint moved) keeps the table it has, since building one walks every
service."""

from __future__ import annotations

import dataclasses
import ipaddress

from support.services import http_service

from proxy.config.model import Endpoint, Mesh
from proxy.dns.names import Found
from proxy.dns.resolvconf import ResolvConf
from proxy.dns.server import DnsProxy
from proxy.series import Stats


def vip_of(proxy: DnsProxy, name: str) -> tuple[str, ...] | None:
    found = proxy.names.lookup(name)
    return found.v4 if isinstance(found, Found) else None


WEB, API = http_service("web", "240.240.0.1"), http_service("api", "240.240.0.2")
MESH = Mesh(services=(WEB, API))


def test_an_endpoint_update_keeps_the_table_and_its_answers():
    proxy = DnsProxy(MESH, ResolvConf((), ("default.svc.cluster.local",)), Stats())
    table = proxy.names
    moved = dataclasses.replace(API, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.9")),))
    proxy.apply_mesh(dataclasses.replace(MESH, services=(WEB, moved)))
    assert proxy.names is table and vip_of(proxy, "api.default.svc.cluster.local") == (
        "240.240.0.2",
    )


def test_names_follow_a_vip_a_removal_and_an_equal_mesh_loaded_again():
    proxy = DnsProxy(MESH, ResolvConf((), ()), Stats())
    readdressed = dataclasses.replace(API, vips=(ipaddress.ip_address("240.240.0.7"),))
    proxy.apply_mesh(dataclasses.replace(MESH, services=(WEB, readdressed)))
    assert vip_of(proxy, "api.default.svc.cluster.local") == ("240.240.0.7",)
    proxy.apply_mesh(Mesh(services=(WEB,)))  # a mesh file reloaded without api
    assert vip_of(proxy, "api.default.svc.cluster.local") is None
    table = proxy.names
    proxy.apply_mesh(Mesh(services=(WEB,)))  # equal names: the table is kept
    assert proxy.names is table
    assert vip_of(proxy, "web.default.svc.cluster.local") == ("240.240.0.1",)
