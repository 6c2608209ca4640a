"""Small mesh-model services for unit tests of what consumes a Mesh (workers, DNS, diffs)."""

from __future__ import annotations

import ipaddress

from proxy.config.model import Endpoint, Service, ServicePort


def http_service(name: str, vip: str, address: str = "10.0.0.1") -> Service:
    """``name`` in namespace default at ``vip``, HTTP on 8080, one endpoint at ``address``."""
    return Service(
        name=name,
        namespace="default",
        vips=(ipaddress.ip_address(vip),),
        ports=(ServicePort("http", 8080, "http"),),
        endpoints=(Endpoint(ipaddress.ip_address(address)),),
    )
