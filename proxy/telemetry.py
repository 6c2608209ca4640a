"""What a finished connection or request reports: Envoy's ``downstream_rq_*``, Istio's
standard metrics (``istio_requests_total`` and its histograms for HTTP, ``istio_tcp_*`` for
TCP) and one access-log line, in Envoy's default format or its fields as JSON.

The lines are built directly rather than through a dict of fields: the log was an eighth of
the HTTP router's instructions per request.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from proxy.access_log import AccessLog
from proxy.config.model import Mesh
from proxy.http.events import Headers
from proxy.http.headers import any_outside, outside_table
from proxy.outcomes import Flag, joined
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.router import header_value
from proxy.series import Cell, Row, Stats, record
from proxy.stats import (
    ENVOY_DEFAULT_BUCKETS,
    Counter,
    Histogram,
    Labels,
    istio_labels,
    listener_labels,
)

if TYPE_CHECKING:
    from proxy.session import Session

DOWNSTREAM_RQ_TOTAL: Final = Counter(
    "downstream_rq_total", "Requests received from downstream clients"
)
DOWNSTREAM_RQ_1XX: Final = Counter(
    "downstream_rq_1xx", "Responses with a 1xx status sent downstream"
)
DOWNSTREAM_RQ_2XX: Final = Counter(
    "downstream_rq_2xx", "Responses with a 2xx status sent downstream"
)
DOWNSTREAM_RQ_3XX: Final = Counter(
    "downstream_rq_3xx", "Responses with a 3xx status sent downstream"
)
DOWNSTREAM_RQ_4XX: Final = Counter(
    "downstream_rq_4xx", "Responses with a 4xx status sent downstream"
)
DOWNSTREAM_RQ_5XX: Final = Counter(
    "downstream_rq_5xx", "Responses with a 5xx status sent downstream"
)
ISTIO_REQUESTS_TOTAL: Final = Counter("istio_requests_total", "Requests (Istio standard metric)")
ISTIO_REQUEST_DURATION_MILLISECONDS: Final = Histogram(
    "istio_request_duration_milliseconds",
    "Request duration in milliseconds (Istio standard metric)",
    ENVOY_DEFAULT_BUCKETS,
)
ISTIO_REQUEST_BYTES: Final = Histogram(
    "istio_request_bytes",
    "Request body sizes in bytes (Istio standard metric)",
    ENVOY_DEFAULT_BUCKETS,
)
ISTIO_RESPONSE_BYTES: Final = Histogram(
    "istio_response_bytes",
    "Response body sizes in bytes (Istio standard metric)",
    ENVOY_DEFAULT_BUCKETS,
)
ISTIO_TCP_CONNECTIONS_OPENED_TOTAL: Final = Counter(
    "istio_tcp_connections_opened_total", "TCP connections opened (Istio standard metric)"
)
ISTIO_TCP_CONNECTIONS_CLOSED_TOTAL: Final = Counter(
    "istio_tcp_connections_closed_total", "TCP connections closed (Istio standard metric)"
)
ISTIO_TCP_SENT_BYTES_TOTAL: Final = Counter(
    "istio_tcp_sent_bytes_total", "Bytes sent to the downstream during TCP connections"
)
ISTIO_TCP_RECEIVED_BYTES_TOTAL: Final = Counter(
    "istio_tcp_received_bytes_total", "Bytes received from the downstream during TCP connections"
)

_STATUS_CLASS: Final = {
    1: DOWNSTREAM_RQ_1XX,
    2: DOWNSTREAM_RQ_2XX,
    3: DOWNSTREAM_RQ_3XX,
    4: DOWNSTREAM_RQ_4XX,
    5: DOWNSTREAM_RQ_5XX,
}
_PROTOCOL_NAMES: Final = {b"1.1": "HTTP/1.1", b"2": "HTTP/2"}  # Envoy's %PROTOCOL% values

# Label values -> their resolved series: as many as Istio's label sets (services, status
# codes, flags), bounded anyway (the lookup is a cache; a miss only resolves again).
MAX_CACHED_LABEL_SETS: Final = 4096

# What istio_labels() is called with: outbound, the workload (name, namespace), the service
# (FQDN, name, namespace), protocol, flags, response code, gRPC status, source and destination
# principals, security policy.
LabelValues = tuple[bool, str, str, str, str, str, str, str, str | None, str, str, str, str]
S = TypeVar("S")


class RequestSeries:
    """Istio's four request series of one label set, resolved once: a request then records
    them by reference, not by hashing the fifteen label pairs four times."""

    def __init__(self, stats: Stats, metric_labels: Labels) -> None:
        self.requests: Cell = stats.counter(ISTIO_REQUESTS_TOTAL, metric_labels)
        self.duration: Row = stats.histogram(ISTIO_REQUEST_DURATION_MILLISECONDS, metric_labels)
        self.duration_bounds: tuple[float, ...] = ISTIO_REQUEST_DURATION_MILLISECONDS.bounds
        self.request_bytes: Row = stats.histogram(ISTIO_REQUEST_BYTES, metric_labels)
        self.request_bytes_bounds: tuple[float, ...] = ISTIO_REQUEST_BYTES.bounds
        self.response_bytes: Row = stats.histogram(ISTIO_RESPONSE_BYTES, metric_labels)
        self.response_bytes_bounds: tuple[float, ...] = ISTIO_RESPONSE_BYTES.bounds


class TcpSeries:
    """Istio's four TCP series of one label set, resolved once (as ``RequestSeries``)."""

    def __init__(self, stats: Stats, metric_labels: Labels) -> None:
        self.opened: Cell = stats.counter(ISTIO_TCP_CONNECTIONS_OPENED_TOTAL, metric_labels)
        self.closed: Cell = stats.counter(ISTIO_TCP_CONNECTIONS_CLOSED_TOTAL, metric_labels)
        self.received: Cell = stats.counter(ISTIO_TCP_RECEIVED_BYTES_TOTAL, metric_labels)
        self.sent: Cell = stats.counter(ISTIO_TCP_SENT_BYTES_TOTAL, metric_labels)


