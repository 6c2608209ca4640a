"""One intercepted connection, from accept to the access-log line.

The listener hands over the accepted downstream half (paused); the session decides the route,
connects upstream (with timeout, circuit breaker, outlier reporting and a retry on another
endpoint), links the two halves into a relay, and accounts for the connection when both halves
are gone: stats, Istio TCP metrics, access log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from detour_common.conventions import TPROXY_MARK
from proxy.config.model import Service, ServicePort
from proxy.filters.http_proxy import HttpConnectionManager
from proxy.filters.sniff import DEFAULT_DETECT_TIMEOUT, DEFAULT_SKIP_PORTS, detect
from proxy.platform.sockets import transparent_socket
from proxy.platform.transport import reset
from proxy.routing import Passthrough, Refuse, ToCluster
from proxy.stats import cluster_labels, istio_labels, listener_labels
from proxy.transport.relay import RelayHalf, link
from proxy.upstream.cluster import ClusterRuntime

if TYPE_CHECKING:  # imported at run time only by an HTTP/2 connection (proxy/http2)
    from proxy.http2.server import Http2ConnectionManager

log = logging.getLogger("detour.proxy")

PASSTHROUGH_CONNECT_TIMEOUT = 10.0  # Envoy's default for its PassthroughCluster
# A declared HTTP port's client speaks first: wait longer for its first bytes than a sniffer of
# undeclared ports may (they only choose between HTTP/1.1 and HTTP/2), but not forever.
DECLARED_HTTP_DETECT_TIMEOUT = 5.0
_DECLARED_HTTP = ("http", "http2", "grpc")


@dataclass(frozen=True)
class ListenerInfo:
    """What a session needs to know about the listener that accepted it."""

    name: str  # "virtualOutbound" / "virtualInbound", Istio's listener names
    direction: str  # "outbound" | "inbound": Istio's reporter is source / destination
    source_address: str | None = None  # bind upstream connections here (127.0.0.6 inbound)
    # TPROXY inbound: connect to the app from the client's own address (IP_TRANSPARENT +
    # SO_MARK 1337, so init's rules route the app's replies back to us), as Istio does.
    preserve_source: bool = False
    idle_timeout: float = 3600.0


class Session:
    """Lifecycle and accounting of one relayed connection."""

    def __init__(
        self,
        worker,
        listener: ListenerInfo,
        downstream: RelayHalf,
        destination: tuple[str, int] | None,
        peer: tuple[str, int],
    ) -> None:
        self.worker = worker
        self.listener = listener
        self.downstream = downstream
        self.destination = destination
        self.peer = peer
        self.upstream: RelayHalf | None = None
        self.started = time.time()
        self.flags: list[str] = []
        self.cluster = None
        self.host = None
        self.upstream_address: tuple[str, int] | None = None
        self.service = None
        self.task: asyncio.Task | None = None
        self.cluster_name = "unknown"
        self._open_halves = 1
        self._holds_breaker = False
        self._finished = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_ticks = 0
        self._seen = -1
        self._dial_expired = False
        # set when the connection speaks HTTP (HTTP/1.1 or HTTP/2)
        self.http: HttpConnectionManager | Http2ConnectionManager | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.worker.sessions.add(self)
        self.worker.stats.inc("downstream_cx_total", listener_labels(self.listener.name))
        self.worker.stats.gauge_add("downstream_cx_active", listener_labels(self.listener.name), 1)
        self.task = self.worker.loop.create_task(self._connect())

    def half_lost(self, half: RelayHalf, exc: Exception | None) -> None:
        if exc is not None:
            if half is self.downstream:
                self.flags.append("DC")  # downstream connection terminated (reset)
            elif half is self.upstream:
                self.flags.append("UC")  # upstream connection terminated (reset)
        self._open_halves -= 1
        if half is self.downstream and self.task is not None and not self.task.done():
            self.task.cancel()
            return  # _connect's cancellation path finishes the session
        if self._open_halves <= 0:
            self._finish()

    async def _connect(self) -> None:
        routes = self.worker.routes
        try:
            if self.listener.direction == "inbound":
                decision = routes.decide_inbound(self.destination)
            else:
                decision = routes.decide(self.destination)
            if isinstance(decision, Refuse):
                self._refuse(decision.flag)
                return
            if isinstance(decision, Passthrough):
                if await self._inbound_speaks_http(decision):
                    service, cluster = self.worker.inbound_http(decision.address, decision.port)
                    await self._serve_http(service, service.ports[0], cluster)
                    return
                connected = await self._connect_passthrough(decision)
            elif http := await self._speaks_http(decision.port.protocol, decision.port.port):
                await self._serve_http(decision.service, decision.port, protocol=http)
                return
            else:
                connected = await self._connect_cluster(decision)
        except asyncio.CancelledError:
            connected = False
        except Exception:  # a bug must cost one connection, never a stuck or leaked one
            log.exception("connection from %s failed unexpectedly", self.peer)
            self.flags.append("UF")
            connected = False
        if not connected:
            self._close_downstream()
            if self._open_halves <= 0 or self.downstream.lost:
                self._finish()
            return
        link(self.downstream, self.upstream)
        self._arm_idle_timer()

    # --- HTTP ---------------------------------------------------------------------------

    async def _inbound_speaks_http(self, decision: Passthrough) -> bool:
        """Inbound ports the workload declares ``http`` (or ``auto``) get the HTTP router, for
        destination-side request metrics. Not under TPROXY: its upstream connections carry the
        client's own address, so they could not be pooled across clients."""
        if self.listener.direction != "inbound" or self.listener.preserve_source:
            return False
        protocol = self.worker.mesh.workload.inbound_protocol(decision.port)
        # HTTP/2 towards the app is relayed as TCP (the inbound router is HTTP/1.1 only).
        return await self._speaks_http(protocol, decision.port) == "http1"

    async def _speaks_http(self, protocol: str, port: int) -> str | None:
        """ "http1", "http2" or None (TCP), from the port's declared protocol and the first
        bytes. A port declared ``http``, ``http2`` or ``grpc`` is HTTP: the client speaks first
        and its HTTP/2 preface (prior knowledge) makes the connection HTTP/2, anything else
        HTTP/1.1 (Envoy's downstream codec "AUTO", as Istio configures it), but a TLS hello is
        relayed as TCP. An ``auto`` port is sniffed: HTTP/1.x or HTTP/2 go to the router,
        anything else, or a client silent for the detection timeout (a server-first
        protocol), is TCP. Well-known server-first ports are never sniffed."""
        if protocol in _DECLARED_HTTP:
            detected = await self._sniff(DECLARED_HTTP_DETECT_TIMEOUT)
            if detected == "tls":
                return None
            return "http2" if detected == "http2" else "http1"
        if protocol != "auto" or port in DEFAULT_SKIP_PORTS:
            return None
        detected = await self._sniff(DEFAULT_DETECT_TIMEOUT)
        return detected if detected in ("http1", "http2") else None

    async def _sniff(self, timeout: float) -> str | None:
        """What the client's first bytes are (sniff.py's names), or None when it sent none
        before ``timeout`` (or closed)."""
        downstream = self.downstream
        loop = self.worker.loop
        deadline = loop.time() + timeout
        while True:
            detected = detect(b"".join(downstream.early))
            if detected is not None:
                return detected.protocol
            remaining = deadline - loop.time()
            if downstream.eof or downstream.lost or remaining <= 0:
                return None
            arrived = loop.create_future()
            downstream.on_early = functools.partial(_wake, arrived)
            downstream.transport.resume_reading()
            try:
                async with asyncio.timeout(remaining):
                    await arrived
            except TimeoutError:
                return None
            finally:
                downstream.on_early = None

    async def _serve_http(
        self,
        service: Service,
        port: ServicePort,
        cluster: ClusterRuntime | None = None,
        protocol: str = "http1",
    ) -> None:
        """Hand the downstream transport to the HTTP connection manager until it is done;
        ``cluster`` is the one upstream of an inbound port (else routes pick clusters)."""
        downstream, worker = self.downstream, self.worker
        self.service, self.cluster_name = service, "-"
        if protocol == "http2":
            await self._serve_http2(service, port)
            return
        channel = HttpConnectionManager.channel(worker.loop)
        manager = HttpConnectionManager(
            self, service, port, worker.http_router(service), channel, worker.rng, cluster
        )
        self.http = manager
        transport = downstream.transport
        early = b"".join(downstream.early)
        downstream.early.clear()
        transport.set_protocol(channel)
        channel.connection_made(transport)
        channel.feed(early, downstream.eof)
        if not downstream.eof:
            transport.resume_reading()
        self._arm_idle_timer()
        try:
            await manager.run()
        finally:
            manager.abort_upstream()
            channel.close()
            self._open_halves = 0
            self._finish()

    async def _serve_http2(self, service: Service, port: ServicePort) -> None:
        """The same for an HTTP/2 connection: its manager is the transport's protocol."""
        from proxy.http2.server import make_manager  # loads h2 on first use (proxy/http2)

        downstream = self.downstream
        early = b"".join(downstream.early)
        downstream.early.clear()
        manager = make_manager(self, service, port, downstream.transport, early, downstream.eof)
        self.http = manager
        if not downstream.eof:
            downstream.transport.resume_reading()
        self._arm_idle_timer()
        try:
            await manager.run()
        finally:
            manager.abort()
            self._open_halves = 0
            self._finish()

    def _refuse(self, flag: str) -> None:
        self.flags.append(flag)
        self.worker.stats.inc("downstream_cx_refused", listener_labels(self.listener.name))
        self._close_downstream()
        self._finish()

    def _close_downstream(self) -> None:
        if not self.downstream.lost:
            reset(self.downstream.transport)

    # --- upstream connect ---------------------------------------------------------------

    async def _open(self, address: str, port: int, timeout: float) -> str | None:
        """Connect the upstream half; returns None on success, else a response flag."""
        half = RelayHalf(self.half_lost)
        half.peer = self.downstream  # upstream bytes may arrive before link() runs
        # A timer that cancels this task, rather than asyncio.wait_for (one more task per
        # connection) or asyncio.timeout (two get_running_loop() calls, each a getpid()).
        self._dial_expired = False
        timer = self.worker.loop.call_later(timeout, self._expire_dial)
        try:
            await self._dial(half, address, port)
        except asyncio.CancelledError:
            # As asyncio.timeout decides: ours only if nobody else asked to cancel the task
            # (half_lost does when the downstream goes away).
            if half.transport is not None:  # connected just as the timer fired: do not leak it
                half.on_lost = _ignore_lost
                half.transport.abort()
            if self._dial_expired and self.task.uncancel() == 0:
                return "UT"
            raise
        except OSError:
            return "UF"
        finally:
            timer.cancel()
        self.upstream = half
        self.upstream_address = (address, port)
        self._open_halves += 1
        return None

    def _expire_dial(self) -> None:
        self._dial_expired = True
        self.task.cancel()

    async def _dial(self, half: RelayHalf, address: str, port: int) -> None:
        loop = self.worker.loop
        if self.listener.preserve_source:
            sock = transparent_socket(self.peer[0], TPROXY_MARK)
            try:
                await loop.sock_connect(sock, (address, port))
                await loop.create_connection(lambda: half, sock=sock)
            except BaseException:
                sock.close()
                raise
            return
        source = self.listener.source_address
        await loop.create_connection(
            lambda: half, address, port, local_addr=(source, 0) if source else None
        )

    async def _connect_passthrough(self, decision: Passthrough) -> bool:
        cluster = (
            "InboundPassthroughCluster"
            if self.listener.direction == "inbound"
            else "PassthroughCluster"
        )
        self.cluster_name = cluster
        flag = await self._open(decision.address, decision.port, PASSTHROUGH_CONNECT_TIMEOUT)
        return self._account_connect(cluster, flag)

    async def _connect_cluster(self, decision: ToCluster) -> bool:
        cluster = self.worker.clusters[(decision.service.key, decision.port.port, "")]
        self.cluster, self.service = cluster, decision.service
        policy = decision.service.policy
        if not cluster.breaker.try_open_connection():
            self.flags.append("UO")
            self.worker.stats.inc("upstream_cx_overflow", cluster_labels(cluster.name))
            return False
        self._holds_breaker = True
        hash_key = self.peer[0].encode()
        tried: set = set()
        for _attempt in range(policy.connect_attempts):
            host = cluster.pick(hash_key, avoid=tried)
            if host is None:
                self.flags.append("UH")
                self.worker.stats.inc("upstream_cx_none_healthy", cluster_labels(cluster.name))
                return False
            tried.add(host)
            if not cluster.breaker.try_start_pending():
                self.flags.append("UO")
                self.worker.stats.inc("upstream_cx_overflow", cluster_labels(cluster.name))
                return False
            host.active_requests += 1
            try:
                flag = await self._open(host.address, host.port, policy.connect_timeout)
            finally:
                cluster.breaker.pending_done()
            cluster.report_connect(host, flag is None)
            if self._account_connect(cluster.name, flag):
                self.host = host
                return True
            host.active_requests -= 1
        self.worker.stats.inc("upstream_cx_connect_attempts_exceeded", cluster_labels(cluster.name))
        return False

    def _account_connect(self, cluster_name: str, flag: str | None) -> bool:
        stats = self.worker.stats
        self.cluster_name = cluster_name
        if flag is None:
            stats.inc("upstream_cx_total", cluster_labels(cluster_name))
            stats.gauge_add("upstream_cx_active", cluster_labels(cluster_name), 1)
            return True
        stats.inc("upstream_cx_connect_fail", cluster_labels(cluster_name))
        if flag == "UT":
            stats.inc("upstream_cx_connect_timeout", cluster_labels(cluster_name))
        if flag not in self.flags:
            self.flags.append(flag)
        return False

    # --- idle timeout -------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        timeout = self.listener.idle_timeout
        if self.service is not None:
            timeout = self.service.policy.idle_timeout
        self._idle_handle = self.worker.loop.call_later(timeout / 2, self._check_idle, timeout / 2)

    def _check_idle(self, period: float) -> None:
        # Progress is measured by byte counts, so the hot path never touches a timer.
        if self.http is not None:
            progress = self.http.progress()
        else:
            progress = self.downstream.received + (self.upstream.received if self.upstream else 0)
        if progress == self._seen:
            self._idle_ticks += 1
            if self._idle_ticks >= 2:  # no byte for a whole idle_timeout
                self.flags.append("IT")  # Envoy's stream idle timeout flag
                self.worker.stats.inc(
                    "downstream_cx_idle_timeout", listener_labels(self.listener.name)
                )
                if self.http is not None:
                    self.http.abort()
                for half in (self.downstream, self.upstream):
                    if half is not None and not half.lost:
                        half.transport.abort()
                return
        else:
            self._idle_ticks = 0
        self._seen = progress
        self._idle_handle = self.worker.loop.call_later(period, self._check_idle, period)

    # --- accounting -------------------------------------------------------------------

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        worker, stats = self.worker, self.worker.stats
        worker.sessions.discard(self)
        stats.gauge_add("downstream_cx_active", listener_labels(self.listener.name), -1)
        if self.upstream is not None:
            stats.gauge_add("upstream_cx_active", cluster_labels(self.cluster_name), -1)
        if self.host is not None:
            self.host.active_requests -= 1
        if self._holds_breaker:
            self.cluster.breaker.connection_closed()
        if self.http is not None:
            return  # HTTP connections are accounted per request (Worker.http_exchange_done)
        if self.upstream is not None:
            self._istio_tcp_metrics()
        worker.access_log(self)

    def _istio_tcp_metrics(self) -> None:
        workload = self.worker.mesh.workload
        if self.service is not None:
            service_name, service_ns = self.service.name, self.service.namespace
            service = self.service.fqdn(self.worker.mesh.cluster_domain)
        else:
            service_name, service_ns = self.cluster_name, "unknown"
            service = (
                f"{self.destination[0]}:{self.destination[1]}" if self.destination else "unknown"
            )
        metric_labels = istio_labels(
            self.listener.direction == "outbound",
            workload.name,
            workload.namespace,
            service,
            service_name,
            service_ns,
            "tcp",
            ",".join(self.flags) or "-",
        )
        stats = self.worker.stats
        stats.inc("istio_tcp_connections_opened_total", metric_labels)
        stats.inc("istio_tcp_connections_closed_total", metric_labels)
        stats.inc("istio_tcp_received_bytes_total", metric_labels, self.downstream.received)
        stats.inc("istio_tcp_sent_bytes_total", metric_labels, self.upstream.received)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _ignore_lost(half: RelayHalf, exc: Exception | None) -> None:
    """For an upstream half dropped before it was counted as part of the session."""
