"""``--bootstrap FILE``: an Envoy-style bootstrap naming the node and its ADS server.

The file is Envoy's own ``Bootstrap`` message in YAML or JSON, parsed by protobuf's
``json_format`` into the real message from xds-protos, so an unknown or misspelt field is an
error naming it. Detour takes from it:

- ``node`` (id, cluster, metadata), sent on the ADS stream. An id in Istio's form,
  ``sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN``, also names the workload and the cluster
  domain when no mesh file is given;
- ``dynamic_resources.ads_config``: the gRPC service (``envoy_grpc`` naming a static cluster,
  or ``google_grpc`` with a ``target_uri``) and the variant (``GRPC``/``AGGREGATED_GRPC``:
  State of the World; ``DELTA_GRPC``/``AGGREGATED_DELTA_GRPC``: incremental);
- ``static_resources.clusters``: only the ADS server's own cluster (STATIC, one endpoint),
  with an optional TLS ``transport_socket`` (TLS or mTLS to the control plane,
  ``control_plane_tls.py``).

``admin`` is accepted and ignored (Detour's admin port is ``--admin-port``); every other field
is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2

# Registers the typed message an Envoy/Istio bootstrap's gRPC cluster names in
# typed_extension_protocol_options (HTTP/2 to the control plane), so "@type" parses.
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from proxy.xds.control_plane_tls import ControlPlaneTls, parse_transport_socket
from proxy.xds.resources import Refusal, only_fields, refuse

Variant = Literal["sotw", "delta"]
_ApiType = config_source_pb2.ApiConfigSource
_VARIANTS: dict[int, Variant] = {
    _ApiType.GRPC: "sotw",
    _ApiType.AGGREGATED_GRPC: "sotw",
    _ApiType.DELTA_GRPC: "delta",
    _ApiType.AGGREGATED_DELTA_GRPC: "delta",
}


class BootstrapError(ValueError):
    """The bootstrap file is unusable: which file, which field, and why."""

    def __init__(self, source: str, field: str, value: object, reason: str) -> None:
        self.field = field
        super().__init__(f"{source}: {field} = {value!r}: {reason}")


@dataclass(frozen=True)
class IstioNode:
    """What an Istio node id says about the workload."""

    ip: str
    pod: str
    namespace: str
    cluster_domain: str


@dataclass(frozen=True)
class Bootstrap:
    node: base_pb2.Node
    server: str  # host:port of the ADS server
    variant: Variant
    source: str
    tls: ControlPlaneTls | None = None  # None: plaintext to the control plane

    @property
    def istio_node(self) -> IstioNode | None:
        return parse_istio_node_id(self.node.id)


def load_bootstrap(path: Path) -> Bootstrap:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BootstrapError(source, "<file>", source, f"cannot read: {err}") from None
    return parse_bootstrap(text, source)


def parse_bootstrap(text: str, source: str) -> Bootstrap:
    """Pure: the bootstrap in ``text`` (YAML or JSON)."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BootstrapError(source, "<document>", "", f"invalid YAML: {err}") from None
    if not isinstance(document, dict):
        raise BootstrapError(source, "<document>", type(document).__name__, "expected a mapping")
    message = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(json.loads(json.dumps(document)), message)
    except json_format.ParseError as err:
        raise BootstrapError(source, "<document>", "", str(err)) from None
    try:
        return _bootstrap(message, source)
    except Refusal as refusal:
        raise BootstrapError(source, refusal.field, refusal.value, refusal.reason) from None


def _bootstrap(message: bootstrap_pb2.Bootstrap, source: str) -> Bootstrap:
    only_fields(message, "", ("node", "static_resources", "dynamic_resources"), ("admin",))
    if not message.node.id:
        raise refuse("node.id", "", "the control plane needs the node's id")
    dynamic = message.dynamic_resources
    only_fields(dynamic, "dynamic_resources", ("ads_config", "lds_config", "cds_config"))
    for name in ("lds_config", "cds_config"):
        config = getattr(dynamic, name)
        if dynamic.HasField(name) and not config.HasField("ads"):
            raise refuse(f"dynamic_resources.{name}", "<not ads>", "Detour takes LDS/CDS over ADS")
    if not dynamic.HasField("ads_config"):
        raise refuse("dynamic_resources.ads_config", "<missing>", "an ADS server is needed")
    ads = dynamic.ads_config
    where = "dynamic_resources.ads_config"
    only_fields(
        ads,
        where,
        ("api_type", "transport_api_version", "grpc_services"),
        ("set_node_on_first_message_only",),
    )
    variant = _VARIANTS.get(ads.api_type)
    if variant is None:
        raise refuse(
            f"{where}.api_type",
            _ApiType.ApiType.Name(ads.api_type),
            "GRPC or DELTA_GRPC (or their AGGREGATED_ names)",
        )
    if len(ads.grpc_services) != 1:
        raise refuse(f"{where}.grpc_services", len(ads.grpc_services), "exactly one")
    server, tls = _server(message, ads.grpc_services[0], f"{where}.grpc_services[0]")
    return Bootstrap(message.node, server, variant, source, tls)


def _server(
    message: bootstrap_pb2.Bootstrap, service: Any, where: str
) -> tuple[str, ControlPlaneTls | None]:
    """The ADS server's ``host:port``, and how to secure the connection to it."""
    only_fields(service, where, ("envoy_grpc", "google_grpc", "timeout"))
    if service.HasField("google_grpc"):
        only_fields(service.google_grpc, f"{where}.google_grpc", ("target_uri", "stat_prefix"))
        return str(service.google_grpc.target_uri), None
    name = service.envoy_grpc.cluster_name
    static = message.static_resources
    only_fields(static, "static_resources", ("clusters",))
    for index, cluster in enumerate(static.clusters):
        cwhere = f"static_resources.clusters[{index}]"
        if cluster.name != name:
            raise refuse(f"{cwhere}.name", cluster.name, "only the ADS server's cluster")
        only_fields(
            cluster,
            cwhere,
            (
                "name",
                "type",
                "load_assignment",
                "connect_timeout",
                "typed_extension_protocol_options",
                "http2_protocol_options",
                "transport_socket",
            ),
        )
        tls = (
            parse_transport_socket(cluster.transport_socket, f"{cwhere}.transport_socket")
            if cluster.HasField("transport_socket")
            else None
        )
        endpoints = [
            lb.endpoint.address.socket_address
            for group in cluster.load_assignment.endpoints
            for lb in group.lb_endpoints
        ]
        if len(endpoints) != 1:
            raise refuse(f"{cwhere}.load_assignment", len(endpoints), "exactly one endpoint")
        host = endpoints[0].address
        port = endpoints[0].port_value
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), tls
    raise refuse(f"{where}.envoy_grpc.cluster_name", name, "no such static cluster")


def parse_istio_node_id(node_id: str) -> IstioNode | None:
    """``sidecar~10.88.0.2~client-1.default~default.svc.cluster.local``, or None."""
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in ("sidecar", "router"):
        return None
    _, ip, pod_ns, dns = parts
    pod, _, namespace = pod_ns.rpartition(".")
    prefix = f"{namespace}.svc."
    if not pod or not namespace or not dns.startswith(prefix):
        return None
    return IstioNode(ip, pod, namespace, dns[len(prefix) :])
