"""A downstream connection that speaks HTTP: which codec it gets, which codec its upstream tries
speak, and handing the session's transport over to the right connection manager.

* Downstream: a port declared ``http``, ``http2`` or ``grpc`` is HTTP, and the client's
  HTTP/2 preface (prior knowledge) makes the connection HTTP/2, anything else HTTP/1.1
  (Envoy's downstream codec "AUTO", as Istio configures it), but a TLS hello is relayed as
  TCP. An ``auto`` port is sniffed (``sniff.py``).
* Upstream: HTTP/2 for ``http2`` and ``grpc`` ports, HTTP/1.1 for ``http`` ports, and for an
  ``auto`` port what the client speaks (Istio's useClientProtocol: a gRPC client on an
  undeclared port would otherwise reach its server as HTTP/1.1).

The HTTP/2 modules (and h2, ~4 MiB of modules) load with the first connection or upstream
that needs them, so a sidecar that only sees TCP and HTTP/1.1 never pays for them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from proxy.filters.http1_downstream import Http1ConnectionManager
from proxy.filters.http1_upstream import Http1Try
from proxy.filters.sniff import DEFAULT_DETECT_TIMEOUT, DEFAULT_SKIP_PORTS
from proxy.filters.sniff import detect as sniff
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.forward import NewTry, Pipeline
from proxy.series import Stats
from proxy.stats import Labels
from proxy.transport.relay import RelayHalf
from proxy.upstream.connector import Connector, Source

if TYPE_CHECKING:
    from proxy.filters.http2_downstream import Http2ConnectionManager

UPSTREAM_HTTP2_PORTS = ("http2", "grpc")
DECLARED_HTTP = ("http", "http2", "grpc")
# A declared HTTP port's client speaks first: wait longer for its first bytes than a sniffer of
# undeclared ports may (they only choose between HTTP/1.1 and HTTP/2), but not forever.
DECLARED_HTTP_DETECT_TIMEOUT = 5.0


class HttpManager(Protocol):
    """What the session drives, whichever codec serves the connection."""

    async def run(self) -> None: ...

    def progress(self) -> int: ...

    def drain(self) -> None: ...

    def abort(self) -> None:
        """Cut the connection now (the idle timeout)."""

    def finish(self) -> None:
        """``run`` returned: release the connection, delivering what was written."""


async def detect(
    downstream: RelayHalf, loop: asyncio.AbstractEventLoop, protocol: str, port: int
) -> str | None:
    """ "http1", "http2" or None (TCP) for a connection to a port declared ``protocol``, from
    its first bytes. Well-known server-first ports are never sniffed, and a client silent for
    the detection timeout is TCP."""
    if protocol in DECLARED_HTTP:
        detected = await _first_bytes(downstream, loop, DECLARED_HTTP_DETECT_TIMEOUT)
        if detected == "tls":
            return None
        return "http2" if detected == "http2" else "http1"
    if protocol != "auto" or port in DEFAULT_SKIP_PORTS:
        return None
    detected = await _first_bytes(downstream, loop, DEFAULT_DETECT_TIMEOUT)
    return detected if detected in ("http1", "http2") else None


async def _first_bytes(
    downstream: RelayHalf, loop: asyncio.AbstractEventLoop, timeout: float
) -> str | None:
    """What the client's first bytes are (sniff.py's names), or None when it sent none
    before ``timeout`` (or closed). Reading resumes until they are enough to tell."""
    deadline = loop.time() + timeout
    while True:
        detected = sniff(b"".join(downstream.early))
        if detected is not None:
            return detected.protocol
        remaining = deadline - loop.time()
        if downstream.eof or downstream.lost or remaining <= 0:
            return None
        arrived: asyncio.Future[None] = loop.create_future()
        downstream.on_early = functools.partial(_wake, arrived)
        downstream.transport.resume_reading()  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(remaining):
                await arrived
        except TimeoutError:
            return None
        finally:
            downstream.on_early = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def upstream_speaks_http2(port_protocol: str, client_http2: bool) -> bool:
    return port_protocol in UPSTREAM_HTTP2_PORTS or (client_http2 and port_protocol == "auto")


def new_try_factory(connector: Connector, source: Source, http2: bool) -> NewTry:
    """What makes one upstream try of a request, over HTTP/2 or HTTP/1.1."""
    if http2:
        from proxy.filters.http2_upstream import Http2Try  # loads h2 on first use

        return functools.partial(Http2Try, connector, source)
    return functools.partial(Http1Try, connector, source)


def http1_manager(
    pipeline: Pipeline,
    transport: asyncio.Transport,
    early: bytes,
    eof: bool,
    loop: asyncio.AbstractEventLoop,
    exchange_done: Callable[[Exchange], None],
    head_timeout: float = 0.0,
    on_head_timeout: Callable[[], None] | None = None,
) -> Http1ConnectionManager:
    """An HTTP/1.1 manager on the session's transport, fed the bytes sniffing read."""
    channel = Http1ConnectionManager.channel(loop)
    manager = Http1ConnectionManager(
        pipeline, channel, loop, exchange_done, head_timeout, on_head_timeout
    )
    transport.set_protocol(channel)
    channel.connection_made(transport)
    channel.feed(early, eof)
    return manager


def http2_manager(
    pipeline: Pipeline,
    transport: asyncio.Transport,
    early: bytes,
    eof: bool,
    loop: asyncio.AbstractEventLoop,
    exchange_done: Callable[[Exchange], None],
    stats: Stats,
    listener: Labels,
    head_timeout: float = 0.0,
    on_head_timeout: Callable[[], None] | None = None,
) -> Http2ConnectionManager:
    """An HTTP/2 manager on the session's transport, fed the bytes sniffing read."""
    from proxy.filters.http2_downstream import Http2ConnectionManager, take_over

    manager = Http2ConnectionManager(pipeline, loop, exchange_done, head_timeout, on_head_timeout)
    take_over(manager, transport, early, eof, stats, listener)
    return manager
