"""Header rewriting between the downstream and the upstream, pure.

What a forwarding proxy must change (RFC 9110 §7.6): hop-by-hop fields go, and the message is
re-framed by the next hop's codec (``Content-Length`` is kept when the length is known,
``Transfer-Encoding: chunked`` is re-added when the body was chunked). What a sidecar adds, as
Envoy does: ``x-request-id`` when absent (tracing and log correlation), ``x-forwarded-proto``
when absent, ``x-forwarded-for`` with the downstream peer appended. Then the route's own
header operations: remove, set, add (Istio applies them in that order).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from proxy.config.model import HeaderOperations
from proxy.http.events import Headers, Request, Response
from proxy.http.headers import HOP_BY_HOP, comma_tokens

# Besides the hop-by-hop fields: we answered 100-continue ourselves (Envoy does too).
_REQUEST_DROP: Final = HOP_BY_HOP | {b"expect"}
# The try number (Envoy's include_request_attempt_count, which Istio sets on its outbound
# routes): written by us, replacing whatever the client sent.
ATTEMPT_COUNT: Final = b"x-envoy-attempt-count"
_REQUEST_DROP_COUNTING: Final = _REQUEST_DROP | {ATTEMPT_COUNT}


def forward_request_headers(
    request: Request,
    peer_address: str,
    operations: HeaderOperations,
    new_request_id: Callable[[], bytes] = lambda: new_request_id(),
    count_attempts: bool = False,
) -> Headers:
    """The request's headers as the upstream should see them; with ``count_attempts`` the
    last field is ``x-envoy-attempt-count: 1`` (the pipeline rewrites it for each retry).

    Names are lowercase, as in every parsed event (our HTTP/1.1 codec lowercases them, h2
    refuses uppercase ones), so nothing is lowercased again: one dict and one filtering pass
    in C instead of a Python loop per rule."""
    present = dict(request.headers)  # name -> a value; only membership is used
    drop = _dropped(
        request.headers, present, _REQUEST_DROP_COUNTING if count_attempts else _REQUEST_DROP
    )
    headers = [h for h in request.headers if h[0] not in drop]
    if request.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    if request.upgrade is not None:
        headers.append((b"connection", b"upgrade"))
        headers.append((b"upgrade", request.upgrade))
    if b"x-request-id" not in present or b"x-request-id" in drop:
        headers.append((b"x-request-id", new_request_id()))
    if b"x-forwarded-proto" not in present or b"x-forwarded-proto" in drop:
        headers.append((b"x-forwarded-proto", b"http"))
    peer = peer_address.encode()
    if b"x-forwarded-for" in present and b"x-forwarded-for" not in drop:
        _append_forwarded_for(headers, peer)
    else:
        headers.append((b"x-forwarded-for", peer))
    headers = apply_operations(headers, operations)
    if count_attempts:
        if operations.set or operations.add:  # ours wins, as Envoy writes it last
            headers = [h for h in headers if h[0] != ATTEMPT_COUNT]
        headers.append((ATTEMPT_COUNT, b"1"))
    return headers


def new_request_id(bits: Callable[[int], int] = random.getrandbits) -> bytes:
    """A random (version 4) UUID as Envoy writes x-request-id. Not uuid.uuid4(): that reads
    os.urandom (a system call) per request, and an id needs to be unique, not secret."""
    value = (bits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60)
    text = b"%032x" % value
    return b"-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:]))


def forward_response_headers(response: Response, operations: HeaderOperations) -> Headers:
    """The response's headers as the downstream should see them (the downstream codec adds
    chunked framing itself when no Content-Length is left). Names are lowercase, as above."""
    drop = _dropped(response.headers, dict(response.headers), HOP_BY_HOP)
    return apply_operations([h for h in response.headers if h[0] not in drop], operations)


def _dropped(
    headers: Headers, present: dict[bytes, bytes], hop_by_hop: frozenset[bytes]
) -> frozenset[bytes]:
    """The names not to forward: ``hop_by_hop`` and every field any Connection line names
    (RFC 9110 §7.6.1; ``headers.strip_hop_by_hop`` is the same rule for lists of any case).
    ``present`` is ``dict(headers)``, to skip the scan when there is no Connection field."""
    if b"connection" not in present:
        return hop_by_hop
    named = [v for n, v in headers if n == b"connection"]
    return hop_by_hop.union(comma_tokens(named))


def apply_operations(headers: Headers, operations: HeaderOperations) -> Headers:
    if not (operations.remove or operations.set or operations.add):
        return headers
    drop = {name.encode() for name in operations.remove}
    drop.update(name.encode() for name, _ in operations.set)
    result = [h for h in headers if h[0] not in drop]
    result += [(name.encode(), value.encode()) for name, value in operations.set]
    result += [(name.encode(), value.encode()) for name, value in operations.add]
    return result


def _append_forwarded_for(headers: Headers, peer: bytes) -> None:
    """Append ``peer`` to the last x-forwarded-for field line (the list's end)."""
    for index in range(len(headers) - 1, -1, -1):
        name, value = headers[index]
        if name == b"x-forwarded-for":
            headers[index] = (name, value + b", " + peer)
            return
    headers.append((b"x-forwarded-for", peer))
