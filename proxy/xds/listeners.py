"""LDS: Envoy's outbound listeners as the destinations Detour's outbound listener serves. Pure.

Detour has one outbound listener of its own (15001, fed by interception), like istiod's
``virtualOutbound``; the listeners of a snapshot say what an original destination becomes:

- the listener with ``use_original_dst`` is that virtual outbound listener: its default
  filter chain's cluster is the outbound traffic policy (PassthroughCluster: ALLOW_ANY,
  BlackHoleCluster: REGISTRY_ONLY);
- every other outbound listener (``bind_to_port: false``, as istiod sends them) stands for its
  address and port (``10.96.0.5_9000``, or ``0.0.0.0_8080`` for every address on 8080): each
  filter chain, matched by destination port and address ranges, is either a ``tcp_proxy`` to
  one cluster or an ``http_connection_manager`` whose routes come from RDS.

Inbound listeners are not taken from xDS yet (the workload section of the mesh file says what
the inbound side serves), so a listener with ``traffic_direction: INBOUND`` is refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from proxy.config.model import IPAddress
from proxy.xds.clusters import BLACKHOLE, PASSTHROUGH
from proxy.xds.resources import only_fields, refuse, seconds, unpack

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
FAULT = "envoy.filters.http.fault"
# Listener filters that only feed filter chain fields Detour refuses anyway (or that Detour
# does itself: original destination recovery, protocol sniffing).
_HARMLESS_LISTENER_FILTERS = (
    "envoy.filters.listener.original_dst",
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
)


@dataclass(frozen=True)
class OutboundChain:
    """What connections to ``port`` (at ``addresses``, or any address when empty) get."""

    port: int
    addresses: tuple[IPAddress, ...]
    kind: Literal["tcp", "http"]
    cluster: str = ""  # tcp
    idle_timeout: float | None = None  # tcp: tcp_proxy idle_timeout (Envoy's default 1 h)
    connect_attempts: int = 1  # tcp: max_connect_attempts
    route_config_name: str = ""  # http, RDS
    inline_routes: route_pb2.RouteConfiguration | None = None  # http, inline route_config


@dataclass(frozen=True)
class ListenerInfo:
    name: str
    chains: tuple[OutboundChain, ...]
    # The virtual outbound listener's policy: True ALLOW_ANY, False REGISTRY_ONLY; else None.
    allow_any: bool | None = None


_LISTENER_FIELDS = (
    "name",
    "address",
    "filter_chains",
    "default_filter_chain",
    "use_original_dst",
    "bind_to_port",
    "traffic_direction",
    "listener_filters",
)
_LISTENER_IGNORED = (
    "stat_prefix",
    "metadata",
    "listener_filters_timeout",
    "continue_on_listener_filters_timeout",
    "access_log",
)


def translate_listener(listener: listener_pb2.Listener) -> ListenerInfo:
    only_fields(listener, "", _LISTENER_FIELDS, _LISTENER_IGNORED)
    if listener.traffic_direction == base_pb2.INBOUND:
        raise refuse("traffic_direction", "INBOUND", "inbound listeners are not taken from xDS")
    for index, listener_filter in enumerate(listener.listener_filters):
        if listener_filter.name not in _HARMLESS_LISTENER_FILTERS:
            raise refuse(f"listener_filters[{index}].name", listener_filter.name, "not supported")
    address, port = _socket_address(listener)
    if listener.use_original_dst.value:
        return ListenerInfo(listener.name, (), _virtual_outbound_policy(listener))
    if listener.HasField("bind_to_port") and listener.bind_to_port.value:
        raise refuse("bind_to_port", True, "Detour binds only its own listeners")
    if not listener.HasField("bind_to_port"):
        raise refuse(
            "bind_to_port",
            "<unset: true>",
            "an outbound listener needs bind_to_port: false (Detour binds only its own listeners)",
        )
    if listener.HasField("default_filter_chain"):
        raise refuse("default_filter_chain", "<set>", "only on the use_original_dst listener")
    chains = tuple(
        _chain(chain, f"filter_chains[{index}]", address, port)
        for index, chain in enumerate(listener.filter_chains)
    )
    return ListenerInfo(listener.name, chains)


def _socket_address(listener: listener_pb2.Listener) -> tuple[IPAddress | None, int]:
    only_fields(listener.address, "address", ("socket_address",))
    socket = listener.address.socket_address
    only_fields(socket, "address.socket_address", ("address", "port_value"))
    try:
        address = ipaddress.ip_address(socket.address)
    except ValueError:
        raise refuse("address.socket_address.address", socket.address, "not an IP") from None
    return (None if address.is_unspecified else address), socket.port_value


def _virtual_outbound_policy(listener: listener_pb2.Listener) -> bool:
    """ALLOW_ANY or REGISTRY_ONLY, from the cluster of the default filter chain."""
    if listener.filter_chains:
        raise refuse(
            "filter_chains",
            len(listener.filter_chains),
            "the use_original_dst listener takes only a default_filter_chain",
        )
    chain = listener.default_filter_chain
    cluster = _tcp_proxy(chain, "default_filter_chain").cluster
    if cluster not in (PASSTHROUGH, BLACKHOLE):
        raise refuse(
            "default_filter_chain.filters[0].cluster",
            cluster,
            f"{PASSTHROUGH} (ALLOW_ANY) or {BLACKHOLE} (REGISTRY_ONLY)",
        )
    return bool(cluster == PASSTHROUGH)


def _chain(
    chain: listener_components_pb2.FilterChain,
    where: str,
    address: IPAddress | None,
    port: int,
) -> OutboundChain:
    only_fields(chain, where, ("filter_chain_match", "filters"), ("name", "metadata"))
    match = chain.filter_chain_match
    only_fields(
        match,
        f"{where}.filter_chain_match",
        ("destination_port", "prefix_ranges", "transport_protocol"),
    )
    if match.transport_protocol not in ("", "raw_buffer"):
        raise refuse(
            f"{where}.filter_chain_match.transport_protocol",
            match.transport_protocol,
            "only raw_buffer (Detour sniffs TLS itself)",
        )
    if match.HasField("destination_port"):
        port = match.destination_port.value
    addresses = _prefix_addresses(match, f"{where}.filter_chain_match")
    if address is not None:
        if addresses and addresses != (address,):
            raise refuse(
                f"{where}.filter_chain_match.prefix_ranges",
                "<set>",
                f"differs from the listener's address {address}",
            )
        addresses = (address,)
    if not 0 < port < 65536:
        raise refuse("address.socket_address.port_value", port, "not a port")
    if len(chain.filters) != 1:
        raise refuse(f"{where}.filters", len(chain.filters), f"exactly one: {TCP_PROXY} or {HCM}")
    name = chain.filters[0].name
    if name == TCP_PROXY:
        proxy = _tcp_proxy(chain, where)
        idle = seconds(proxy.idle_timeout) if proxy.HasField("idle_timeout") else None
        attempts = proxy.max_connect_attempts.value if proxy.HasField("max_connect_attempts") else 1
        return OutboundChain(
            port,
            addresses,
            "tcp",
            cluster=proxy.cluster,
            idle_timeout=idle or None,
            connect_attempts=attempts,
        )
    if name == HCM:
        manager = _manager(chain, where)
        if manager.HasField("rds"):
            return OutboundChain(
                port, addresses, "http", route_config_name=manager.rds.route_config_name
            )
        return OutboundChain(port, addresses, "http", inline_routes=manager.route_config)
    raise refuse(f"{where}.filters[0].name", name, f"supported: {TCP_PROXY}, {HCM}")


def _prefix_addresses(
    match: listener_components_pb2.FilterChainMatch, where: str
) -> tuple[IPAddress, ...]:
    """Prefix ranges are single addresses here (a service's VIPs)."""
    found: list[IPAddress] = []
    for index, cidr in enumerate(match.prefix_ranges):
        try:
            network = ipaddress.ip_network(
                f"{cidr.address_prefix}/{cidr.prefix_len.value}"
                if cidr.HasField("prefix_len")
                else cidr.address_prefix
            )
        except ValueError:
            raise refuse(
                f"{where}.prefix_ranges[{index}]", cidr.address_prefix, "not an address range"
            ) from None
        if network.num_addresses != 1:
            raise refuse(
                f"{where}.prefix_ranges[{index}]",
                str(network),
                "Detour matches single addresses (a service's VIP)",
            )
        found.append(network.network_address)
    return tuple(found)


def _tcp_proxy(chain: listener_components_pb2.FilterChain, where: str) -> tcp_proxy_pb2.TcpProxy:
    if len(chain.filters) != 1 or chain.filters[0].name != TCP_PROXY:
        raise refuse(f"{where}.filters", len(chain.filters), f"exactly one {TCP_PROXY}")
    field = f"{where}.filters[0].typed_config"
    proxy = unpack(chain.filters[0].typed_config, tcp_proxy_pb2.TcpProxy, field)
    only_fields(
        proxy,
        field,
        ("cluster", "idle_timeout", "max_connect_attempts"),
        ("stat_prefix", "access_log"),
    )
    if proxy.WhichOneof("cluster_specifier") != "cluster":
        raise refuse(f"{field}.weighted_clusters", "<set>", "TCP routes to one cluster")
    return proxy


def _manager(
    chain: listener_components_pb2.FilterChain, where: str
) -> hcm_pb2.HttpConnectionManager:
    field = f"{where}.filters[0].typed_config"
    manager = unpack(chain.filters[0].typed_config, hcm_pb2.HttpConnectionManager, field)
    only_fields(
        manager,
        field,
        ("codec_type", "rds", "route_config", "http_filters"),
        ("stat_prefix", "access_log", "tracing", "generate_request_id"),
    )
    if manager.codec_type != hcm_pb2.HttpConnectionManager.AUTO:
        shown = hcm_pb2.HttpConnectionManager.CodecType.Name(manager.codec_type)
        raise refuse(f"{field}.codec_type", shown, "AUTO only (Detour detects the protocol)")
    if manager.HasField("rds"):
        only_fields(manager.rds, f"{field}.rds", ("route_config_name", "config_source"))
        source = manager.rds.config_source
        if manager.rds.HasField("config_source") and not source.HasField("ads"):
            raise refuse(f"{field}.rds.config_source", "<not ads>", "only ADS is supported")
    elif not manager.HasField("route_config"):
        raise refuse(field, "<no routes>", "rds or route_config is needed")
    names = [f.name for f in manager.http_filters]
    if not names or names[-1] != ROUTER:
        raise refuse(f"{field}.http_filters", names, f"must end with {ROUTER}")
    for index, name in enumerate(names[:-1]):
        if name != FAULT:
            raise refuse(
                f"{field}.http_filters[{index}].name", name, f"supported: {FAULT}, {ROUTER}"
            )
    return manager
