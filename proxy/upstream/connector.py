"""Every upstream connection of a worker is made here: the L4 relay's, HTTP/1.1's and HTTP/2's.

What a connection to an upstream needs is the same whatever will be spoken on it, so it lives
once: where it comes from (``Source``: no binding outbound, 127.0.0.6 / ::6 inbound, the
client's own address with IP_TRANSPARENT and the TPROXY mark under TPROXY inbound), the
connect timeout, the accounting (``upstream_cx_total``, ``upstream_cx_connect_fail``,
``upstream_cx_connect_timeout``, the outlier detector's view of the host) and the pools that
keep HTTP connections for the next request, and mesh mTLS: a connection to a meshed endpoint
(one with a service account) is TLS 1.3 with the workload's certificate, its ALPN saying what
rides inside, and is kept only if the peer proves to be the service account the endpoint
runs as (its SPIFFE ID; OpenSSL has already checked its chain to the mesh root). The verified
principal is left on the protocol (``peer_principal``) for the metrics. A peer verified once
is reached next time by resuming its TLS session (``proxy.tls.resumption``).

The connect timeout is a timer that cancels the connecting task, not ``asyncio.timeout`` or
``wait_for``: those cost a task or two ``get_running_loop()`` calls (each a ``getpid()`` on
CPython 3.11) per connection, and new connections per second is a benchmark row. Whoever else
cancels the task (a client that left, an outer deadline) is told apart as ``asyncio.timeout``
does it, by ``Task.uncancel``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from proxy.http.channel import HttpChannel
from proxy.http.codec import Connection
from proxy.platform.sockets import transparent_socket
from proxy.series import Stats
from proxy.stats import Counter, cluster_labels
from proxy.tls.identity import peer_certificate
from proxy.tls.resumption import MeshClientContext
from proxy.upstream.cluster import ClusterRuntime
from proxy.upstream.hosts import Host

if TYPE_CHECKING:  # h2 loads with the first HTTP/2 upstream, not with the sidecar
    from proxy.http2.client import Http2Upstream
    from proxy.tls.watch import IdentitySource

log = logging.getLogger("detour.proxy")

UPSTREAM_CX_TOTAL = Counter("upstream_cx_total", "Upstream connections established")
UPSTREAM_CX_SIDECAR_REFUSED = Counter(
    "upstream_cx_sidecar_refused", "Connects refused: the endpoint is one of the sidecar's ports"
)
UPSTREAM_CX_CONNECT_FAIL = Counter(
    "upstream_cx_connect_fail", "Upstream connect attempts that failed"
)
UPSTREAM_CX_CONNECT_TIMEOUT = Counter(
    "upstream_cx_connect_timeout", "Upstream connect attempts that timed out"
)
UPSTREAM_CX_HTTP1_TOTAL = Counter(
    "upstream_cx_http1_total", "HTTP/1.1 upstream connections established"
)
UPSTREAM_CX_HTTP2_TOTAL = Counter(
    "upstream_cx_http2_total", "HTTP/2 upstream connections established"
)
SSL_HANDSHAKE = Counter("ssl_handshake", "Mesh mTLS connections made to upstreams")
SSL_CONNECTION_ERROR = Counter(
    "ssl_connection_error", "Mesh mTLS handshakes to upstreams that failed"
)
SSL_FAIL_VERIFY_SAN = Counter(
    "ssl_fail_verify_san", "Upstream peers that were not the identity their endpoint runs as"
)
SSL_SESSION_REUSED = Counter(
    "ssl_session_reused", "Mesh mTLS connections to upstreams that resumed a TLS session"
)
UPSTREAM_CX_POOL_REUSE = Counter(
    "upstream_cx_pool_reuse", "Requests sent on a pooled upstream connection instead of a new one"
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where upstream connections of a listener's connections come from."""

    address: str | None = None  # bind here (inbound: 127.0.0.6 / ::6); None: the kernel picks
    # TPROXY inbound: ``address`` is the client's own, bound with IP_TRANSPARENT, and the
    # socket carries ``mark`` so init's policy routing sends the app's replies back to us.
    transparent: bool = False
    mark: int = 0


ANY_SOURCE = Source()


class ConnectFailed(Exception):
    """The upstream could not be reached: refused, unreachable, or not within the timeout."""

    def __init__(self, timed_out: bool, reason: str = "") -> None:
        super().__init__(reason or ("connect timeout" if timed_out else "connect failed"))
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class MeshTls:
    """Originate mesh mTLS: the client context (its ALPN names the inner protocol) and the
    SPIFFE ID the peer must prove."""

    context: ssl.SSLContext
    expected: str


