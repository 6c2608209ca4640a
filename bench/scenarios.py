"""The rows of the benchmark: which client pod, which peer in it, what it dials, and which
metric groups apply. Pure data, so the report and the tests see the same list as the run.

Every row but ``direct`` is a client pod with detour-init's REDIRECT capture (or, for
``detour-ebpf``/``detour-sockmap``, detour-ebpf's cgroup connect hook instead of iptables) and
one proxy on 15001. L4 rows carry every metric; L7 rows skip the bulk transfers (a raw byte
stream through an HTTP router measures its TCP fallback, not its HTTP path); ``direct`` has no
proxy, so no proxy CPU or memory. The ``h2`` group (HTTP/2 cleartext from the client, many
streams on one connection) runs on ``direct`` and on the L7 rows that take HTTP/2 from clients.

The mesh mTLS rows (``mtls`` set) are a pair of proxies: the client pod's, as above, and a
server pod's (its own nginx origin, init's inbound capture, and a proxy that terminates the
mesh TLS and forwards plaintext to that nginx). The client dials the service VIP; what crosses
the bridge is mutual TLS with certificates from ``detour-ca``. Their CPU and memory are the two
proxies' together; ``detour-mtls``/``envoy-mtls`` carry HTTP/1.1 inside the TLS (pooled, so a
client connection is not a handshake) and ``detour-mtls-tcp``/``envoy-mtls-tcp`` opaque TCP (a
client connection is one mTLS handshake: their ``newconn`` group is handshakes/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layer = Literal["none", "l4", "l7"]
GROUPS = ("newconn", "keepalive", "latency", "h2", "bulk", "memory")


@dataclass(frozen=True)
class Row:
    name: str  # also the pod's role, so short
    label: str
    peer: str  # "direct", "detour", "envoy", "haproxy", "pproxy", "mitmproxy"
    layer: Layer
    uid: int | None  # the proxy's uid (excluded from capture in its pod)
    mode: str = ""  # the peer's mode: detour passthrough/mesh/http, envoy/haproxy tcp/http
    via_vip: bool = False  # dials the mesh VIP rather than the origin's address
    capture: Literal["iptables", "ebpf"] = "iptables"  # detour-init REDIRECT or detour-ebpf
    sockmap: bool = False  # with eBPF capture: detour-ebpf attach --sockmap on
    h2: bool = False  # takes HTTP/2 cleartext (prior knowledge) from the client
    proxy_args: tuple[str, ...] = ()  # Detour only: extra detour-proxy arguments of this row
    env: tuple[tuple[str, str], ...] = ()  # Detour only: environment of this row's proxy
    mtls: Literal["", "http", "tcp"] = ""  # a client+server pair, mesh mTLS between them
    server_uid: int | None = None  # mtls: the server-side proxy's uid
    only: tuple[str, ...] = ()  # when set: the groups this row runs (in GROUPS order)
    reference: str = ""  # the Envoy row to compare with, when not the layer's default

    @property
    def groups(self) -> tuple[str, ...]:
        if self.only:
            return tuple(g for g in GROUPS if g in self.only)
        skip = set() if self.h2 or self.layer == "none" else {"h2"}
        if self.layer == "l7":
            skip.add("bulk")
        if self.layer == "none":
            skip.add("memory")
        return tuple(g for g in GROUPS if g not in skip)

    @property
    def has_proxy(self) -> bool:
        return self.layer != "none"


ROWS: tuple[Row, ...] = (
    Row("direct", "direct (no proxy)", "direct", "none", None),
    Row("detour-l4", "Detour L4 passthrough", "detour", "l4", 1337, "passthrough"),
    Row("detour-mesh", "Detour L4 mesh service", "detour", "l4", 1337, "mesh", via_vip=True),
    Row(
        "detour-ebpf",
        "Detour L4 passthrough, eBPF capture",
        "detour",
        "l4",
        1337,
        "passthrough",
        capture="ebpf",
    ),
    Row(
        "detour-sockmap",
        "Detour L4 passthrough, eBPF capture + sockmap",
        "detour",
        "l4",
        1337,
        "passthrough",
        capture="ebpf",
        sockmap=True,
    ),
    Row(
        "detour-l4-c2",
        "Detour L4 passthrough, --concurrency 2",
        "detour",
        "l4",
        1337,
        "passthrough",
        proxy_args=("--concurrency", "2"),
    ),
    Row("envoy-tcp", "Envoy tcp_proxy", "envoy", "l4", 1401, "tcp"),
    Row("haproxy-tcp", "HAProxy mode tcp", "haproxy", "l4", 1402, "tcp"),
    Row("pproxy", "pproxy redir", "pproxy", "l4", 1403),
    Row("detour-http", "Detour HTTP router", "detour", "l7", 1337, "http", via_vip=True, h2=True),
    # The same router with the mypyc build refused (proxy/native.py): the before/after of
    # compiling the hot path, side by side in one run.
    Row(
        "detour-http-py",
        "Detour HTTP router, pure Python (DETOUR_PURE_PYTHON=1)",
        "detour",
        "l7",
        1337,
        "http",
        via_vip=True,
        h2=True,
        env=(("DETOUR_PURE_PYTHON", "1"),),
    ),
    Row("envoy-http", "Envoy HTTP (HCM + router)", "envoy", "l7", 1404, "http", h2=True),
    Row("haproxy-http", "HAProxy mode http", "haproxy", "l7", 1405, "http", h2=True),
    Row("mitmproxy", "mitmproxy transparent", "mitmproxy", "l7", 1406),
)
# Mesh mTLS pairs. No bulk (the question is the handshake and the per-request cost, and the
# server pod has no byte sink) and no HTTP/2 from the client (the L7 rows above cover it).
MTLS_GROUPS = ("newconn", "keepalive", "latency", "memory")
ROWS += (
    Row(
        "detour-mtls",
        "Detour mTLS pair, HTTP/1.1 (client + server)",
        "detour",
        "l7",
        1337,
        "mtls-http",
        via_vip=True,
        mtls="http",
        server_uid=1337,
        only=MTLS_GROUPS,
        reference="envoy-mtls",
    ),
    Row(
        "envoy-mtls",
        "Envoy mTLS pair, HTTP/1.1 (client + server)",
        "envoy",
        "l7",
        1407,
        "mtls-http",
        via_vip=True,
        mtls="http",
        server_uid=1408,
        only=MTLS_GROUPS,
        reference="envoy-mtls",
    ),
    Row(
        "detour-mtls-tcp",
        "Detour mTLS pair, opaque TCP (client + server)",
        "detour",
        "l4",
        1337,
        "mtls-tcp",
        via_vip=True,
        mtls="tcp",
        server_uid=1337,
        only=MTLS_GROUPS,
        reference="envoy-mtls-tcp",
    ),
    Row(
        "envoy-mtls-tcp",
        "Envoy mTLS pair, opaque TCP (client + server)",
        "envoy",
        "l4",
        1409,
        "mtls-tcp",
        via_vip=True,
        mtls="tcp",
        server_uid=1410,
        only=MTLS_GROUPS,
        reference="envoy-mtls-tcp",
    ),
)
BY_NAME = {row.name: row for row in ROWS}


def envoy_reference(row: Row) -> str | None:
    """The Envoy row a row is compared with: its own layer's (tcp_proxy for L4, HCM for L7),
    or the one it names (an mTLS pair is compared with the Envoy pair of its kind)."""
    if row.reference:
        return row.reference
    if row.layer == "l4":
        return "envoy-tcp"
    if row.layer == "l7":
        return "envoy-http"
    return None


def select(names: list[str] | None) -> tuple[Row, ...]:
    """The rows to run, in the canonical order; ``direct`` always (every ratio needs it)."""
    if not names:
        return ROWS
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {', '.join(BY_NAME)}")
    wanted = {"direct", *names}
    return tuple(row for row in ROWS if row.name in wanted)


def schedule(rows: tuple[Row, ...], passes: int, groups: tuple[str, ...] = GROUPS):
    """(pass, group, row) in interleaved order: within a pass every row takes a group's load
    before the next group starts, so a slow drift of the machine touches every row alike."""
    for number in range(1, passes + 1):
        for group in groups:
            for row in rows:
                if group in row.groups:
                    yield number, group, row
