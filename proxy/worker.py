"""A worker: one uvloop event loop serving the outbound and inbound listeners.

It owns the data path of its connections and its Stats. The mesh it routes by is swapped
whole by ``apply_mesh`` (a reload): new connections use the new routes and clusters at once,
connections already open keep the objects they started with, so none is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from detour_common.original_dst import original_destination
from proxy.access_log import AccessLog
from proxy.admin.clusters import Row
from proxy.config.diff import replaced_services
from proxy.config.model import Mesh, Service
from proxy.downstream_limits import (
    DOWNSTREAM_CX_OVERFLOW,
    DOWNSTREAM_CX_OVERLOAD_REJECT,
    MEMORY_CHECK_INTERVAL,
    MEMORY_RELEASE_FRACTION,
    MIB,
    OVERLOAD_REJECTING,
    DownstreamLimits,
    MemoryGuard,
    descriptor_limit,
)
from proxy.inbound import (
    DOWNSTREAM_SSL_ERROR,
    DOWNSTREAM_SSL_SESSION_REUSED,
    Admitted,
    InboundAcceptor,
)
from proxy.pipeline.router import HttpRouter
from proxy.platform.heap import resident_bytes
from proxy.platform.sockets import LISTEN_BACKLOG, is_local_address
from proxy.policy.evaluate import Authorizer
from proxy.routing import SIDECAR_PORTS, RouteTable, targets_the_sidecar
from proxy.series import Stats
from proxy.session import ListenerInfo, Session
from proxy.stats import listener_labels
from proxy.telemetry import Telemetry
from proxy.tls.identity import INNER_PROTOCOL, PeerCertificate, TlsFiles, peer_certificate
from proxy.tls.watch import IdentitySource
from proxy.transport.relay import RelayHalf
from proxy.upstream.cluster import (
    ClusterKey,
    ClusterRuntime,
    build_clusters,
    cluster_keys,
    inbound_service,
)
from proxy.upstream.connector import Connector

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
    """The accepted side: on accept, recover the original destination and start a session.
    ``admitted``: what the inbound acceptor already learnt (the destination, whether mesh mTLS
    was terminated: then the transport is TLS and the client's identity is on it)."""

    __slots__ = ("_admitted", "_spec", "_worker")

    def __init__(self, worker: Worker, spec: ListenSpec, admitted: Admitted | None = None) -> None:
        super().__init__(on_lost=_unattached)
        self._worker = worker
        self._spec = spec
        self._admitted = admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        worker = self._worker
        held = len(worker.sessions)
        if held >= worker.max_connections or held >= worker.memory_guard.limit:
            # Envoy's downstream-connections limit and its memory overload action: closed at
            # once, before any work (an RST, so the client learns now and nothing lingers in
            # TIME_WAIT on our side).
            refused = (
                DOWNSTREAM_CX_OVERFLOW
                if held >= worker.max_connections
                else DOWNSTREAM_CX_OVERLOAD_REJECT
            )
            worker.stats.inc(refused, listener_labels(self._spec.info.name))
            transport.abort()
            return
        # No pause_reading() here: bytes that arrive before the upstream is connected are held
        # by RelayHalf (which pauses on the first of them). A pause inside connection_made is
        # also unreliable: CPython 3.11's own loop starts reading after it regardless.
        try:
            admitted = self._admitted
            if admitted is not None:
                destination = admitted.destination
            else:
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
            if admitted is not None and admitted.mesh_tls:
                ssl_object = transport.get_extra_info("ssl_object")
                peer = peer_certificate(ssl_object)
                if ssl_object is not None and ssl_object.session_reused:
                    if not self._resumption_allowed(peer):
                        transport.abort()
                        return
                    self._worker.stats.inc(
                        DOWNSTREAM_SSL_SESSION_REUSED, listener_labels(self._spec.info.name)
                    )
                spiffe = peer.spiffe if peer is not None else None
                session.peer_principal = spiffe.uri if spiffe is not None else None
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                session.inner_protocol = INNER_PROTOCOL.get(alpn or "", "tcp")
            self.on_lost = session.half_lost
            session.start()
        except Exception:
            # A bug here must cost this connection only: the event loop would log it and go
            # on, but leave the client connected to nobody until it gave up. In-process (one
            # worker) the same loop serves admin and readiness, so nothing may escape.
            log.exception("accepting a connection failed unexpectedly")
            transport.abort()

    def _resumption_allowed(self, peer: PeerCertificate | None) -> bool:
        """A resumed session skips verification, so the certificate it was verified with
        must still be valid (OpenSSL would resume it after it expired)."""
        if peer is not None and not peer.expired_at(datetime.now(UTC)):
            return True
        self._worker.stats.inc(DOWNSTREAM_SSL_ERROR, listener_labels(self._spec.info.name))
        log.info(
            "inbound mesh TLS session refused: resumed with a client certificate that "
            "expired at %s",
            peer.not_after if peer is not None else "?",
        )
        return False


def _unattached(half: RelayHalf, exc: Exception | None) -> None:
    """A half lost before its session existed has nothing to account for."""


class Worker:
    def __init__(
        self,
        mesh: Mesh,
        access_log_format: str = "text",
        access_log: AccessLog | None = None,
        limits: DownstreamLimits = DownstreamLimits(),  # noqa: B008  (frozen)
        workers: int = 1,
        own_ports: frozenset[int] = SIDECAR_PORTS,
    ) -> None:
        self.stats = Stats()
        self.own_ports = own_ports  # never a destination on a local address
        self.limits = limits
        self.max_connections = limits.per_worker(workers, descriptor_limit())
        self.memory_guard = MemoryGuard(limits.memory_mark(workers))
        sink = access_log if access_log is not None else AccessLog()
        self.telemetry = Telemetry(self.stats, sink, mesh, access_log_format)
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.access_log_format = access_log_format
        # Set by start(). Sessions use it instead of asyncio.get_running_loop(), which costs a
        # getpid() system call per call on CPython 3.11 (several per connection).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connector: Connector | None = None  # every upstream connection; made by start()
        self.identity: IdentitySource | None = None  # the workload certificate; by start()
        self._acceptors: list[InboundAcceptor] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._local_cache: dict[str, bool] = {}
        self.mesh = mesh
        self.routes = RouteTable.build(mesh, self._is_local, self.own_ports)
        self.authorizer = Authorizer(mesh.workload.authorization_policies)
        self.clusters: dict[ClusterKey, ClusterRuntime] = build_clusters(mesh, {}, self.stats)
        self.rng = random.Random()  # weighted splits, retry jitter, fault injection
        self._http_routers: dict[str, HttpRouter] = {}
        self._inbound_http: dict[tuple[str, int], tuple[Service, ClusterRuntime]] = {}

    def apply_mesh(self, mesh: Mesh) -> None:
        """Swap routes and clusters; endpoint state is carried over where endpoints stay, and a
        cluster whose service is the very same object is kept as it is. A mesh that only
        replaced some services (an endpoint update) touches only theirs."""
        pairs = replaced_services(self.mesh, mesh)
        if pairs is not None:
            self._replace_services(mesh, pairs)
            return
        old = self.clusters
        self.clusters = build_clusters(mesh, old, self.stats)
        self.routes = RouteTable.build(mesh, self._is_local, self.own_ports)
        self.authorizer = Authorizer(mesh.workload.authorization_policies)
        self.mesh = self.telemetry.mesh = mesh
        self._http_routers = {}
        for _service, cluster in self._inbound_http.values():
            cluster.retire()
        self._inbound_http = {}
        for key, cluster in old.items():
            if self.clusters.get(key) is not cluster:  # kept whole when its service is
                cluster.retire()
        for cluster in self.clusters.values():
            cluster.start_health_checks()

    def _replace_services(self, mesh: Mesh, pairs: tuple[tuple[Service, Service], ...]) -> None:
        """``apply_mesh`` for a mesh equal to the running one but for ``pairs`` (old, new):
        what a whole apply would give, for the cost of the services replaced."""
        old = self.clusters
        rebuilt = build_clusters(
            replace(mesh, services=tuple(after for _, after in pairs)), old, self.stats
        )
        clusters = dict(old)
        for before, _after in pairs:
            for key in cluster_keys(before):
                cluster = clusters.pop(key, None)
                if cluster is not None and rebuilt.get(key) is not cluster:
                    cluster.retire()
            self._http_routers.pop(before.key, None)
        clusters.update(rebuilt)
        self.clusters = clusters
        self.routes = self.routes.replacing(pairs)
        self.mesh = self.telemetry.mesh = mesh
        for cluster in rebuilt.values():
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

    def inbound_http_private(self, address: str, port: int) -> tuple[Service, ClusterRuntime]:
        """``inbound_http`` for one connection alone (TPROXY: its upstream connections carry
        the client's address); the caller retires the cluster when the connection ends."""
        service, _shared = self.inbound_http(address, port)
        cluster = ClusterRuntime(
            f"inbound|{port}||", service, service.ports[0], self.stats, None, self.rng
        )
        return service, cluster

    def current_authorizer(self) -> Authorizer:
        """The policies of the mesh version in force now (a reload swaps them)."""
        return self.authorizer

    def _is_local(self, address: str) -> bool:
        cached = self._local_cache.get(address)
        if cached is None:
            cached = self._local_cache[address] = is_local_address(address)
        return cached

    async def start(self, listeners: list[ListenSpec]) -> None:
        """Serve ``listeners``; the workload certificate (if configured) is loaded first:
        CertificateError (naming the file) when it is unusable."""
        self.loop = loop = asyncio.get_running_loop()
        tls = self.mesh.workload.tls
        if tls is not None:
            files = TlsFiles(Path(tls.cert_chain), Path(tls.private_key), Path(tls.root_cert))
            self.identity = IdentitySource(files, self.mesh.trust_domain, self.stats)
            self.telemetry.own_principal = self.identity.load().spiffe.uri
            self._tasks.append(loop.create_task(self.identity.watch()))
        forbidden = functools.partial(
            targets_the_sidecar, is_local=self._is_local, own_ports=self.own_ports
        )
        self.connector = Connector(loop, self.stats, self.identity, forbidden)
        for spec in listeners:
            if spec.info.direction == "inbound":
                acceptor = InboundAcceptor(
                    self, spec, self.identity, functools.partial(Downstream, self, spec)
                )
                acceptor.start(loop)
                self._acceptors.append(acceptor)
                continue
            # create_server listens on the socket again, with its own default backlog (100)
            # unless told: that would shorten the queue listening_socket gave it.
            server = await loop.create_server(
                lambda spec=spec: Downstream(self, spec), sock=spec.sock, backlog=LISTEN_BACKLOG
            )
            self.servers.append(server)
        for cluster in self.clusters.values():
            cluster.start_health_checks()
        if self.memory_guard.mark:
            self._tasks.append(loop.create_task(self._watch_memory()))

    async def _watch_memory(self) -> None:
        """Reads this worker's resident set every ``MEMORY_CHECK_INTERVAL`` for its memory
        guard, and says when the guard's limit changes."""
        guard = self.memory_guard
        self.stats.gauge_set(OVERLOAD_REJECTING, (), 0)
        while True:
            resident = resident_bytes()
            if guard.observe(resident, len(self.sessions)):
                self.stats.gauge_set(OVERLOAD_REJECTING, (), int(guard.active))
                if guard.active:
                    log.warning(
                        "memory %d MiB is at this worker's mark of %d MiB (--memory-limit-mib): "
                        "it takes no connection beyond the %d it holds until its memory is "
                        "below %d MiB",
                        resident // MIB,
                        guard.mark // MIB,
                        guard.limit,
                        guard.mark * MEMORY_RELEASE_FRACTION // MIB,
                    )
                else:
                    log.warning(
                        "memory %d MiB is back below this worker's mark: no limit from memory",
                        resident // MIB,
                    )
            await asyncio.sleep(MEMORY_CHECK_INTERVAL)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        for acceptor in self._acceptors:
            acceptor.close()
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
