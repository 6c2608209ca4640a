"""What the sidecar accepts from its clients before it refuses them: how many connections a
worker holds, how much memory it may use before it takes no more, and how long a request head
may take to arrive.

Set once per sidecar (``detour-proxy --max-connections``, ``--memory-limit-mib``,
``--request-headers-timeout``), as Envoy sets them in its bootstrap (the overload manager's
downstream-connections monitor, its fixed-heap monitor with the reject-incoming-connections
action) and its HttpConnectionManager (``request_headers_timeout``). Pure: the worker asks,
and counts.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from proxy.stats import Counter, Gauge

DOWNSTREAM_CX_OVERFLOW = Counter(
    "downstream_cx_overflow", "Connections closed at accept: the connection limit was reached"
)
DOWNSTREAM_CX_OVERLOAD_REJECT = Counter(
    "downstream_cx_overload_reject",
    "Connections closed at accept: the worker reached its memory mark and holds its limit",
)
OVERLOAD_REJECTING = Gauge(
    "overload_reject_incoming_connections_active",
    "Workers whose memory mark limits the connections they take (the sum over workers)",
)
DOWNSTREAM_RQ_HEADER_TIMEOUT = Counter(
    "downstream_rq_header_timeout",
    "Request heads that did not arrive in time (HTTP/1.1: 408; HTTP/2: GOAWAY)",
)
# Descriptors a worker keeps for itself beyond its connections: listeners, the control
# channel, the loop's own, logs, health checks and DNS.
RESERVED_DESCRIPTORS = 64
DEFAULT_REQUEST_HEADERS_TIMEOUT = 10.0
# A worker's memory guard (MemoryGuard) lets go once memory is below this fraction of the mark,
# and lowers its limit when memory rises by this fraction of the mark above its last high.
MEMORY_RELEASE_FRACTION = 0.95
MEMORY_RISE_FRACTION = 0.05
UNLIMITED = 1 << 62
MEMORY_CHECK_INTERVAL = 0.25  # seconds between two looks at a worker's resident set
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class DownstreamLimits:
    """``max_connections`` is the sidecar's, split evenly over its workers (the kernel spreads
    new connections over them evenly); 0 means as many as the descriptor limit allows, which
    is never more than that: a worker that reached it would fail accept() with EMFILE and
    serve nobody. ``request_headers_timeout`` counts from a head's first byte to its last
    (0 = none): what cuts a slowloris client, whose trickle the idle timeout never sees.
    ``memory_limit_mib`` is the sidecar's resident memory mark, split evenly over its workers
    (0 = none): set it below the pod's memory limit, so that a flood of connections is refused
    before the kernel's OOM killer ends every connection at once."""

    max_connections: int = 0
    request_headers_timeout: float = DEFAULT_REQUEST_HEADERS_TIMEOUT
    memory_limit_mib: int = 0

    def __post_init__(self) -> None:
        if self.max_connections < 0:
            raise ValueError(f"--max-connections={self.max_connections}: expected 0 or more")
        if self.memory_limit_mib < 0:
            raise ValueError(f"--memory-limit-mib={self.memory_limit_mib}: expected 0 or more")
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

    def memory_mark(self, workers: int) -> int:
        """The resident bytes at which one of ``workers`` stops taking more connections (its
        ``MemoryGuard``): its even share of ``memory_limit_mib`` (0: never). Each worker is its
        own process and watches its own memory; the supervisor's few MiB are in no share."""
        return self.memory_limit_mib * MIB // workers


class MemoryGuard:
    """How many connections a worker may hold for its memory: any number until its resident
    set reaches ``mark``; from then on at most what it held at that moment, until its memory
    is back below ``MEMORY_RELEASE_FRACTION`` of the mark. Memory that climbs on by another
    ``MEMORY_RISE_FRACTION`` of the mark lowers the limit to what the worker holds then
    (heavier connections: fewer of them). What a worker holds is served on; new connections
    beyond the limit are closed at once, so their clients learn it now and retry elsewhere
    (Envoy's reject_incoming_connections overload action).

    A number of connections rather than memory alone: memory that closed connections freed is
    kept by the allocators (Python's arenas stay mapped while any object lives in them: after
    10,000 idle connections closed, a worker's resident set stayed where it was) and is reused
    by the next ones. A guard that refused while memory stayed high would refuse forever after
    one flood; the count the worker held at its mark is what that memory serves."""

    __slots__ = ("_high", "limit", "mark")

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self.limit = UNLIMITED
        self._high = 0  # the highest reading since the guard switched on

    @property
    def active(self) -> bool:
        return self.limit != UNLIMITED

    def observe(self, resident: int, connections: int) -> bool:
        """Takes a reading of the worker's resident bytes and the connections it holds; True
        when that changed the limit (switched on, lowered, or off)."""
        before = self.limit
        if self.mark <= 0:
            return False
        if resident < self.mark * MEMORY_RELEASE_FRACTION:
            self.limit = UNLIMITED
        elif not self.active and resident >= self.mark:
            self.limit, self._high = connections, resident
        elif self.active and resident >= self._high + self.mark * MEMORY_RISE_FRACTION:
            self.limit, self._high = min(self.limit, connections), resident
        return self.limit != before


def descriptor_limit() -> int:
    """This process's soft RLIMIT_NOFILE (what accept() runs into)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