class Connector:
    """One worker's upstream connections (see the module docstring). ``identity`` is the
    workload's (None: no certificate, so meshed endpoints cannot be reached)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: Stats,
        identity: IdentitySource | None = None,
        forbidden: Callable[[str, int], bool] | None = None,
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.identity = identity
        # Addresses never dialled whatever a config says: the sidecar's own listeners. A mesh
        # endpoint (from a file or a control plane) naming 127.0.0.1:15000 would otherwise
        # hand the admin port, and its POST endpoints, to any app that calls the service.
        self._forbidden = forbidden
        self._said_no_identity = False

    def mesh_tls(self, cluster: ClusterRuntime, host: Host, inner: str) -> MeshTls | None:
        """How to reach ``host``: mesh mTLS carrying ``inner`` ("http/1.1", "h2", "tcp") when
        it is meshed, else None (plaintext). ConnectFailed when it is meshed and this
        workload has no identity to present."""
        account = host.endpoint.service_account
        if account is None:
            return None
        source = self.identity
        identity = source.current if source is not None else None
        if identity is None or source is None:
            if not self._said_no_identity:
                self._said_no_identity = True
                log.error(
                    "%s is meshed (service account %s) but this workload has no certificate "
                    "(workload.tls): its connections fail",
                    host.key,
                    account,
                )
            self._failed(cluster.name, cluster, host, timed_out=False)
            raise ConnectFailed(timed_out=False, reason="no workload certificate")
        expected = f"spiffe://{source.trust_domain}/ns/{cluster.service.namespace}/sa/{account}"
        return MeshTls(identity.clients[inner], expected)

    async def connect(
        self,
        protocol: asyncio.Protocol,
        address: str,
        port: int,
        *,
        timeout: float,
        source: Source,
        cluster_name: str,
        cluster: ClusterRuntime | None = None,
        host: Host | None = None,
        tls: MeshTls | None = None,
        final: bool = True,
    ) -> None:
        """Connect ``protocol`` to ``address:port`` within ``timeout`` (mesh mTLS when
        ``tls``, the handshake within the same timeout), counted under ``cluster_name`` (and
        reported to ``cluster``'s outlier detector for ``host``; ``final``: the connection is
        the exchange, as for TCP, so its success clears the host's error runs). Raises
        ConnectFailed; a connection made just as the timer fired is aborted."""
        forbidden = self._forbidden
        if forbidden is not None and forbidden(address, port):
            self.stats.inc(UPSTREAM_CX_SIDECAR_REFUSED, cluster_labels(cluster_name))
            log.warning(
                "cluster %s: endpoint %s:%d is the sidecar itself; not connecting",
                cluster_name,
                address,
                port,
            )
            self._failed(cluster_name, cluster, host, timed_out=False)
            raise ConnectFailed(timed_out=False, reason="the sidecar's own port")
        loop = self.loop
        task = asyncio.current_task(loop)
        assert task is not None, "connect() runs in a task"
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_later(timeout, expire)
        try:
            await self._dial(protocol, address, port, source, tls)
        except asyncio.CancelledError:
            # Connected as the timer fired (the task resumes with the cancellation anyway):
            # nobody will use this connection.
            # Every protocol of ours keeps its transport as ``.transport``.
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
            if expired and task.uncancel() == 0:
                self._failed(cluster_name, cluster, host, timed_out=True)
                raise ConnectFailed(timed_out=True) from None
            raise
        except OSError as err:  # ssl.SSLError too: a handshake the peer or we refused
            if isinstance(err, ssl.SSLError):
                self.stats.inc(SSL_CONNECTION_ERROR, cluster_labels(cluster_name))
            self._failed(cluster_name, cluster, host, timed_out=False)
            raise ConnectFailed(timed_out=False) from None
        finally:
            timer.cancel()
        if tls is not None:
            self._check_peer(protocol, address, tls, cluster_name, cluster, host)
        if cluster is not None and host is not None:
            cluster.report_connect(host, True, final)
        self.stats.inc(UPSTREAM_CX_TOTAL, cluster_labels(cluster_name))

    def _check_peer(
        self,
        protocol: asyncio.Protocol,
        address: str,
        tls: MeshTls,
        cluster_name: str,
        cluster: ClusterRuntime | None,
        host: Host | None,
    ) -> None:
        """The peer chained to the mesh root (OpenSSL checked); is it who the endpoint runs
        as? Envoy's ``ssl.fail_verify_san`` when not: the connection is dropped. A resumed
        session was verified when it was made; its certificate must still be valid (the
        session cache does not offer one past it: this is the clock's second opinion)."""
        transport = getattr(protocol, "transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peer = peer_certificate(ssl_object)
        labels = cluster_labels(cluster_name)
        sessions = tls.context.sessions if isinstance(tls.context, MeshClientContext) else None
        reused = ssl_object is not None and ssl_object.session_reused
        if peer is not None and peer.spiffe is not None and peer.spiffe.uri == tls.expected:
            if not (reused and peer.expired_at(datetime.now(UTC))):
                protocol.peer_principal = peer.spiffe.uri  # type: ignore[attr-defined]
                self.stats.inc(SSL_HANDSHAKE, labels)
                if reused:
                    self.stats.inc(SSL_SESSION_REUSED, labels)
                if sessions is not None:
                    sessions.verified(address, peer.not_after.timestamp())
                return
            failure, reason = SSL_CONNECTION_ERROR, "resumed a session of an expired certificate"
        else:
            failure = SSL_FAIL_VERIFY_SAN
            reason = f"peer is {peer.spiffe if peer else None}, not {tls.expected}"
        if sessions is not None:
            sessions.forget(address)
        if transport is not None:
            transport.abort()
        self.stats.inc(failure, labels)
        self._failed(cluster_name, cluster, host, timed_out=False)
        raise ConnectFailed(timed_out=False, reason=reason)

    async def _dial(
        self,
        protocol: asyncio.Protocol,
        address: str,
        port: int,
        source: Source,
        tls: MeshTls | None,
    ) -> None:
        loop = self.loop
        context = tls.context if tls is not None else None
        name = address if tls is not None else None  # no SNI check: the peer is its SPIFFE ID
        if source.transparent:
            sock = transparent_socket(source.address or "", source.mark)
            try:
                await loop.sock_connect(sock, (address, port))
                await loop.create_connection(
                    lambda: protocol, sock=sock, ssl=context, server_hostname=name
                )
            except BaseException:
                sock.close()
                raise
            return
        local = (source.address, 0) if source.address else None
        await loop.create_connection(
            lambda: protocol, address, port, local_addr=local, ssl=context, server_hostname=name
        )

    def _failed(
        self, cluster_name: str, cluster: ClusterRuntime | None, host: Host | None, timed_out: bool
    ) -> None:
        if cluster is not None and host is not None:
            cluster.report_connect(host, False)
        name = cluster_labels(cluster_name)
        self.stats.inc(UPSTREAM_CX_CONNECT_FAIL, name)
        if timed_out:
            self.stats.inc(UPSTREAM_CX_CONNECT_TIMEOUT, name)

    # --- HTTP: pooled connections -----------------------------------------------------------

    def pooled_http1(self, cluster: ClusterRuntime, host: Host) -> HttpChannel | None:
        """An idle keep-alive connection to ``host`` from the cluster's pool, if there is one
        (no coroutine: a pooled connection is most requests' case)."""
        channel = cluster.http_pool(self.loop).take(host)
        if channel is not None:
            self.stats.inc(UPSTREAM_CX_POOL_REUSE, cluster_labels(cluster.name))
        return channel

    async def new_http1(self, cluster: ClusterRuntime, host: Host, source: Source) -> HttpChannel:
        """A new HTTP/1.1 connection to ``host`` (it joins the pool when given back)."""
        channel = HttpChannel(Connection("client"), self.loop)
        await self._connect_host(
            channel, cluster, host, source, UPSTREAM_CX_HTTP1_TOTAL, "http/1.1"
        )
        return channel

    async def http2(self, cluster: ClusterRuntime, host: Host, source: Source) -> Http2Upstream:
        """The host's multiplexed HTTP/2 connection with room for a stream (requests that find
        none while one is being made wait for it), else a new one. ConnectFailed for every
        waiter when the connect fails."""
        from proxy.http2.client import Http2Upstream  # loads h2 on first use (proxy/http2)

        async def new_connection() -> Http2Upstream:
            upstream = Http2Upstream(self.loop)
            await self._connect_host(upstream, cluster, host, source, UPSTREAM_CX_HTTP2_TOTAL, "h2")
            return upstream

        upstream, _new = await cluster.http2_pool(self.loop).connection(host, new_connection)
        return upstream

    async def _connect_host(
        self,
        protocol: asyncio.Protocol,
        cluster: ClusterRuntime,
        host: Host,
        source: Source,
        codec_counter: Counter,
        inner: str,
    ) -> None:
        """A cluster host's connection, within the cluster's connect timeout (mesh mTLS
        carrying ``inner`` when the host is meshed)."""
        await self.connect(
            protocol,
            host.address,
            host.port,
            timeout=cluster.service.policy.connect_timeout,
            source=source,
            cluster_name=cluster.name,
            cluster=cluster,
            host=host,
            tls=self.mesh_tls(cluster, host, inner),
            final=False,  # HTTP: the responses tell the outlier detector how the host does
        )
        self.stats.inc(codec_counter, cluster_labels(cluster.name))
