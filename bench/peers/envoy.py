"""Envoy as Istio runs it for outbound traffic: one listener on 15001 with the ``original_dst``
listener filter (the destination the REDIRECT rule replaced becomes the connection's local
address) and an ``ORIGINAL_DST`` cluster (``lb_policy: CLUSTER_PROVIDED``: the upstream host is
that address). L4 uses ``tcp_proxy``; L7 the HTTP connection manager with the router.

Access logs go to a file in both modes, as Detour writes one line per connection by default,
so both pay for the same feature. Run single-threaded (``--concurrency 1``), without hot
restart (no shared memory segment, no base id to collide on).
"""

from __future__ import annotations

import json
from typing import Literal

from bench.peers import OUTBOUND_PORT, Launch

Layer = Literal["tcp", "http"]
ADMIN_PORT = 15000
CLUSTER = "original_dst"
TYPES = "type.googleapis.com/envoy.extensions"
# Istio's sidecar sets every cluster threshold to uint32 max; Envoy's own default (1,024
# connections) would refuse the memory step's thousands of held connections.
UNLIMITED = 2**32 - 1


def _tcp_filter(access_log: str) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "outbound_tcp",
            "cluster": CLUSTER,
            "access_log": [_file_log(access_log)],
        },
    }


def _http_filter(access_log: str) -> dict:
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"type.googleapis.com/{hcm}",
            "stat_prefix": "outbound_http",
            "access_log": [_file_log(access_log)],
            "route_config": {
                "name": "outbound",
                "virtual_hosts": [
                    {
                        "name": "any",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": CLUSTER}}],
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


def render_config(layer: Layer, access_log: str) -> str:
    """The bootstrap as JSON (a subset of YAML, so ``-c file.yaml`` reads it)."""
    chain = _tcp_filter(access_log) if layer == "tcp" else _http_filter(access_log)
    bootstrap = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": {
                        "socket_address": {"address": "0.0.0.0", "port_value": OUTBOUND_PORT}
                    },
                    "listener_filters": [
                        {
                            "name": "envoy.filters.listener.original_dst",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.listener"
                                ".original_dst.v3.OriginalDst"
                            },
                        }
                    ],
                    "filter_chains": [{"filters": [chain]}],
                }
            ],
            "clusters": [
                {
                    "name": CLUSTER,
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "1s",
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": UNLIMITED,
                                "max_pending_requests": UNLIMITED,
                                "max_requests": UNLIMITED,
                                "max_retries": UNLIMITED,
                            }
                        ]
                    },
                }
            ],
        },
    }
    return json.dumps(bootstrap, indent=2) + "\n"


def launch(binary: str, layer: Layer, uid: int) -> Launch:
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
        config=render_config(layer, "{workdir}/access.log"),
        config_name="envoy.yaml",
    )
