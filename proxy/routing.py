"""Route decisions: where does a connection to (original destination IP, port) go? Pure.

Built once per mesh version into a dict keyed by (VIP, port), so the per-connection decision is
one dictionary lookup. The data path asks ``decide`` and acts on the answer; nothing here does
I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace

from proxy.config.model import Mesh, Service, ServicePort, Workload

# The sidecar's own listeners at their default ports (and Istio's reserved 15090): a connection
# whose original destination is one of these on a local address is a loop (or an attempt to
# reach the admin port through interception). A sidecar started with other ports adds them
# (``Options.own_ports``).
SIDECAR_PORTS = frozenset({15000, 15001, 15006, 15020, 15021, 15053, 15090})


@dataclass(frozen=True)
class ToCluster:
    """Send to a mesh service's cluster; ``port`` picks the endpoints' target port."""

    service: Service
    port: ServicePort


@dataclass(frozen=True)
class Passthrough:
    """ALLOW_ANY: connect to the original destination itself."""

    address: str
    port: int


@dataclass(frozen=True)
class Refuse:
    """Close the downstream connection; ``flag`` is the access-log response flag."""

    reason: str
    flag: str


Decision = ToCluster | Passthrough | Refuse


@dataclass(frozen=True)
class RouteTable:
    by_destination: dict[tuple[str, int], ToCluster]
    allow_any: bool
    workload: Workload
    # Whether an address belongs to this namespace; only asked for the sidecar's own ports.
    is_local: Callable[[str], bool]
    own_ports: frozenset[int] = SIDECAR_PORTS

    @classmethod
    def build(
        cls,
        mesh: Mesh,
        is_local: Callable[[str], bool],
        own_ports: frozenset[int] = SIDECAR_PORTS,
    ) -> RouteTable:
        table: dict[tuple[str, int], ToCluster] = {}
        for service in mesh.services:
            for vip in service.vips:
                for port in service.ports:
                    table[(str(vip), port.port)] = ToCluster(service, port)
        allow_any = mesh.outbound_traffic_policy == "ALLOW_ANY"
        return cls(table, allow_any, mesh.workload, is_local, own_ports)

    def replacing(self, pairs: tuple[tuple[Service, Service], ...]) -> RouteTable:
        """This table with each (old, new) pair's entries pointing at the new service: the
        pairs keep their VIPs and ports (``config.diff.replaced_services``), so the keys
        stay, and an entry another service won (a shared VIP:port) stays that service's."""
        table = dict(self.by_destination)
        for before, after in pairs:
            for vip in after.vips:
                for port in after.ports:
                    key = (str(vip), port.port)
                    if table[key].service is before:
                        table[key] = ToCluster(after, port)
        return replace(self, by_destination=table)

    def decide(self, destination: tuple[str, int] | None) -> Decision:
        """Outbound: a mesh service, a passthrough, or a refusal."""
        refusal = self._refuse_unusable(destination)
        if refusal is not None:
            return refusal
        route = self.by_destination.get(destination)
        if route is not None:
            return route
        if self.allow_any:
            return Passthrough(*destination)
        return Refuse(
            f"{destination[0]}:{destination[1]} is not a mesh service (REGISTRY_ONLY)", "NR"
        )

    def decide_inbound(self, destination: tuple[str, int] | None) -> Decision:
        """Inbound: forward to the local app on the original port, if the workload declares it
        (a workload that declares no ports accepts any)."""
        refusal = self._refuse_unusable(destination)
        if refusal is not None:
            return refusal
        declared = self.workload.inbound_ports
        if declared and destination[1] not in declared:
            return Refuse(
                f"port {destination[1]} is not an inbound port of workload {self.workload.name}",
                "NR",
            )
        return Passthrough(*destination)

    def _refuse_unusable(self, destination: tuple[str, int] | None) -> Refuse | None:
        if destination is None:
            return Refuse("connection was not redirected (no original destination)", "NR")
        address, port = destination
        if targets_the_sidecar(address, port, self.is_local, self.own_ports):
            return Refuse(f"original destination {address}:{port} is the sidecar itself", "NR")
        return None


def targets_the_sidecar(
    address: str,
    port: int,
    is_local: Callable[[str], bool],
    own_ports: frozenset[int] = SIDECAR_PORTS,
) -> bool:
    """Whether ``address:port`` is one of the sidecar's own listeners (admin included): never
    a destination, whether a client asked for it or a mesh endpoint names it."""
    return port in own_ports and (_is_loopback(address) or is_local(address))


def _is_loopback(address: str) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return parsed.is_loopback or parsed.is_unspecified
