"""Envoy resources the way istiod shapes them, for the xDS tests (and the test control plane).

Each builder takes the resource as Envoy's JSON/YAML would spell it and parses it with
protobuf's ``json_format`` into the real message from xds-protos, so a test reads like the
config an operator would see in ``istioctl proxy-config``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

# Registers the typed_config messages json_format must know to parse "@type".
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    resource_name,
)
from proxy.xds.translate import Resources, check_resource

DOMAIN = "svc.cluster.local"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def outbound(port: int, host: str, subset: str = "") -> str:
    """istiod's cluster name, ``outbound|8080||backend.default.svc.cluster.local``."""
    return f"outbound|{port}|{subset}|{host}.{DOMAIN}"


def cluster(name: str, **fields: Any) -> cluster_pb2.Cluster:
    spec = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name},
        "connect_timeout": "1s",
        **fields,
    }
    return json_format.ParseDict(spec, cluster_pb2.Cluster())


# An endpoint as istiod sends one that a sidecar runs next to (auto mTLS picks TLS for it).
MESHED_ENDPOINT = {
    "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
}
_SDS = {  # where the istio-agent serves the secrets (Detour is its own agent)
    "api_config_source": {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
        "set_node_on_first_message_only": True,
    },
    "initial_fetch_timeout": "0s",
    "resource_api_version": "V3",
}


def istio_mtls(spiffe_id: str, port: int, host: str) -> dict:
    """istiod's transport sockets for a meshed service's cluster (``cluster(name, **here)``):
    Istio mTLS for endpoints marked tlsMode: istio, verifying ``spiffe_id``; plaintext for
    the others."""
    upstream = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    common = {
        "alpn_protocols": ["istio-peer-exchange", "istio"],
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": _SDS}],
        "combined_validation_context": {
            "default_validation_context": {"match_subject_alt_names": [{"exact": spiffe_id}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": _SDS},
        },
    }
    raw = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    return {
        "transport_socket_matches": [
            {
                "name": "tlsMode-istio",
                "match": {"tlsMode": "istio"},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": f"type.googleapis.com/{upstream}",
                        "common_tls_context": common,
                        "sni": f"outbound_.{port}_._.{host}",
                    },
                },
            },
            {
                "name": "tlsMode-disabled",
                "match": {},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": f"type.googleapis.com/{raw}"},
                },
            },
        ]
    }


def passthrough_cluster() -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": "PassthroughCluster",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "1s",
        },
        cluster_pb2.Cluster(),
    )


def assignment(
    name: str, endpoints: Iterable[tuple[str, int]], **lb_fields: Any
) -> endpoint_pb2.ClusterLoadAssignment:
    spec = {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": ip, "port_value": port}}
                        },
                        **lb_fields,
                    }
                    for ip, port in endpoints
                ]
            }
        ],
    }
    return json_format.ParseDict(spec, endpoint_pb2.ClusterLoadAssignment())


def virtual_outbound(port: int = 15001, allow_any: bool = True) -> listener_pb2.Listener:
    target = "PassthroughCluster" if allow_any else "BlackHoleCluster"
    spec = {
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "default_filter_chain": {"filters": [_tcp_proxy(target)]},
    }
    return json_format.ParseDict(spec, listener_pb2.Listener())


def tcp_listener(vip: str, port: int, cluster_name: str, **proxy: Any) -> listener_pb2.Listener:
    spec = {
        "name": f"{vip}_{port}",
        "address": {"socket_address": {"address": vip, "port_value": port}},
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [_tcp_proxy(cluster_name, **proxy)]}],
    }
    return json_format.ParseDict(spec, listener_pb2.Listener())


