"""The response side of the pipeline: an upstream response relayed to the client, and the
replies the sidecar makes itself.

Neither holds state of its own: they take the exchange (what the access log and metrics
report), the upstream try and the response sink, the codec-neutral interfaces of
``exchange``.
"""

from __future__ import annotations

from typing import Final

from proxy.config.model import HeaderOperations, HttpRoute
from proxy.http.events import Response
from proxy.outcomes import Flag
from proxy.pipeline import grpc
from proxy.pipeline.errors import UpstreamCut
from proxy.pipeline.exchange import Exchange, Pending, RequestBody, ResponseSink, UpstreamTry
from proxy.pipeline.local_reply import LocalReply
from proxy.pipeline.rewrite import apply_operations, forward_response_headers

_NO_OPS: Final = HttpRoute(name="-").response_headers


async def relay(
    exchange: Exchange,
    attempt: UpstreamTry,
    response: Response,
    first: bytes | Pending | None,
    sink: ResponseSink,
) -> bool:
    """The response to the client: head, body at the client's pace, trailers. False when
    the upstream cut it short (the client's response is cut too)."""
    route = exchange.route
    operations = route.response_headers if route is not None else _NO_OPS
    headers = forward_response_headers(response, operations)
    exchange.status = response.status
    if (attempt.end or first is None) and not attempt.trailers:
        sink.send_head(response.status, headers, end=True)
        exchange.head_sent = True
        return True
    sink.send_head(response.status, headers, end=False)
    exchange.head_sent = True
    try:
        if not attempt.end:
            data = await attempt.read() if isinstance(first, Pending) else first
            while data is not None:
                if data:
                    waiting = sink.send_data(data)
                    if waiting is not None:
                        await waiting
                part = attempt.poll()
                data = await attempt.read() if isinstance(part, Pending) else part
    except UpstreamCut as cut:
        if not sink.lost:  # else the client left first: the adapter flags that
            exchange.flags.append(cut.flag)
            sink.cut(cut.flag)
        return False
    trailers = attempt.trailers
    if trailers and exchange.request_protocol == "grpc" and not exchange.grpc_status:
        status = grpc.status_of(trailers)
        exchange.grpc_status = "" if status is None else str(status)
    sink.send_end(trailers)
    return True


async def send_local_reply(
    exchange: Exchange,
    reply: LocalReply,
    body: RequestBody,
    sink: ResponseSink,
    operations: HeaderOperations | None = None,
) -> None:
    """Our own answer: gRPC-shaped (Trailers-Only) to a gRPC client, else a short text;
    the request body is dropped first (when it cannot be, the connection closes after).
    ``operations``: the route's response header rules, which Envoy's router applies to
    the replies it makes itself (not to a fault filter's or a policy's)."""
    if reply.flag != Flag.NONE and reply.flag not in exchange.flags:
        exchange.flags.append(reply.flag)
    drained = await body.discard()
    if exchange.request_protocol == "grpc":
        code, headers = grpc.local_reply_headers(reply)
        status = 200
        exchange.grpc_status = str(code)
    else:
        status, headers = reply.status, reply.headers()
    if operations is not None:
        headers = apply_operations(headers, operations)
    exchange.status = status
    if exchange.request_protocol == "grpc":
        sink.send_head(status, headers, end=True)
    else:
        await sink.send_local(status, headers, reply.body, close=not drained)
    exchange.head_sent = True
