"""Envoy as Istio runs it for outbound traffic: one listener on 15001 with the ``original_dst``
listener filter (the destination the REDIRECT rule replaced becomes the connection's local
address) and an ``ORIGINAL_DST`` cluster (``lb_policy: CLUSTER_PROVIDED``: the upstream host is
that address). L4 uses ``tcp_proxy``; L7 the HTTP connection manager with the router.

Access logs go to a file in both modes, as Detour writes one line per connection by default,
so both pay for the same feature. Run single-threaded (``--concurrency 1``), without hot
restart (no shared memory segment, no base id to collide on).

The mesh mTLS pair (``render_mtls_client``, ``render_mtls_server``) is Istio's sidecar pair
reduced to one service: the client's outbound listener routes to a cluster whose endpoint is
the server pod, with the TLS transport socket (the client certificate, the mesh root, the
backend's SPIFFE ID as the only SAN accepted, ALPN ``istio-http/1.1`` or ``istio``); the
server's inbound listener on 15006 (where init's inbound capture sends the pod's
connections) has ``original_dst`` and ``tls_inspector`` as Istio's ``virtualInbound`` does,
one filter chain for mesh TLS that requires a client certificate chaining to the mesh root
(and of this trust domain, as Istio checks), and forwards plaintext to 127.0.0.1.

TLS 1.3 only, and Envoy's default session resumption (``max_session_keys`` 1: one session
kept per upstream host, as Istio's sidecars run): Detour's sidecar speaks 1.3 only and resumes
the session of a peer it verified too, so both pairs' new connections are resumed handshakes
(a PSK with a fresh ECDHE) after the first; see bench/README.md.
"""

from __future__ import annotations

import json
from typing import Literal

from bench.peers import OUTBOUND_PORT, Launch
from bench.peers.mtls import INBOUND_PORT, TRUST_DOMAIN, MtlsPlan, TlsFiles

Layer = Literal["tcp", "http"]
ADMIN_PORT = 15000
CLUSTER = "original_dst"
TYPES = "type.googleapis.com/envoy.extensions"
# Istio's sidecar sets every cluster threshold to uint32 max; Envoy's own default (1,024
# connections) would refuse the memory step's thousands of held connections.
UNLIMITED = 2**32 - 1
MTLS_CLUSTER = "backend"
INBOUND_CLUSTER = "inbound"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
# Envoy's counters of TLS handshakes and resumed sessions (admin /stats, "name: value").
CLIENT_HANDSHAKES = rf"^cluster\.{MTLS_CLUSTER}\.ssl\.handshake$"
SERVER_HANDSHAKES = r"^listener\..+\.ssl\.handshake$"
RESUMED = r"\.ssl\.session_reused$"


def _tcp_filter(access_log: str, cluster: str = CLUSTER, prefix: str = "outbound") -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": f"{prefix}_tcp",
            "cluster": cluster,
            "access_log": [_file_log(access_log)],
        },
    }


def _http_filter(access_log: str, cluster: str = CLUSTER, prefix: str = "outbound") -> dict:
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"type.googleapis.com/{hcm}",
            "stat_prefix": f"{prefix}_http",
            "access_log": [_file_log(access_log)],
            "route_config": {
                "name": "outbound",
                "virtual_hosts": [
                    {
                        "name": "any",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": f"{TYPES}.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def _file_log(path: str) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
        },
    }


def _listener_filter(name: str) -> dict:
    return {
        "name": f"envoy.filters.listener.{name}",
        "typed_config": {
            "@type": f"type.googleapis.com/envoy.extensions.filters.listener.{name}.v3."
            + "".join(part.title() for part in name.split("_"))
        },
    }


def _breakers() -> dict:
    return {
        "thresholds": [
            {
                "max_connections": UNLIMITED,
                "max_pending_requests": UNLIMITED,
                "max_requests": UNLIMITED,
                "max_retries": UNLIMITED,
            }
        ]
    }


def _bootstrap(listener: dict, cluster: dict) -> str:
    """The bootstrap as JSON (a subset of YAML, so ``-c file.yaml`` reads it)."""
    bootstrap = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}
        },
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }
    return json.dumps(bootstrap, indent=2) + "\n"