def http_listener(port: int, route_config: str | None = None) -> listener_pb2.Listener:
    """istiod's ``0.0.0.0_PORT`` listener: every address on the port, routes from RDS."""
    spec = {
        "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": f"outbound_0.0.0.0_{port}",
                            "rds": {
                                "route_config_name": route_config or str(port),
                                "config_source": {"ads": {}},
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.fault",
                                    "typed_config": {"@type": FAULT_TYPE},
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return json_format.ParseDict(spec, listener_pb2.Listener())


def route_config(name: str, virtual_hosts: list[Mapping[str, Any]]) -> route_pb2.RouteConfiguration:
    spec = {"name": name, "virtual_hosts": list(virtual_hosts)}
    return json_format.ParseDict(spec, route_pb2.RouteConfiguration())


def virtual_host(host: str, port: int, vip: str, routes: list[Mapping[str, Any]]) -> dict:
    """istiod's virtual host of one service port: its names and its VIP as domains."""
    fqdn = f"{host}.{DOMAIN}"
    return {
        "name": f"{fqdn}:{port}",
        "domains": [fqdn, f"{fqdn}:{port}", host.split(".")[0], vip, f"{vip}:{port}"],
        "routes": list(routes),
    }


def route(cluster_name: str, prefix: str = "/", **action: Any) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


def _tcp_proxy(cluster_name: str, **fields: Any) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": TCP_PROXY_TYPE,
            "stat_prefix": cluster_name,
            "cluster": cluster_name,
            **fields,
        },
    }


def snapshot(*resources: Any) -> dict[str, list]:
    """Resources grouped by type URL, as the test control plane takes them."""
    by_type: dict[str, list] = {
        TYPE_LISTENER: [],
        TYPE_ROUTE: [],
        TYPE_CLUSTER: [],
        TYPE_ENDPOINT: [],
    }
    kinds = {
        listener_pb2.Listener: TYPE_LISTENER,
        route_pb2.RouteConfiguration: TYPE_ROUTE,
        cluster_pb2.Cluster: TYPE_CLUSTER,
        endpoint_pb2.ClusterLoadAssignment: TYPE_ENDPOINT,
    }
    for resource in resources:
        by_type[kinds[type(resource)]].append(resource)
    return by_type


def bootstrap(
    node_id: str, server: str, api_type: str = "GRPC", transport_socket: dict | None = None
) -> dict:
    """Envoy's bootstrap for a sidecar of node ``node_id`` whose ADS server is ``server``
    ("host:port"), as a dict (written as JSON): the same file starts Envoy and Detour (which
    ignores ``admin``). ``api_type`` GRPC is State of the World, DELTA_GRPC incremental;
    ``transport_socket`` (``tls_transport_socket``) secures the connection to the server."""
    host, port = server.rsplit(":", 1)
    h2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    endpoint = {"address": {"socket_address": {"address": host, "port_value": int(port)}}}
    return {
        "node": {"id": node_id, "cluster": node_id.split("~")[2].split(".")[0]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {  # gRPC is HTTP/2
                        h2: {
                            "@type": f"type.googleapis.com/{h2}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                    **({"transport_socket": transport_socket} if transport_socket else {}),
                }
            ]
        },
    }


def tls_transport_socket(
    root: str, server_name: str, chain: str | None = None, key: str | None = None
) -> dict:
    """The ADS cluster's TLS transport socket: verify the server as ``server_name`` against
    the roots in file ``root``; with ``chain`` and ``key`` (files), present that certificate."""
    common: dict = {
        "validation_context": {
            "trusted_ca": {"filename": root},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": server_name}}
            ],
        }
    }
    if chain is not None and key is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": chain}, "private_key": {"filename": key}}
        ]
    upstream = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"type.googleapis.com/{upstream}",
            "sni": server_name,
            "common_tls_context": common,
        },
    }


def resources(*messages: Any) -> Resources:
    """The messages as accepted resources by type and name (for the translation's tests)."""
    by_type = {t: {resource_name(m): m for m in ms} for t, ms in snapshot(*messages).items()}
    return Resources(
        by_type[TYPE_LISTENER], by_type[TYPE_ROUTE], by_type[TYPE_CLUSTER], by_type[TYPE_ENDPOINT]
    )


def checked(*messages: Any) -> Resources:
    """The resources after each passed its own checks (as the client does on arrival)."""
    found = resources(*messages)
    for type_url in (TYPE_LISTENER, TYPE_ROUTE, TYPE_CLUSTER, TYPE_ENDPOINT):
        for name, message in found.of_type(type_url).items():
            check_resource(type_url, name, message, "cluster.local")
    return found
