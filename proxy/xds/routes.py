"""RDS: an Envoy virtual host's routes as Detour's HttpRoutes. Pure.

Detour picks the service by the connection's original destination first and routes within it,
so a virtual host must route to the clusters of one service port (istiod's route
configurations are built that way: one virtual host per service and port). A route to another
service is refused, as is every match or action Detour does not implement.

Defaults are Envoy's: a route without a retry policy is not retried, and a route timeout that
is not given is 15 s (0 turns it off).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2

from proxy.config.model import (
    RETRY_ON,
    Fault,
    HeaderOperations,
    HttpRoute,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    StringMatch,
)
from proxy.xds.clusters import ClusterName
from proxy.xds.resources import only_fields, refuse, seconds, unpack

ENVOY_ROUTE_TIMEOUT = 15.0
FAULT_FILTER = "envoy.filters.http.fault"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_FRACTION_DENOMINATORS = {
    percent_pb2.FractionalPercent.HUNDRED: 100,
    percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000,
    percent_pb2.FractionalPercent.MILLION: 1_000_000,
}


@dataclass(frozen=True)
class VirtualHostRoutes:
    """A virtual host as a service's routing table: the cluster it routes to (the first
    route's, without subset) and its routes."""

    target: ClusterName
    routes: tuple[HttpRoute, ...]
    ip_domains: tuple[str, ...]  # the domains that are addresses: the service's VIPs


ClusterLookup = Callable[[str, str], ClusterName]  # (cluster name, field) -> its parts


def translate_virtual_host(
    host: rc.VirtualHost, where: str, cluster_of: ClusterLookup
) -> VirtualHostRoutes | None:
    """The virtual host's routes, or None for one that routes only to PassthroughCluster
    (istiod's ``allow_any``: Detour's ALLOW_ANY does that already)."""
    only_fields(host, where, ("name", "domains", "routes"))
    routes: list[HttpRoute] = []
    target: ClusterName | None = None
    for index, route in enumerate(host.routes):
        route_where = f"{where}.routes[{index}]"
        translated, clusters = _route(route, route_where, index, cluster_of)
        if translated is None:
            continue
        for cluster, field in clusters:
            if target is None:
                target = cluster
            elif (cluster.host, cluster.port) != (target.host, target.port):
                raise refuse(
                    field,
                    f"outbound|{cluster.port}|{cluster.subset}|{cluster.host}",
                    f"a virtual host routes to one service port; this one already routes to "
                    f"{target.host}:{target.port}",
                )
        routes.append(translated)
    if target is None:
        return None
    ip_domains = tuple(domain for domain in host.domains if _is_address(domain))
    return VirtualHostRoutes(target, tuple(routes), ip_domains)


def _is_address(domain: str) -> bool:
    import ipaddress

    bare = domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain
    bare = bare.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return False
    return True


def _route(
    route: rc.Route, where: str, index: int, cluster_of: ClusterLookup
) -> tuple[HttpRoute | None, list[tuple[ClusterName, str]]]:
    only_fields(
        route,
        where,
        (
            "name",
            "match",
            "route",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ),
        ("metadata", "decorator"),
    )
    if not route.HasField("route"):
        raise refuse(where, route.WhichOneof("action"), "Detour routes to clusters only")
    action = route.route
    destinations, clusters = _destinations(action, f"{where}.route", cluster_of)
    if not destinations:
        return None, []
    timeout, retries = _action(action, f"{where}.route")
    return (
        HttpRoute(
            name=route.name or f"route-{index}",
            matches=(_match(route.match, f"{where}.match"),),
            destinations=destinations,
            timeout=timeout,
            retries=retries,
            request_headers=_header_operations(
                route.request_headers_to_add, route.request_headers_to_remove, where, "request"
            ),
            response_headers=_header_operations(
                route.response_headers_to_add, route.response_headers_to_remove, where, "response"
            ),
            fault=_fault(route, where),
        ),
        clusters,
    )


# --- matches -------------------------------------------------------------------------------


