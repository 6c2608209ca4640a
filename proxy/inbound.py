"""The inbound listener's accept path: a connection's first bytes are looked at before anything
reads them (``MSG_PEEK``), so mesh mTLS can be terminated with those very bytes, and the
workload's PeerAuthentication decides what may come in.

* A TLS ClientHello whose ALPN carries a mesh token (``istio-http/1.1``, ``istio-h2``,
  ``istio``: what a sidecar originates) is terminated with the workload's certificate; the
  client must present one chaining to the mesh root (OpenSSL checks it), and its SPIFFE ID is
  the connection's peer principal.
* Anything else (plaintext, or TLS the app terminates itself) is accepted as it is in
  PERMISSIVE mode and refused (closed and counted) in STRICT mode. DISABLE never terminates.
* Without a workload certificate there is no mesh TLS to terminate: connections are taken as
  they come, without looking (STRICT then refuses them all).

Peeking waits for the client's first bytes at most ``DETECT_TIMEOUT`` (Istio's protocol
detection timeout too): a client that speaks second is plaintext after that, and the
well-known server-first ports are never waited for. Accepting here, rather than in the event
loop's server, is what makes looking without reading possible; it costs one task per inbound
connection, which only inbound connections pay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from detour_common.original_dst import original_destination
from proxy.filters.sniff import DEFAULT_SKIP_PORTS, MAX_CLIENT_HELLO_BYTES, Detected, detect
from proxy.platform.transport import LINGER_RESET
from proxy.stats import Counter, listener_labels
from proxy.tls.identity import INNER_PROTOCOL

if TYPE_CHECKING:
    from proxy.tls.watch import IdentitySource
    from proxy.worker import ListenSpec, Worker

log = logging.getLogger("detour.proxy")

DETECT_TIMEOUT = 0.1
HANDSHAKE_TIMEOUT = 10.0  # Envoy's transport_socket_connect_timeout is 15 s; we are stricter
PEEK_RETRY = 0.005  # a ClientHello split over segments: look again this much later

DOWNSTREAM_CX_MTLS_REQUIRED = Counter(
    "downstream_cx_mtls_required", "Inbound connections refused: STRICT mTLS, not mesh TLS"
)
DOWNSTREAM_SSL_HANDSHAKE = Counter(
    "downstream_ssl_handshake", "Inbound mesh mTLS connections terminated"
)
DOWNSTREAM_SSL_ERROR = Counter(
    "downstream_ssl_connection_error",
    "Inbound mesh TLS handshakes that failed (no client certificate, another root, expired)",
)
DOWNSTREAM_SSL_SESSION_REUSED = Counter(
    "downstream_ssl_session_reused", "Inbound mesh mTLS connections that resumed a TLS session"
)


@dataclass(frozen=True, slots=True)
class Admitted:
    """What the acceptor learnt of a connection before its protocol got it."""

    destination: tuple[str, int] | None
    mesh_tls: bool  # mesh mTLS was terminated: the transport is the TLS one


Admit = Callable[[Admitted], asyncio.Protocol]


class InboundAcceptor:
    """Accepts one inbound listening socket's connections; ``new_protocol`` makes the
    connection's protocol (the worker's Downstream) once it is admitted."""

    def __init__(
        self,
        worker: Worker,
        spec: ListenSpec,
        identity: IdentitySource | None,
        new_protocol: Admit,
    ) -> None:
        self._worker = worker
        self._spec = spec
        self._identity = identity
        self._new_protocol = new_protocol
        self._task: asyncio.Task[None] | None = None
        self._admitting: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._accept())

    def close(self) -> None:
        """Stop accepting; connections being admitted finish their admission."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._spec.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        listening = self._spec.sock
        while True:
            try:
                conn, _peer = await loop.sock_accept(listening)
            except OSError as err:  # EMFILE and the like: the next accept may work
                log.error("inbound accept failed: %s", err)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._admit(loop, conn))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            await self._admit_one(loop, conn)
        except (TimeoutError, OSError):
            conn.close()  # the client left during the look (or the handshake: counted)
        except Exception:  # a bug must cost this connection only
            log.exception("admitting an inbound connection failed unexpectedly")
            conn.close()

    async def _admit_one(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        destination = self._destination(conn)
        port = destination[1] if destination is not None else conn.getsockname()[1]
        mode = self._worker.mesh.workload.peer_authentication.mode_for(port)
        source = self._identity
        identity = source.current if source is not None else None
        mesh_tls = False
        if identity is not None and port not in DEFAULT_SKIP_PORTS and mode != "DISABLE":
            first = await peek(loop, conn, DETECT_TIMEOUT)
            mesh_tls = is_mesh_tls(first)
        if mode == "STRICT" and not mesh_tls:
            self._worker.stats.inc(DOWNSTREAM_CX_MTLS_REQUIRED, self._listener())
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            conn.close()
            return
        admitted = Admitted(destination, mesh_tls)
        if mesh_tls:
            assert identity is not None
            try:
                await loop.connect_accepted_socket(
                    lambda: self._new_protocol(admitted),
                    conn,
                    ssl=identity.server,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                )
            except (TimeoutError, OSError) as err:
                # ssl.SSLError (a certificate we refuse), or the client's alert ending the
                # handshake (it refused ours) seen as a reset; a handshake too slow
                self._worker.stats.inc(DOWNSTREAM_SSL_ERROR, self._listener())
                reason = err.reason if isinstance(err, ssl.SSLError) else type(err).__name__
                log.info("inbound mesh TLS handshake failed: %s", reason)
                raise
            self._worker.stats.inc(DOWNSTREAM_SSL_HANDSHAKE, self._listener())
        else:
            await loop.connect_accepted_socket(lambda: self._new_protocol(admitted), conn)

    def _destination(self, conn: socket.socket) -> tuple[str, int] | None:
        destination = original_destination(conn)
        if self._spec.transparent and (destination is None or destination == conn.getsockname()):
            destination = conn.getsockname()[:2]  # TPROXY: the socket's own address
        return destination

    def _listener(self) -> tuple[tuple[str, str], ...]:
        return listener_labels(self._spec.info.name)


def is_mesh_tls(first: Detected | None) -> bool:
    """A ClientHello a sidecar sent: TLS whose ALPN offers a mesh token."""
    return (
        first is not None
        and first.protocol == "tls"
        and any(token in INNER_PROTOCOL for token in first.alpn)
    )


async def peek(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float
) -> Detected | None:
    """What the first bytes are, without reading them; None when the client sent nothing
    (or too little to tell) within ``timeout``, or closed."""
    deadline = loop.time() + timeout
    readable: asyncio.Future[None] = loop.create_future()
    loop.add_reader(conn.fileno(), _set, readable)
    try:
        async with asyncio.timeout(timeout):
            await readable
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(conn.fileno())
    while True:
        data = conn.recv(MAX_CLIENT_HELLO_BYTES, socket.MSG_PEEK)
        if not data:
            return None
        detected = detect(data)
        if detected is not None or loop.time() >= deadline:
            return detected
        await asyncio.sleep(PEEK_RETRY)  # readable stays true while bytes wait: look later


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
