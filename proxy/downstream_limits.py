"""What the sidecar accepts from its clients before it refuses them: how many connections a
worker holds, and how long a request head may take to arrive.

Set once per sidecar (``detour-proxy --max-connections``, ``--request-headers-timeout``), as
Envoy sets them in its bootstrap (the overload manager's downstream-connections monitor) and
its HttpConnectionManager (``request_headers_timeout``). Pure: the worker asks, and counts.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from proxy.stats import Counter

DOWNSTREAM_CX_OVERFLOW = Counter(
    "downstream_cx_overflow", "Connections closed at accept: the connection limit was reached"
)
DOWNSTREAM_RQ_HEADER_TIMEOUT = Counter(
    "downstream_rq_header_timeout", "Requests answered 408: the head did not arrive in time"
)
# Descriptors a worker keeps for itself beyond its connections: listeners, the control
# channel, the loop's own, logs, health checks and DNS.
RESERVED_DESCRIPTORS = 64
DEFAULT_REQUEST_HEADERS_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class DownstreamLimits:
    """``max_connections`` is the sidecar's, split evenly over its workers (the kernel spreads
    new connections over them evenly); 0 means as many as the descriptor limit allows, which
    is never more than that: a worker that reached it would fail accept() with EMFILE and
    serve nobody. ``request_headers_timeout`` counts from a head's first byte to its last
    (0 = none): what cuts a slowloris client, whose trickle the idle timeout never sees."""

    max_connections: int = 0
    request_headers_timeout: float = DEFAULT_REQUEST_HEADERS_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_connections < 0:
            raise ValueError(f"--max-connections={self.max_connections}: expected 0 or more")
        if not 0 <= self.request_headers_timeout <= 3600:
            raise ValueError(
                f"--request-headers-timeout={self.request_headers_timeout:g}: expected 0 to "
                "3600 seconds"
            )

    def per_worker(self, workers: int, descriptor_limit: int) -> int:
        """How many downstream connections one of ``workers`` may hold: its share of
        ``max_connections``, never more than its descriptors can serve (each connection
        needs one for itself and one upstream)."""
        fits = max(1, (descriptor_limit - RESERVED_DESCRIPTORS) // 2)
        if self.max_connections == 0:
            return fits
        return min(fits, max(1, -(-self.max_connections // workers)))


def descriptor_limit() -> int:
    """This process's soft RLIMIT_NOFILE (what accept() runs into)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