def _match(match: rc.RouteMatch, where: str) -> RouteMatch:
    only_fields(match, where, ("prefix", "path", "safe_regex", "headers", "case_sensitive"))
    if match.HasField("case_sensitive") and not match.case_sensitive.value:
        raise refuse(f"{where}.case_sensitive", False, "Detour matches paths case-sensitively")
    kind = match.WhichOneof("path_specifier")
    uri: StringMatch | None
    if kind == "prefix":
        uri = StringMatch("prefix", match.prefix) if match.prefix not in ("", "/") else None
    elif kind == "path":
        uri = StringMatch("exact", match.path)
    elif kind == "safe_regex":
        only_fields(match.safe_regex, f"{where}.safe_regex", ("regex", "google_re2"))
        uri = StringMatch("regex", _re2(match.safe_regex.regex, f"{where}.safe_regex.regex"))
    else:
        raise refuse(where, kind, "a route needs prefix, path or safe_regex")
    method = authority = None
    headers: list[tuple[str, StringMatch]] = []
    for index, header in enumerate(match.headers):
        name, matcher = _header_match(header, f"{where}.headers[{index}]")
        if name == ":method":
            method = matcher
        elif name == ":authority":
            authority = matcher
        elif name.startswith(":"):
            raise refuse(f"{where}.headers[{index}].name", name, "pseudo-header not supported")
        else:
            headers.append((name, matcher))
    return RouteMatch(uri=uri, method=method, authority=authority, headers=tuple(headers))


# What Python's re takes and RE2 (Envoy's engine) refuses: lookaround and backreferences. A
# pattern Envoy would NACK is refused here too, rather than run with another meaning.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


def _re2(pattern: str, where: str) -> str:
    """The pattern, once it compiles (as text and as UTF-8 bytes, which the router matches)
    and uses nothing RE2 lacks."""
    try:
        re.compile(pattern)
        re.compile(pattern.encode())
    except re.error as err:
        raise refuse(where, pattern, f"not a valid regular expression: {err}") from None
    if _NOT_RE2.search(pattern):
        raise refuse(where, pattern, "lookaround and backreferences are not RE2 (Envoy's syntax)")
    return pattern


def _header_match(header: rc.HeaderMatcher, where: str) -> tuple[str, StringMatch]:
    only_fields(
        header, where, ("name", "exact_match", "safe_regex_match", "prefix_match", "string_match")
    )
    name = header.name.lower()
    kind = header.WhichOneof("header_match_specifier")
    if kind == "exact_match":
        return name, StringMatch("exact", header.exact_match)
    if kind == "prefix_match":
        return name, StringMatch("prefix", header.prefix_match)
    if kind == "safe_regex_match":
        regex = _re2(header.safe_regex_match.regex, f"{where}.safe_regex_match.regex")
        return name, StringMatch("regex", regex)
    if kind == "string_match":
        matcher = header.string_match
        only_fields(matcher, f"{where}.string_match", ("exact", "prefix", "safe_regex"))
        pattern = matcher.WhichOneof("match_pattern")
        if pattern == "exact":
            return name, StringMatch("exact", matcher.exact)
        if pattern == "prefix":
            return name, StringMatch("prefix", matcher.prefix)
        if pattern == "safe_regex":
            regex = _re2(matcher.safe_regex.regex, f"{where}.string_match.safe_regex.regex")
            return name, StringMatch("regex", regex)
    raise refuse(where, kind, "supported: exact, prefix and regex header matches")


# --- actions -------------------------------------------------------------------------------


def _destinations(
    action: rc.RouteAction, where: str, cluster_of: ClusterLookup
) -> tuple[tuple[RouteDestination, ...], list[tuple[ClusterName, str]]]:
    """The route's shares, and the clusters they name (with the field of each). A route to
    PassthroughCluster alone has no destination in Detour's model."""
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        if action.cluster == "PassthroughCluster":
            return (), []
        target = cluster_of(action.cluster, f"{where}.cluster")
        return (RouteDestination(target.subset or None, 100),), [(target, f"{where}.cluster")]
    if kind != "weighted_clusters":
        raise refuse(where, kind, "a route needs cluster or weighted_clusters")
    weighted = action.weighted_clusters
    only_fields(weighted, f"{where}.weighted_clusters", ("clusters", "total_weight"))
    destinations: list[RouteDestination] = []
    clusters: list[tuple[ClusterName, str]] = []
    for index, entry in enumerate(weighted.clusters):
        field = f"{where}.weighted_clusters.clusters[{index}]"
        only_fields(entry, field, ("name", "weight"))
        target = cluster_of(entry.name, f"{field}.name")
        clusters.append((target, f"{field}.name"))
        destinations.append(RouteDestination(target.subset or None, entry.weight.value))
    total = sum(d.weight for d in destinations)
    if total != 100:
        raise refuse(f"{where}.weighted_clusters", total, "Detour needs weights adding up to 100")
    return tuple(destinations), clusters


def _action(action: rc.RouteAction, where: str) -> tuple[float | None, RetryPolicy]:
    only_fields(action, where, ("cluster", "weighted_clusters", "timeout", "retry_policy"))
    timeout: float | None = ENVOY_ROUTE_TIMEOUT
    if action.HasField("timeout"):
        timeout = seconds(action.timeout) or None  # 0: no timeout
    if not action.HasField("retry_policy"):
        return timeout, RetryPolicy(attempts=0)
    return timeout, _retry_policy(action.retry_policy, f"{where}.retry_policy")


