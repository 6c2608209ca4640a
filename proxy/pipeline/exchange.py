"""One HTTP request as the pipeline sees it, whichever codec carried it, and the three
interfaces through which the pipeline meets the codecs:

* ``RequestBody``: the downstream request's body, read as an upstream try sends it and kept
  (up to ``kept_body.REPLAY_LIMIT``) so that a retry can send it again;
* ``ResponseSink``: where the response goes (the downstream HTTP/1.1 connection, or the
  client's HTTP/2 stream), written head, data, end, with backpressure;
* ``UpstreamTry``: one try on one upstream host over HTTP/1.1 or HTTP/2, as the service port
  says: ``start`` (connect or reuse, send, wait for the head) → ``poll``/``read``… →
  ``finish``, or ``abort``.

Request and response heads are the ``proxy.http.events`` dataclasses (lowercase names, values
as bytes): the HTTP/2 adapter turns its header lists into them and back, so routing, header
rules and the access log read one shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Final, Protocol

from proxy.config.model import HttpRoute
from proxy.http.events import Headers, InformationalResponse, Request, Response
from proxy.upstream.cluster import ClusterRuntime


@dataclass(slots=True)
class Exchange:
    """One request and what became of it: what the access log and the metrics report."""

    request: Request
    started: float
    authority: bytes | None = None  # the Host header / :authority, for routing and the log
    route: HttpRoute | None = None
    cluster: ClusterRuntime | None = None
    status: int = 0
    flags: list[str] = field(default_factory=list)
    upstream_host: tuple[str, int] | None = None
    tries: int = 0
    retries: int = 0
    head_sent: bool = False
    request_bytes: int = 0
    response_bytes: int = 0
    duration: float = 0.0
    request_id: bytes | None = None  # the client's x-request-id, or the one we generated
    request_protocol: str = "http"  # Istio's label: "grpc" for gRPC calls (over HTTP/2)
    grpc_status: str = ""  # the gRPC status of a gRPC call, when it ended with one
    upstream_principal: str | None = None  # the upstream's SPIFFE ID, when mesh mTLS proved it


class RequestBody(Protocol):
    """The downstream request body. ``chunks`` yields it from its start each time (what was
    kept first, then the rest as the client sends it); ``consumed`` tells the codec that what
    was yielded is forwarded (HTTP/2 then reopens the client's window); ``trailers`` are set
    once ``complete``."""

    size: int
    replayable: bool  # still all kept: a retry can send it again
    complete: bool
    trailers: Headers

    @property
    def empty(self) -> bool:
        """No body at all: nothing to send but the end of the request."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    def consumed(self) -> None: ...

    async def discard(self) -> bool:
        """Drop what is left before a local reply; False when the rest cannot be skipped and
        the connection must close after the reply."""


class ResponseSink(Protocol):
    """The downstream side of one request. Methods that write raise ``DownstreamGone`` when the
    client is gone; ``response_bytes`` counts what was sent as the access log reports it."""

    response_bytes: int

    @property
    def lost(self) -> bool:
        """The client is gone (reset, closed under us, or its stream was reset)."""

    def send_head(self, status: int, headers: Headers, end: bool) -> None: ...

    def send_data(self, data: bytes) -> Awaitable[None] | None:
        """Write ``data``; returns what to await while the client is slower than the
        upstream, None when nothing (no coroutine per part of a fast response)."""

    def send_end(self, trailers: Headers) -> None: ...

    async def send_local(self, status: int, headers: Headers, body: bytes, close: bool) -> None:
        """A whole response of our own; ``close``: the connection cannot carry another."""

    def cut(self, flag: str) -> None:
        """Abandon a response already started (``flag`` says why): the client must not take
        what it got for the whole answer."""

    async def tunnel(self, upstream: object, switching: InformationalResponse) -> None:
        """After the upstream accepted an upgrade (101): relay bytes both ways until both
        sides close (HTTP/1.1 only: an HTTP/2 request never asks for an upgrade)."""


class Pending:
    """``UpstreamTry.poll``: nothing parsed yet, ``read`` must wait for it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = Pending()


class UpstreamTry(Protocol):
    """One try of a request on one upstream host. Before the response head, failures raise
    ``TryFailed``; after it, ``UpstreamCut``. ``abort`` may be called at any time and more
    than once (it does nothing after ``finish``)."""

    end: bool  # the response ended with its head
    trailers: Headers  # the response's trailers, once ``read`` returned None

    async def start(
        self, exchange: Exchange, request: Request, body: RequestBody
    ) -> Response | InformationalResponse:
        """Send ``request`` (the forwarded head of ``exchange``'s request) with ``body`` and
        return the response head: an InformationalResponse only for a 101 that accepts the
        request's upgrade (other 1xx are skipped). One coroutine for the three steps: the
        per-try timeout covers them together, and each coroutine is a cost per request."""

    def poll(self) -> bytes | Pending | None:
        """The next part of the body when it is already parsed (None at its end), else
        PENDING: a small response's body arrives with its head, and taking it needs no
        coroutine. Asking for the next part says the previous one was forwarded: HTTP/2
        reopens the upstream's window for it then, which is the backpressure."""

    async def read(self) -> bytes | None:
        """The next part of the body, waiting for it; None at the end (and the same
        acknowledgement of the previous part as ``poll``)."""

    async def drop_response(self) -> None:
        """The response will be retried: free the connection for reuse if that is cheap."""

    def finish(self) -> None: ...

    def abort(self) -> None:
        """Reset the try toward the upstream at once (RST, RST_STREAM CANCEL)."""

    def switch_protocols(self) -> object:
        """After a 101: hand over the upstream connection for a tunnel."""
