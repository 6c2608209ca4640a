"""HTTP routing decisions, pure: which route a request takes, which destination of the route,
whether a failed try is retried and after how long.

Built once per service and mesh version (regexes compiled here, not per request); the data
path asks and acts. Matching follows Istio's VirtualService semantics: routes are tried in
order and the first whose match list holds wins (an empty list matches everything); inside one
match every given condition must hold; ``uri`` is the path without the query string; a header
condition on a header sent several times sees the values joined with "," (RFC 9110 §5.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.config.model import (
    Fault,
    HttpRoute,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    Service,
    StringMatch,
)
from proxy.http.events import Headers
from proxy.outcomes import Outcome
from proxy.pipeline.grpc import GRPC_RETRY_ON


class _Matcher:
    """One StringMatch, ready to test bytes from the wire."""

    __slots__ = ("_kind", "_pattern", "_value")

    def __init__(self, spec: StringMatch) -> None:
        self._kind = spec.kind
        self._value = spec.value.encode()
        self._pattern = re.compile(self._value) if spec.kind == "regex" else None

    def __call__(self, value: bytes | None) -> bool:
        if value is None:
            return False
        if self._kind == "exact":
            return value == self._value
        if self._kind == "prefix":
            return value.startswith(self._value)
        return self._pattern.fullmatch(value) is not None  # type: ignore[union-attr]


@dataclass(frozen=True)
class _CompiledMatch:
    uri: _Matcher | None
    method: _Matcher | None
    authority: _Matcher | None
    headers: tuple[tuple[bytes, _Matcher], ...]

    @classmethod
    def build(cls, match: RouteMatch) -> _CompiledMatch:
        def compiled(spec: StringMatch | None) -> _Matcher | None:
            return _Matcher(spec) if spec is not None else None

        return cls(
            compiled(match.uri),
            compiled(match.method),
            compiled(match.authority),
            tuple((name.encode(), _Matcher(spec)) for name, spec in match.headers),
        )

    def holds(self, method: bytes, path: bytes, authority: bytes | None, headers: Headers) -> bool:
        if self.uri is not None and not self.uri(path):
            return False
        if self.method is not None and not self.method(method):
            return False
        if self.authority is not None and not self.authority(authority):
            return False
        return all(test(header_value(headers, name)) for name, test in self.headers)


@dataclass(frozen=True)
class RouteEntry:
    """A route with what the data path asks of it per request, worked out once."""

    route: HttpRoute
    matches: tuple[_CompiledMatch, ...]
    # The response statuses the route's retry policy may retry: most responses are not, and
    # a set lookup tells so without a call per request.
    retry_statuses: frozenset[int]
    # The policy names a gRPC status: a gRPC response's status must be known (it may come in
    # the trailers after the head) before the response can be forwarded or retried.
    retries_on_grpc_status: bool

    @classmethod
    def build(cls, route: HttpRoute) -> RouteEntry:
        matches = tuple(_CompiledMatch.build(m) for m in route.matches)
        retry_on = route.retries.retry_on
        grpc_names = any(name in GRPC_RETRY_ON for name in retry_on)
        return cls(route, matches, retriable_statuses(route.retries), grpc_names)


class HttpRouter:
    """A service's routes, compiled."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._routes = tuple(RouteEntry.build(route) for route in service.routes)

    def match(
        self, method: bytes, target: bytes, authority: bytes | None, headers: Headers
    ) -> RouteEntry | None:
        path = request_path(target)
        for entry in self._routes:
            if not entry.matches or any(
                m.holds(method, path, authority, headers) for m in entry.matches
            ):
                return entry
        return None


def request_path(target: bytes) -> bytes:
    """The path of a request target without its query: origin form ``/a?b`` → ``/a``, absolute
    form ``http://h/a?b`` → ``/a`` (RFC 9112 §3.2), ``*`` stays ``*``."""
    if target[:1] != b"/" and b"://" in target:
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    return target.split(b"?", 1)[0]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """All values of ``name`` joined with ",", or None when absent (names are lowercase)."""
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b",".join(values)


def pick_destination(destinations: Sequence[RouteDestination], roll: float) -> RouteDestination:
    """The destination whose weight band contains ``roll`` (uniform in [0, 100))."""
    if len(destinations) == 1:
        return destinations[0]
    total = 0
    for destination in destinations:
        total += destination.weight
        if roll < total:
            return destination
    return destinations[-1]


def retriable_statuses(policy: RetryPolicy) -> frozenset[int]:
    """The statuses ``is_retriable`` says yes to under ``policy`` (an HTTP status is at most
    999 here: the codec refuses more digits)."""
    retry_on = policy.retry_on
    statuses: set[int] = set()
    if "5xx" in retry_on:
        statuses.update(range(500, 1000))
    if "gateway-error" in retry_on:
        statuses.update((502, 503, 504))
    if "retriable-status-codes" in retry_on:
        statuses.update(policy.retriable_status_codes)
    return frozenset(statuses)


def is_retriable(policy: RetryPolicy, outcome: int | str) -> bool:
    """Whether a try that ended with ``outcome`` (a status or a failure name) is worth another
    try under ``policy``'s ``retry_on`` (Envoy's x-envoy-retry-on semantics)."""
    retry_on = policy.retry_on
    if isinstance(outcome, int):
        if "5xx" in retry_on and outcome >= 500:
            return True
        if "gateway-error" in retry_on and outcome in (502, 503, 504):
            return True
        return "retriable-status-codes" in retry_on and outcome in policy.retriable_status_codes
    if outcome == Outcome.CONNECT_FAILURE:  # a reset of its own kind (Envoy's RETRY_ON_RESET)
        return bool({"connect-failure", "reset", "5xx", "gateway-error"} & set(retry_on))
    if outcome == Outcome.RESET:
        return bool({"reset", "5xx", "gateway-error"} & set(retry_on))
    if outcome == Outcome.PER_TRY_TIMEOUT:
        # Envoy: a per-try timeout counts as a 5xx / gateway error for retry purposes.
        return bool({"5xx", "gateway-error", "reset"} & set(retry_on))
    # A gRPC status by its retry_on name ("unavailable", ...): retried only when named.
    return outcome in retry_on


def backoff_delay(policy: RetryPolicy, retry_number: int, roll: float) -> float:
    """Envoy's back-off: full jitter in [0, base * 2^(n-1)), capped at ``backoff_max``; ``roll``
    is uniform in [0, 1). Retry 1 waits up to base, retry 2 up to 2 x base, ..."""
    ceiling = min(policy.backoff_base * (1 << max(0, retry_number - 1)), policy.backoff_max)
    return ceiling * roll


def retry_budget_allows(
    requests_active: int, retries_active: int, budget_percent: float, min_concurrency: int
) -> bool:
    """Envoy's retry budget: one more retry may start while retries in flight stay within
    ``budget_percent`` of the requests in flight, or below ``min_concurrency`` retries."""
    allowed = max(min_concurrency, int(requests_active * budget_percent / 100.0))
    return retries_active < allowed


def roll_fault(fault: Fault | None, roll: Callable[[], float]) -> tuple[float, int | None]:
    """What fault injection does to one request: (delay in seconds, abort status or None).
    ``roll`` is uniform in [0, 1); each of delay and abort rolls once."""
    if fault is None:
        return 0.0, None
    delay = fault.delay if fault.delay_percent and roll() * 100 < fault.delay_percent else 0.0
    abort = (
        fault.abort_status if fault.abort_percent and roll() * 100 < fault.abort_percent else None
    )
    return delay, abort
