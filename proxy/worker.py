"""A worker: one uvloop event loop serving the outbound and inbound listeners.

It owns the data path of its connections and its Stats. The mesh it routes by is swapped
whole by ``apply_mesh`` (a reload): new connections use the new routes and clusters at once,
connections already open keep the objects they started with, so none is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import socket
import time
from dataclasses import dataclass

from detour_common.original_dst import original_destination
from proxy.access_log import AccessLog
from proxy.admin.clusters import Row
from proxy.config.model import Mesh, Service
from proxy.filters.http_proxy import Exchange
from proxy.http.events import Headers
from proxy.http.router import HttpRouter, header_value
from proxy.platform.sockets import is_local_address
from proxy.routing import RouteTable
from proxy.session import ListenerInfo, Session
from proxy.stats import Stats, istio_labels, listener_labels
from proxy.transport.relay import RelayHalf
from proxy.upstream.cluster import ClusterKey, ClusterRuntime, build_clusters, inbound_service

log = logging.getLogger("detour.proxy")

OUTBOUND = ListenerInfo("virtualOutbound", "outbound")
INBOUND_V4 = ListenerInfo("virtualInbound", "inbound", source_address="127.0.0.6")
# ::6 is put on lo by init (REDIRECT mode with IPv6), as 127.0.0.6 is implicitly local.
INBOUND_V6 = ListenerInfo("virtualInbound", "inbound", source_address="::6")
INBOUND_TPROXY = ListenerInfo("virtualInbound", "inbound", preserve_source=True)


@dataclass(frozen=True)
class ListenSpec:
    """A bound listening socket and what to do with its connections."""

    sock: socket.socket
    info: ListenerInfo
    transparent: bool = False


@dataclass(frozen=True)
class WorkerReport:
    """What a worker tells the supervisor for /stats, /stats/prometheus and /clusters. Defined
    here, not in ``workers.py``: a worker process runs that module as ``__main__``, and a
    pickled ``__main__.WorkerReport`` would not load in the supervisor."""

    stats: dict[str, list]  # Stats.snapshot(): copies, never the worker's live tables
    clusters: list[Row]
    sessions: int


class Downstream(RelayHalf):
    """The accepted side: on accept, recover the original destination and start a session."""

    __slots__ = ("_spec", "_worker")

    def __init__(self, worker: Worker, spec: ListenSpec) -> None:
        super().__init__(on_lost=_unattached)
        self._worker = worker
        self._spec = spec

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # No pause_reading() here: bytes that arrive before the upstream is connected are held
        # by RelayHalf (which pauses on the first of them). A pause inside connection_made is
        # also unreliable: CPython 3.11's own loop starts reading after it regardless.
        try:
            sock = transport.get_extra_info("socket")
            destination = original_destination(sock)
            if self._spec.transparent and (
                destination is None or destination == sock.getsockname()
            ):
                destination = sock.getsockname()[:2]  # TPROXY: the socket's own address
            session = Session(
                self._worker,
                self._spec.info,
                self,
                destination,
                transport.get_extra_info("peername")[:2],
            )
            self.on_lost = session.half_lost
            session.start()
        except Exception:
            # A bug here must cost this connection only: the event loop would log it and go
            # on, but leave the client connected to nobody until it gave up. In-process (one
            # worker) the same loop serves admin and readiness, so nothing may escape.
            log.exception("accepting a connection failed unexpectedly")
            transport.abort()


def host_port(address: tuple[str, int] | None) -> str:
    """``1.2.3.4:80`` / ``[fd00::1]:80`` / ``-``, as Envoy's access log writes addresses."""
    if address is None:
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unattached(half: RelayHalf, exc: Exception | None) -> None:
    """A half lost before its session existed has nothing to account for."""


