"""HAProxy 2.6 (Debian's) as a transparent sidecar: ``server s 0.0.0.0`` with no port means
"the address and port the client connected to", which HAProxy reads with SO_ORIGINAL_DST on a
REDIRECTed IPv4 connection. ``mode tcp`` for L4, ``mode http`` (keep-alive both sides) for L7.

One thread, in the foreground (``-db``), logging one line per connection or request to stdout
(the harness sends it to a file), as Detour's access log does.
"""

from __future__ import annotations

from typing import Literal

from bench.peers import OUTBOUND_PORT, Launch

Layer = Literal["tcp", "http"]


def maxconn_for(nofile: int) -> int:
    """HAProxy refuses to start when maxconn's sockets (two per connection, plus its own)
    exceed RLIMIT_NOFILE and it cannot raise it, so derive it from the limit."""
    return max(1000, min(40000, (nofile - 1000) // 2))


def render_config(layer: Layer, maxconn: int) -> str:
    log_option = "option tcplog" if layer == "tcp" else "option httplog"
    return f"""# Rendered by bench/peers/haproxy.py; one thread, the original destination as server.
global
    nbthread 1
    maxconn {maxconn}
    log stdout format raw local0 info

defaults
    mode {layer}
    log global
    {log_option}
    timeout connect 1s
    timeout client 120s
    timeout server 120s

frontend outbound
    bind 0.0.0.0:{OUTBOUND_PORT}
    default_backend original_dst

backend original_dst
    server s 0.0.0.0
"""


def launch(layer: Layer, uid: int, nofile: int) -> Launch:
    return Launch(
        argv=("haproxy", "-db", "-f", "{workdir}/haproxy.cfg"),
        uid=uid,
        config=render_config(layer, maxconn_for(nofile)),
        config_name="haproxy.cfg",
    )