class SeriesByLabels(Generic[S]):
    """Resolved series (``RequestSeries``, ``TcpSeries``) by the values that label them, so
    that a record costs one hash of those values. Bounded: past MAX_CACHED_LABEL_SETS it
    starts over (a miss only resolves the same series again: ``Stats`` keeps them)."""

    def __init__(self, stats: Stats, make: Callable[[Stats, Labels], S]) -> None:
        self._stats = stats
        self._make = make
        self._by_values: dict[LabelValues, S] = {}

    def __len__(self) -> int:
        return len(self._by_values)

    def get(self, values: LabelValues) -> S:
        """The series labelled by ``istio_labels(*values)``."""
        series = self._by_values.get(values)
        if series is None:
            if len(self._by_values) >= MAX_CACHED_LABEL_SETS:
                self._by_values.clear()
            series = self._by_values[values] = self._make(self._stats, istio_labels(*values))
        return series


class Telemetry:
    """One worker's reporting of finished connections and requests; ``log_format`` is the
    access log's ("text", "json" or "off"). ``mesh`` (the workload, the cluster domain) is
    the worker's current one: a reload sets it."""

    def __init__(self, stats: Stats, sink: AccessLog, mesh: Mesh, log_format: str = "text") -> None:
        self.stats = stats
        self.sink = sink
        self.mesh = mesh
        self.log_format = log_format
        self.own_principal = "unknown"  # this workload's SPIFFE ID, once it has a certificate
        self.request_series = SeriesByLabels(stats, RequestSeries)
        self.tcp_series = SeriesByLabels(stats, TcpSeries)

    def principals(self, outbound: bool, peer: str | None) -> tuple[str, str, str]:
        """(source_principal, destination_principal, connection_security_policy) of a
        connection whose mesh mTLS peer (the upstream outbound, the client inbound) proved
        to be ``peer`` (None: plaintext)."""
        if peer is None:
            return (self.own_principal if outbound else "unknown", "unknown", "none")
        if outbound:
            return (self.own_principal, peer, "mutual_tls")
        return (peer, self.own_principal, "mutual_tls")

    # --- HTTP requests ----------------------------------------------------------------------

    def request_done(self, session: Session, exchange: Exchange) -> None:
        """Count and log one HTTP request."""
        mesh = self.mesh
        stats = self.stats
        listener = listener_labels(session.listener.name)
        stats.inc(DOWNSTREAM_RQ_TOTAL, listener)
        status = exchange.status
        if status:
            stats.inc(_STATUS_CLASS.get(status // 100, DOWNSTREAM_RQ_5XX), listener)
        flags = ",".join(exchange.flags) or Flag.NONE
        service = session.service
        assert service is not None  # an HTTP connection is always to a service
        workload = mesh.workload
        outbound = session.listener.direction == "outbound"
        peer = exchange.upstream_principal if outbound else session.peer_principal
        source, destination, policy = self.principals(outbound, peer)
        series = self.request_series.get(
            (
                outbound,
                workload.name,
                workload.namespace,
                session.service_fqdn,
                service.name,
                service.namespace,
                exchange.request_protocol,
                flags,
                str(status) if status else "0",
                exchange.grpc_status,
                source,
                destination,
                policy,
            )
        )
        series.requests.value += 1
        record(series.duration, series.duration_bounds, exchange.duration * 1000)
        record(series.request_bytes, series.request_bytes_bounds, exchange.request_bytes)
        record(series.response_bytes, series.response_bytes_bounds, exchange.response_bytes)
        if self.log_format != "off":
            self.sink.emit(self.request_line(session.peer, exchange, flags))

    def request_line(self, peer: tuple[str, int], exchange: Exchange, flags: str) -> str:
        """One line per request, in Envoy's default format (or its fields as JSON)."""
        request = exchange.request
        headers = request.headers
        present = dict(headers)  # most requests lack some of the logged fields: skip scans
        forwarded_for = _header_text(headers, present, b"x-forwarded-for")
        user_agent = _header_text(headers, present, b"user-agent")
        authority = log_text(exchange.authority)
        started = exchange.started
        start_time = f"{_log_time(int(started))}.{int(started * 1000) % 1000:03d}Z"
        method = request.method.decode("latin-1")
        path = request.target.decode("latin-1")
        protocol = _PROTOCOL_NAMES.get(request.version, "HTTP/1.0")
        duration = int(exchange.duration * 1000)
        request_id = log_text(exchange.request_id)
        upstream_host = host_port(exchange.upstream_host)
        downstream_remote = host_port(peer)
        cluster = exchange.cluster.name if exchange.cluster is not None else Flag.NONE
        route = exchange.route.name if exchange.route is not None else Flag.NONE
        if self.log_format == "json":
            return json.dumps(
                {
                    "start_time": start_time,
                    "method": method,
                    "path": path,
                    "protocol": protocol,
                    "response_code": exchange.status,
                    "response_flags": flags,
                    "bytes_received": exchange.request_bytes,
                    "bytes_sent": exchange.response_bytes,
                    "duration": duration,
                    "upstream_service_time": None,
                    "x_forwarded_for": forwarded_for,
                    "user_agent": user_agent,
                    "request_id": request_id,
                    "authority": authority,
                    "upstream_host": upstream_host,
                    "upstream_cluster": cluster,
                    "downstream_remote_address": downstream_remote,
                    "route_name": route,
                    "retries": exchange.retries,
                }
            )
        return (
            f'[{start_time}] "{method} {path} {protocol}" {exchange.status} {flags} '
            f"{exchange.request_bytes} {exchange.response_bytes} {duration} - "
            f'"{forwarded_for}" "{user_agent}" "{request_id}" "{authority}" "{upstream_host}" '
            f"{cluster} {downstream_remote} {route}"
        )

    # --- TCP connections --------------------------------------------------------------------

    def connection_done(self, session: Session) -> None:
        """Istio's TCP metrics (for a connection that reached an upstream) and the line."""
        if session.upstream is not None:
            self._tcp_metrics(session, self.mesh)
        if self.log_format != "off":
            self.sink.emit(self.connection_line(session))

    def _tcp_metrics(self, session: Session, mesh: Mesh) -> None:
        workload = mesh.workload
        if session.service is not None:
            service_name, service_ns = session.service.name, session.service.namespace
            service = session.service.fqdn(mesh.cluster_domain)
        else:
            service_name, service_ns = session.cluster_name, "unknown"
            destination = session.destination
            service = f"{destination[0]}:{destination[1]}" if destination else "unknown"
        outbound = session.listener.direction == "outbound"
        upstream = session.upstream
        peer = (
            (upstream.peer_principal if upstream is not None else None)
            if outbound
            else (session.peer_principal)
        )
        source, destination_principal, policy = self.principals(outbound, peer)
        series = self.tcp_series.get(
            (
                outbound,
                workload.name,
                workload.namespace,
                service,
                service_name,
                service_ns,
                "tcp",
                joined(session.flags),
                None,
                "",
                source,
                destination_principal,
                policy,
            )
        )
        series.opened.value += 1
        series.closed.value += 1
        series.received.value += session.downstream.received
        series.sent.value += session.upstream.received if session.upstream is not None else 0

    def connection_line(self, session: Session) -> str:
        duration_ms = int((time.time() - session.started) * 1000)
        start_time = _log_time(int(session.started))
        downstream_remote = host_port(session.peer)
        original = host_port(session.destination)
        upstream_host = host_port(session.upstream_address)
        flags = joined(session.flags)
        sent = session.upstream.received if session.upstream else 0
        if self.log_format == "json":
            return json.dumps(
                {
                    "start_time": start_time,
                    "direction": session.listener.direction,
                    "downstream_remote_address": downstream_remote,
                    "original_destination": original,
                    "upstream_cluster": session.cluster_name,
                    "upstream_host": upstream_host,
                    "response_flags": flags,
                    "bytes_received": session.downstream.received,
                    "bytes_sent": sent,
                    "duration": duration_ms,
                }
            )
        return (
            f'[{start_time}] "TCP {session.listener.direction}" {flags} '
            f"{session.downstream.received} {sent} {duration_ms} "
            f'"{downstream_remote}" "{original}" {session.cluster_name} {upstream_host}'
        )


def host_port(address: tuple[str, int] | None) -> str:
    """``1.2.3.4:80`` / ``[fd00::1]:80`` / ``-``, as Envoy's access log writes addresses."""
    if address is None:
        return Flag.NONE
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The bytes a header value may show in the log as they are (as an ``any_outside`` table):
# printable ASCII but the quote that delimits it and the backslash that escapes.
_LOG_VERBATIM: Final = outside_table(bytes(c for c in range(0x20, 0x7F) if c not in b'"\\'))


def log_text(value: bytes | None) -> str:
    """A header value for the access log: "-" when absent, control bytes escaped (a log line
    must stay one line whatever the client sends)."""
    if value is None:
        return "-"
    if not any_outside(value, _LOG_VERBATIM):  # the usual case: nothing to escape
        return value.decode("ascii")
    return value.decode("latin-1").encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _header_text(headers: Headers, present: dict[bytes, bytes], name: bytes) -> str:
    """``name``'s values for the log (all of them, comma-joined); ``present`` is
    ``dict(headers)``, so an absent field costs one lookup instead of a scan."""
    return log_text(header_value(headers, name)) if name in present else "-"


@functools.lru_cache(maxsize=4)
def _log_time(second: int) -> str:
    """The access log's start_time; connections of the same second share one strftime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
