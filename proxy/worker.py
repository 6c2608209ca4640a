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
import socket
import time
from dataclasses import dataclass

from proxy.config.model import Mesh
from proxy.filters.tcp_proxy import RelayHalf
from proxy.platform.original_dst import original_destination
from proxy.platform.sockets import is_local_address
from proxy.routing import RouteTable
from proxy.session import ListenerInfo, Session
from proxy.stats import Stats
from proxy.upstream.cluster import ClusterKey, ClusterRuntime, build_clusters

access = logging.getLogger("detour.access")
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
        sock = transport.get_extra_info("socket")
        destination = original_destination(sock)
        if self._spec.transparent and (destination is None or destination == sock.getsockname()):
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


def host_port(address: tuple[str, int] | None) -> str:
    """``1.2.3.4:80`` / ``[fd00::1]:80`` / ``-``, as Envoy's access log writes addresses."""
    if address is None:
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unattached(half: RelayHalf, exc: Exception | None) -> None:
    """A half lost before its session existed has nothing to account for."""


class Worker:
    def __init__(self, mesh: Mesh, access_log_format: str = "text") -> None:
        self.stats = Stats()
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

    def apply_mesh(self, mesh: Mesh) -> None:
        """Swap routes and clusters; endpoint state is carried over where endpoints stay."""
        old = self.clusters
        self.clusters = build_clusters(mesh, old, self.stats)
        self.routes = RouteTable.build(mesh, self._is_local)
        self.mesh = mesh
        for cluster in old.values():
            cluster.stop_health_checks()
        for cluster in self.clusters.values():
            cluster.start_health_checks()

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
            _emit_access(json.dumps(entry))
        else:
            _emit_access(
                f'[{start_time}] "TCP {session.listener.direction}" {flags} '
                f"{session.downstream.received} {sent} {duration_ms} "
                f'"{downstream_remote}" "{original}" {session.cluster_name} {upstream_host}'
            )


@functools.lru_cache(maxsize=4)
def _log_time(second: int) -> str:
    """The access log's start_time; connections of the same second share one strftime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _emit_access(line: str) -> None:
    """``access.info(line)`` without the caller lookup (``findCaller`` walks the stack on every
    record): neither log format prints the source location, and this runs per connection."""
    if access.isEnabledFor(logging.INFO):
        record = access.makeRecord(access.name, logging.INFO, "(unknown file)", 0, line, (), None)
        access.handle(record)
