"""What became of a connection or a request, in Envoy's words, for every module to use.

``Flag``: the response flags the access log (``%RESPONSE_FLAGS%``) and Istio's
``response_flags`` label carry, under the short names Envoy logs, so an operator's queries and
dashboards read the same. ``Outcome``: what ended an upstream try that produced no usable
response, as retry policies name it (``retry_on: connect-failure,reset``); a try that got a
response has its status code as its outcome instead, and a gRPC call may have a gRPC status
name (``unavailable``, ``proxy.pipeline.grpc``).

Plain classes of string constants rather than enums: the values are written to logs and
labels as they are, compared on the hot path, and joined with ","; an Enum member would need
``.value`` at every one of those places.
"""

from __future__ import annotations


class Flag:
    """Envoy's response flags (envoy/stream_info/stream_info.h, ``ResponseFlag``)."""

    NONE = "-"  # what the log shows when no flag applies
    # upstream
    UPSTREAM_CONNECTION_FAILURE = "UF"  # the upstream connect failed (refused, unreachable)
    UPSTREAM_OVERFLOW = "UO"  # a circuit breaker refused (connections, requests)
    UPSTREAM_REQUEST_TIMEOUT = "UT"  # the route timeout (HTTP), the connect timeout (TCP)
    UPSTREAM_CONNECTION_TERMINATION = "UC"  # the upstream closed or reset the connection
    UPSTREAM_REMOTE_RESET = "UR"  # the upstream reset an HTTP/2 stream
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"  # retries exhausted, the last failure answered
    UPSTREAM_PROTOCOL_ERROR = "UPE"  # the upstream's response could not be parsed
    NO_HEALTHY_UPSTREAM = "UH"  # no endpoint to try
    NO_ROUTE_FOUND = "NR"  # no route (HTTP), not a mesh destination (TCP, REGISTRY_ONLY)
    # downstream
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"  # the client closed or reset mid-exchange
    DOWNSTREAM_REMOTE_RESET = "DR"  # the client reset its HTTP/2 stream
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"  # the client's request could not be parsed
    STREAM_IDLE_TIMEOUT = "IT"  # nothing moved for the idle timeout
    # filters
    FAULT_INJECTED = "FI"  # fault injection aborted the request
    DELAY_INJECTED = "DI"  # fault injection delayed the request
    RATE_LIMITED = "RL"  # a rate limit refused the request
    # Detour's own: an authorization policy refused the request (403) or the connection
    # (closed). Envoy says it in %RESPONSE_CODE_DETAILS% instead
    # ("rbac_access_denied_matched_policy[...]"), a field Detour's log does not have.
    RBAC_ACCESS_DENIED = "RBAC"


class Outcome:
    """What ended a try without a usable response, as ``retry_on`` names it (Envoy's
    x-envoy-retry-on vocabulary)."""

    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"  # the upstream closed or reset before a complete response head
    PER_TRY_TIMEOUT = "per-try-timeout"
    NO_HEALTHY_UPSTREAM = "no-healthy-upstream"  # never retried: no host would take the retry


def joined(flags: list[str]) -> str:
    """The flags as the log and the label write them: comma-separated, "-" when none."""
    return ",".join(flags) or Flag.NONE