class Worker:
    def __init__(
        self, mesh: Mesh, access_log_format: str = "text", access_log: AccessLog | None = None
    ) -> None:
        self.stats = Stats()
        self.access_sink = access_log if access_log is not None else AccessLog()
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.access_log_format = access_log_format
        # Set by start(). Sessions use it instead of asyncio.get_running_loop(), which costs a
        # getpid() system call per call on CPython 3.11 (several per connection).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._local_cache: dict[str, bool] = {}
        self.mesh = mesh
        self.routes = RouteTable.build(mesh, self._is_local)
        self.clusters: dict[ClusterKey, ClusterRuntime] = build_clusters(mesh, {}, self.stats)
        self.rng = random.Random()  # weighted splits, retry jitter, fault injection
        self._http_routers: dict[str, HttpRouter] = {}
        self._inbound_http: dict[tuple[str, int], tuple[Service, ClusterRuntime]] = {}

    def apply_mesh(self, mesh: Mesh) -> None:
        """Swap routes and clusters; endpoint state is carried over where endpoints stay."""
        old = self.clusters
        self.clusters = build_clusters(mesh, old, self.stats)
        self.routes = RouteTable.build(mesh, self._is_local)
        self.mesh = mesh
        self._http_routers = {}
        for _service, cluster in self._inbound_http.values():
            cluster.retire()
        self._inbound_http = {}
        for cluster in old.values():
            cluster.retire()
        for cluster in self.clusters.values():
            cluster.start_health_checks()

    def http_router(self, service: Service) -> HttpRouter:
        """The service's compiled HTTP routes, built on first use per mesh version."""
        router = self._http_routers.get(service.key)
        if router is None or router.service is not service:
            router = self._http_routers[service.key] = HttpRouter(service)
        return router

    def inbound_http(self, address: str, port: int) -> tuple[Service, ClusterRuntime]:
        """The workload itself as a one-endpoint service, for an inbound HTTP port: Istio's
        ``inbound|PORT||`` cluster. No retries (the caller's sidecar already retries)."""
        key = (address, port)
        known = self._inbound_http.get(key)
        if known is None:
            service = inbound_service(self.mesh.workload, address, port)
            name = f"inbound|{port}||"
            cluster = ClusterRuntime(name, service, service.ports[0], self.stats, None, self.rng)
            known = self._inbound_http[key] = (service, cluster)
        return known

    def _is_local(self, address: str) -> bool:
        cached = self._local_cache.get(address)
        if cached is None:
            cached = self._local_cache[address] = is_local_address(address)
        return cached

    async def start(self, listeners: list[ListenSpec]) -> None:
        self.loop = loop = asyncio.get_running_loop()
        for spec in listeners:
            server = await loop.create_server(
                lambda spec=spec: Downstream(self, spec), sock=spec.sock
            )
            self.servers.append(server)
        for cluster in self.clusters.values():
            cluster.start_health_checks()

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        for cluster in self.clusters.values():
            cluster.stop_health_checks()

    async def drain(self, timeout: float) -> int:
        """Stop accepting, let open connections finish; returns how many had to be aborted."""
        self.stop_accepting()
        for session in list(self.sessions):
            if session.http is not None:
                session.http.drain()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        remaining = list(self.sessions)
        for session in remaining:
            for half in (session.downstream, session.upstream):
                if half is not None and not half.lost:
                    half.transport.abort()
        return len(remaining)

    def refresh_gauges(self) -> None:
        for cluster in self.clusters.values():
            cluster.publish_gauges(self.stats)

    def report(self) -> WorkerReport:
        self.refresh_gauges()
        return WorkerReport(
            self.stats.snapshot(),
            [row for cluster in self.clusters.values() for row in cluster.rows()],
            len(self.sessions),
        )

    def access_log(self, session: Session) -> None:
        if self.access_log_format == "off":
            return
        duration_ms = int((time.time() - session.started) * 1000)
        upstream = session.upstream_address
        start_time = _log_time(int(session.started))
        peer, destination = session.peer, session.destination
        downstream_remote = host_port(peer)
        original = host_port(destination)
        upstream_host = host_port(upstream)
        flags = ",".join(session.flags) or "-"
        sent = session.upstream.received if session.upstream else 0
        if self.access_log_format == "json":
            entry = {
                "start_time": start_time,
                "direction": session.listener.direction,
                "downstream_remote_address": downstream_remote,
                "original_destination": original,
                "upstream_cluster": session.cluster_name,
                "upstream_host": upstream_host,
                "response_flags": flags,
                "bytes_received": session.downstream.received,
                "bytes_sent": sent,
                "duration": duration_ms,
            }
            self.access_sink.emit(json.dumps(entry))
        else:
            self.access_sink.emit(
                f'[{start_time}] "TCP {session.listener.direction}" {flags} '
                f"{session.downstream.received} {sent} {duration_ms} "
                f'"{downstream_remote}" "{original}" {session.cluster_name} {upstream_host}'
            )

    # --- HTTP requests ----------------------------------------------------------------------

    def http_exchange_done(self, session: Session, exchange: Exchange) -> None:
        """Count and log one HTTP request (Envoy's downstream_rq_*, Istio's request metrics)."""
        stats = self.stats
        listener = listener_labels(session.listener.name)
        stats.inc("downstream_rq_total", listener)
        status = exchange.status
        if status:
            stats.inc(_STATUS_CLASS.get(status // 100, "downstream_rq_5xx"), listener)
        flags = ",".join(exchange.flags) or "-"
        service = session.service
        workload = self.mesh.workload
        metric_labels = istio_labels(
            session.listener.direction == "outbound",
            workload.name,
            workload.namespace,
            service.fqdn(self.mesh.cluster_domain),
            service.name,
            service.namespace,
            exchange.request_protocol,
            flags,
            str(status) if status else "0",
            exchange.grpc_status,
        )
        stats.inc("istio_requests_total", metric_labels)
        stats.observe(
            "istio_request_duration_milliseconds", metric_labels, exchange.duration * 1000
        )
        stats.observe("istio_request_bytes", metric_labels, exchange.request_bytes)
        stats.observe("istio_response_bytes", metric_labels, exchange.response_bytes)
        if self.access_log_format != "off":
            self._http_access_log(session, exchange, flags)

    def _http_access_log(self, session: Session, exchange: Exchange, flags: str) -> None:
        """One line per request, in Envoy's default format (or its fields as JSON). Built
        directly rather than through a dict of fields: the log was an eighth of the HTTP
        router's instructions per request."""
        request = exchange.request
        headers = request.headers
        present = dict(headers)  # most requests lack some of the logged fields: skip scans
        forwarded_for = _header_text(headers, present, b"x-forwarded-for")
        user_agent = _header_text(headers, present, b"user-agent")
        authority = _header_text(headers, present, b"host")
        started = exchange.started
        start_time = f"{_log_time(int(started))}.{int(started * 1000) % 1000:03d}Z"
        method = request.method.decode("latin-1")
        path = request.target.decode("latin-1")
        protocol = _PROTOCOL_NAMES.get(request.version, "HTTP/1.0")
        duration = int(exchange.duration * 1000)
        request_id = _text(exchange.request_id)
        upstream_host = host_port(exchange.upstream_host)
        downstream_remote = host_port(session.peer)
        cluster = exchange.cluster.name if exchange.cluster is not None else "-"
        route = exchange.route.name if exchange.route is not None else "-"
        if self.access_log_format == "json":
            fields = {
                "start_time": start_time,
                "method": method,
                "path": path,
                "protocol": protocol,
                "response_code": exchange.status,
                "response_flags": flags,
                "bytes_received": exchange.request_bytes,
                "bytes_sent": exchange.response_bytes,
                "duration": duration,
                "upstream_service_time": None,
                "x_forwarded_for": forwarded_for,
                "user_agent": user_agent,
                "request_id": request_id,
                "authority": authority,
                "upstream_host": upstream_host,
                "upstream_cluster": cluster,
                "downstream_remote_address": downstream_remote,
                "route_name": route,
                "retries": exchange.retries,
            }
            self.access_sink.emit(json.dumps(fields))
            return
        self.access_sink.emit(
            f'[{start_time}] "{method} {path} {protocol}" {exchange.status} {flags} '
            f"{exchange.request_bytes} {exchange.response_bytes} {duration} - "
            f'"{forwarded_for}" "{user_agent}" "{request_id}" "{authority}" "{upstream_host}" '
            f"{cluster} {downstream_remote} {route}"
        )


_PROTOCOL_NAMES = {b"1.1": "HTTP/1.1", b"2": "HTTP/2"}  # Envoy's %PROTOCOL% values

_STATUS_CLASS = {
    1: "downstream_rq_1xx",
    2: "downstream_rq_2xx",
    3: "downstream_rq_3xx",
    4: "downstream_rq_4xx",
    5: "downstream_rq_5xx",
}


# Bytes a header value may show in the log as they are: printable ASCII but the quote that
# delimits it and the backslash that escapes.
_LOG_VERBATIM = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _text(value: bytes | None) -> str:
    """A header value for the access log: "-" when absent, control bytes escaped (a log line
    must stay one line whatever the client sends)."""
    if value is None:
        return "-"
    if not value.translate(None, _LOG_VERBATIM):  # the usual case: nothing to escape
        return value.decode("ascii")
    return value.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _header_text(headers: Headers, present: dict[bytes, bytes], name: bytes) -> str:
    """``name``'s values for the log (all of them, comma-joined); ``present`` is
    ``dict(headers)``, so an absent field costs one lookup instead of a scan."""
    return _text(header_value(headers, name)) if name in present else "-"


@functools.lru_cache(maxsize=4)
def _log_time(second: int) -> str:
    """The access log's start_time; connections of the same second share one strftime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