def _outbound_listener(chain: dict) -> dict:
    return {
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": OUTBOUND_PORT}},
        "listener_filters": [_listener_filter("original_dst")],
        "filter_chains": [chain],
    }


def render_config(layer: Layer, access_log: str) -> str:
    """The outbound sidecar of the tcp and http rows: to the original destination."""
    chain = _tcp_filter(access_log) if layer == "tcp" else _http_filter(access_log)
    cluster = {
        "name": CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "circuit_breakers": _breakers(),
    }
    return _bootstrap(_outbound_listener({"filters": [chain]}), cluster)


def _static_cluster(name: str, address: str, port: int) -> dict:
    endpoint = {"address": {"socket_address": {"address": address, "port_value": port}}}
    return {
        "name": name,
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "1s",
        "circuit_breakers": _breakers(),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }


def _common_tls(files: TlsFiles, alpn: str, peer_san: dict) -> dict:
    """Istio's ISTIO_MUTUAL: the workload's certificate, the mesh root as the only trust, the
    peer's URI SAN checked; TLS 1.3 only, as Detour speaks it."""
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": [alpn],
        "tls_certificates": [
            {
                "certificate_chain": {"filename": files.cert_chain},
                "private_key": {"filename": files.private_key},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": files.root_cert},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": peer_san}],
        },
    }


def render_mtls_client(plan: MtlsPlan, access_log: str) -> str:
    """The client pod's Envoy: every captured connection to the ``backend`` cluster, HTTP/1.1
    through the HCM (pooled upstream) or opaque TCP through tcp_proxy, over mesh mTLS."""
    if plan.inner == "http":
        chain = _http_filter(access_log, MTLS_CLUSTER)
    else:
        chain = _tcp_filter(access_log, MTLS_CLUSTER)
    cluster = _static_cluster(MTLS_CLUSTER, plan.server_ip, plan.port)
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS}.UpstreamTlsContext",
            "common_tls_context": _common_tls(
                plan.client_tls, plan.alpn, {"exact": plan.server_id}
            ),
        },
    }
    return _bootstrap(_outbound_listener({"filters": [chain]}), cluster)


def render_mtls_server(plan: MtlsPlan, access_log: str) -> str:
    """The server pod's Envoy on the inbound port: mesh mTLS terminated (a client certificate
    required, of this trust domain), plaintext to the pod's origin on 127.0.0.1."""
    if plan.inner == "http":
        chain = _http_filter(access_log, INBOUND_CLUSTER, "inbound")
    else:
        chain = _tcp_filter(access_log, INBOUND_CLUSTER, "inbound")
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{TLS}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _common_tls(
                plan.server_tls, plan.alpn, {"prefix": f"spiffe://{TRUST_DOMAIN}/"}
            ),
        },
    }
    listener = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": INBOUND_PORT}},
        "listener_filters": [_listener_filter("original_dst"), _listener_filter("tls_inspector")],
        "filter_chains": [
            {
                "filter_chain_match": {
                    "transport_protocol": "tls",
                    "application_protocols": [plan.alpn],
                },
                "transport_socket": tls,
                "filters": [chain],
            }
        ],
    }
    return _bootstrap(listener, _static_cluster(INBOUND_CLUSTER, "127.0.0.1", plan.port))


def launch(binary: str, layer: str, uid: int, mtls: MtlsPlan | None = None) -> Launch:
    """``layer`` is tcp or http, or an mTLS row's side: mtls-http/mtls-tcp (the client),
    mtls-server (the server pod's)."""
    log = "{workdir}/access.log"
    if layer == "mtls-server":
        assert mtls is not None, "an mTLS row needs its plan"
        config = render_mtls_server(mtls, log)
    elif layer.startswith("mtls-"):
        assert mtls is not None, "an mTLS row needs its plan"
        config = render_mtls_client(mtls, log)
    elif layer in ("tcp", "http"):
        config = render_config(layer, log)  # type: ignore[arg-type]
    else:
        raise ValueError(f"no Envoy config for {layer!r}")
    return Launch(
        argv=(
            binary,
            "-c",
            "{workdir}/envoy.yaml",
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ),
        uid=uid,
        config=config,
        config_name="envoy.yaml",
    )