def _retry_policy(policy: rc.RetryPolicy, where: str) -> RetryPolicy:
    only_fields(
        policy,
        where,
        (
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_back_off",
            "retry_host_predicate",
        ),
        ("host_selection_retry_max_attempts",),
    )
    # Detour never retries on a host already tried while another exists: previous_hosts is
    # its own behaviour; no other predicate is.
    for index, predicate in enumerate(policy.retry_host_predicate):
        if predicate.name != PREVIOUS_HOSTS:
            raise refuse(
                f"{where}.retry_host_predicate[{index}].name",
                predicate.name,
                f"only {PREVIOUS_HOSTS}",
            )
    conditions = tuple(part.strip() for part in policy.retry_on.split(",") if part.strip())
    for condition in conditions:
        if condition not in RETRY_ON:
            raise refuse(f"{where}.retry_on", condition, f"supported: {', '.join(RETRY_ON)}")
    base, ceiling = 0.025, 0.25
    if policy.HasField("retry_back_off"):
        back_off = policy.retry_back_off
        only_fields(back_off, f"{where}.retry_back_off", ("base_interval", "max_interval"))
        base = seconds(back_off.base_interval) or base
        ceiling = seconds(back_off.max_interval) if back_off.HasField("max_interval") else base * 10
    return RetryPolicy(
        attempts=policy.num_retries.value if policy.HasField("num_retries") else 1,
        per_try_timeout=seconds(policy.per_try_timeout) or None,
        retry_on=conditions,
        retriable_status_codes=tuple(policy.retriable_status_codes),
        backoff_base=base,
        backoff_max=ceiling,
    )


def _header_operations(
    adds: Iterable[Any], removes: Iterable[str], where: str, side: str
) -> HeaderOperations:
    """Envoy's HeaderValueOption: APPEND_IF_EXISTS_OR_ADD (the default) appends, and
    OVERWRITE_IF_EXISTS_OR_ADD (or ``append: false``) replaces."""
    set_: list[tuple[str, str]] = []
    add: list[tuple[str, str]] = []
    for index, option in enumerate(adds):
        field = f"{where}.{side}_headers_to_add[{index}]"
        only_fields(option, field, ("header", "append", "append_action"))
        only_fields(option.header, f"{field}.header", ("key", "value"))
        overwrite = (option.HasField("append") and not option.append.value) or (
            option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        )
        if option.append_action not in (
            base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
            base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        ):
            shown = base_pb2.HeaderValueOption.HeaderAppendAction.Name(option.append_action)
            raise refuse(f"{field}.append_action", shown, "not supported")
        pair = (option.header.key.lower(), option.header.value)
        (set_ if overwrite else add).append(pair)
    return HeaderOperations(
        set=tuple(set_), add=tuple(add), remove=tuple(name.lower() for name in removes)
    )


def _fault(route: rc.Route, where: str) -> Fault | None:
    """Istio's fault injection: the fault filter's per-route config."""
    configs = route.typed_per_filter_config
    for key in configs:
        if key != FAULT_FILTER:
            raise refuse(f"{where}.typed_per_filter_config[{key}]", "<set>", "not supported")
    if FAULT_FILTER not in configs:
        return None
    field = f"{where}.typed_per_filter_config[{FAULT_FILTER}]"
    fault = unpack(configs[FAULT_FILTER], fault_pb2.HTTPFault, field)
    only_fields(fault, field, ("delay", "abort"))
    delay_percent = delay = abort_percent = 0.0
    abort_status = 503
    if fault.HasField("delay"):
        only_fields(fault.delay, f"{field}.delay", ("fixed_delay", "percentage"))
        delay = seconds(fault.delay.fixed_delay)
        delay_percent = _percent(fault.delay.percentage)
    if fault.HasField("abort"):
        only_fields(fault.abort, f"{field}.abort", ("http_status", "percentage"))
        if not 200 <= fault.abort.http_status < 600:
            raise refuse(f"{field}.abort.http_status", fault.abort.http_status, "200 to 599")
        abort_status = fault.abort.http_status
        abort_percent = _percent(fault.abort.percentage)
    return Fault(delay_percent, delay, abort_percent, abort_status)


def _percent(fraction: percent_pb2.FractionalPercent) -> float:
    return float(fraction.numerator * 100 / _FRACTION_DENOMINATORS[fraction.denominator])
