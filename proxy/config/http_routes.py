"""A service's HTTP routes (its ``http`` list): matching, destinations, retries, header
rewrites and fault injection, parsed into :class:`~proxy.config.model.HttpRoute`.

The routes use Istio's VirtualService vocabulary in snake_case (``match``, ``route``,
``retries``, ``headers``, ``fault``), and a route may only name subsets of its own service:
the loader parses the service's ports and subsets first and hands them to :func:`routes`.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config import parsing as p
from proxy.config.model import (
    RETRY_ON,
    STRING_MATCH_KINDS,
    Fault,
    HeaderOperations,
    HttpRoute,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    ServicePort,
    StringMatch,
    Subset,
)

# --- HTTP routes: matching ---------------------------------------------------------------------

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every ASCII control character but tab


def _text(node: object, path: str) -> str:
    """A string that YAML might have turned into a bool or number (``yes``, ``1.0``) unquoted."""
    if not isinstance(node, str):
        p.refuse(path, node, "expected a string (quote it)")
    return node


def _regex(text: str, path: str) -> str:
    """Compiled here only to refuse a bad pattern. The router compiles its UTF-8 bytes (it
    matches raw header bytes), where ``\\u00e9`` or ``(?u)`` fail, so both forms must compile."""
    try:
        re.compile(text)
        re.compile(text.encode())
    except re.error as exc:
        p.refuse(path, text, f"not a valid regular expression: {exc}")
    return text


def _string_match(node: object, path: str) -> StringMatch:
    """Istio's StringMatch: a mapping with exactly one of exact, prefix or regex."""
    kinds = ", ".join(STRING_MATCH_KINDS)
    if not isinstance(node, dict):
        p.refuse(path, node, f"expected a mapping with one of: {kinds} (e.g. {{prefix: /api}})")
    entry = p.mapping(node, path, STRING_MATCH_KINDS)
    if len(entry) != 1:
        p.refuse(path, node, f"expected exactly one of: {kinds}")
    ((kind, value),) = entry.items()
    text = _text(value, p.at(path, kind))
    return StringMatch(kind, _regex(text, p.at(path, kind)) if kind == "regex" else text)


def _header_name(node: object, path: str) -> str:
    """Field names are tokens, compared case-insensitively: the model keeps them lowercase."""
    if not isinstance(node, str) or not _TOKEN.fullmatch(node):
        p.refuse(path, node, "not a header name (an HTTP token: letters, digits, !#$%&'*+-.^_`|~)")
    return node.lower()


def _claim_header(name: str, node: object, path: str, seen: dict[str, str]) -> None:
    """``X-A`` and ``x-a`` are one header: naming it twice in one place is a contradiction."""
    if name in seen:
        p.refuse(path, node, f"header {name!r} given twice (also {seen[name]})")
    seen[name] = path


def _header_map(node: object, path: str, what: str) -> dict:
    if node is not None and not isinstance(node, dict):
        p.refuse(path, node, f"expected a mapping of header names to {what}")
    return node or {}


def _header_matches(node: object, path: str) -> tuple[tuple[str, StringMatch], ...]:
    seen: dict[str, str] = {}
    pairs: list[tuple[str, StringMatch]] = []
    for key, value in _header_map(node, path, "matches").items():
        name = _header_name(key, p.at(path, key))
        _claim_header(name, key, p.at(path, key), seen)
        pairs.append((name, _string_match(value, p.at(path, key))))
    return tuple(pairs)


_MATCH_FIELDS: dict[str, p.Parser] = {
    "uri": _string_match,
    "method": _string_match,
    "authority": _string_match,
    "headers": _header_matches,
}


def _matches(node: object, path: str) -> tuple[RouteMatch, ...]:
    """The list is OR'ed, each item's conditions AND'ed; no list matches every request."""
    matches: list[RouteMatch] = []
    for index, entry in enumerate(p.list_of(node, path)):
        where = p.item(path, index)
        p.entry(entry, where, _MATCH_FIELDS)
        matches.append(RouteMatch(**p.fields(entry, where, _MATCH_FIELDS)))
    return tuple(matches)


# --- HTTP routes: destinations -----------------------------------------------------------------

_DESTINATION_KEYS = ("subset", "weight")


def _destinations(
    node: object, path: str, subsets: tuple[str, ...]
) -> tuple[RouteDestination, ...]:
    """No list sends everything to all endpoints; several destinations split it by weight."""
    entries = p.list_of(node, path)
    if not entries:
        return (RouteDestination(),)
    destinations: list[RouteDestination] = []
    for index, entry in enumerate(entries):
        where = p.item(path, index)
        destination = _destination(entry, where, subsets, shared=len(entries) > 1)
        earlier = [d.subset for d in destinations]
        p.unique(destination.subset, earlier, p.at(where, "subset"), path, "destination")
        destinations.append(destination)
    total = sum(d.weight for d in destinations)
    if total != 100:
        p.refuse(path, [d.weight for d in destinations], f"weights add up to {total}, not 100")
    return tuple(destinations)


def _destination(
    node: object, where: str, subsets: tuple[str, ...], shared: bool
) -> RouteDestination:
    entry = p.entry(node, where, _DESTINATION_KEYS)
    subset = _subset_name(entry.get("subset"), p.at(where, "subset"), subsets)
    return RouteDestination(subset, _weight(entry, where, shared))


def _subset_name(node: object, path: str, subsets: tuple[str, ...]) -> str | None:
    """A subset of this service (None: all its endpoints)."""
    if node is None:
        return None
    if node not in subsets:
        known = ", ".join(subsets) if subsets else "it defines none"
        p.refuse(path, node, f"not a subset of this service ({known})")
    return node


def _weight(entry: dict, where: str, shared: bool) -> int:
    """A weight is a percentage of the route's traffic: required only when it is shared."""
    if "weight" not in entry:
        if shared:
            p.refuse(p.at(where, "weight"), None, "required when a route has several destinations")
        return 100
    weight = p.integer(entry["weight"], p.at(where, "weight"), 0, 100)
    if not shared and weight != 100:
        reason = "a single destination takes all the traffic: leave its weight out or make it 100"
        p.refuse(p.at(where, "weight"), weight, reason)
    return weight


# --- HTTP routes: retries ----------------------------------------------------------------------

MAX_RETRIES = 10
_RETRIABLE_STATUS_CODES = "retriable-status-codes"


def _retry_on(node: object, path: str) -> tuple[str, ...]:
    """Istio's comma-separated string (``5xx,connect-failure``) or a YAML list of conditions."""
    if isinstance(node, str):
        found = [(part.strip(), path, node) for part in node.split(",")]
    elif isinstance(node, list):
        found = [(item, p.item(path, index), item) for index, item in enumerate(node)]
    else:
        p.refuse(path, node, "expected a comma-separated string or a list of conditions")
    conditions: list[str] = []
    for condition, where, value in found:
        if condition not in RETRY_ON:
            p.refuse(where, value, _unknown_condition(condition))
        if condition in conditions:
            p.refuse(where, value, f"condition {condition!r} given twice")
        conditions.append(condition)
    if not conditions:
        p.refuse(path, node, f"expected at least one condition ({', '.join(RETRY_ON)})")
    return tuple(conditions)


def _unknown_condition(condition: object) -> str:
    """Istio accepts status codes in retryOn; here they have their own key, so say where."""
    known = f"expected one of: {', '.join(RETRY_ON)}"
    if condition == "":
        return f"an empty condition (a stray comma?); {known}"
    if str(condition).isdigit():
        return f"status codes go in retriable_status_codes; {known}"
    return f"unknown retry condition {condition!r}; {known}"


def _status_codes(node: object, path: str) -> tuple[int, ...]:
    codes: list[int] = []
    for index, entry in enumerate(p.list_of(node, path)):
        code = p.integer(entry, p.item(path, index), 100, 599)
        p.unique(code, codes, p.item(path, index), path, "status code")
        codes.append(code)
    return tuple(codes)


_RETRY_FIELDS: dict[str, p.Parser] = {
    "attempts": p.ranged(0, MAX_RETRIES),  # 0 disables retries
    "per_try_timeout": p.duration,
    "retry_on": _retry_on,
    "retriable_status_codes": _status_codes,
    "backoff_base": p.duration,
    "backoff_max": p.duration,
}


def _retries(node: object, path: str) -> RetryPolicy:
    """Absent or null: the model's defaults (``attempts: 0`` is how retries are turned off)."""
    raw = p.mapping(node, path, _RETRY_FIELDS)
    policy = RetryPolicy(**p.fields(raw, path, _RETRY_FIELDS))
    _check_backoff(policy, raw, path)
    if "retriable_status_codes" in raw and _RETRIABLE_STATUS_CODES not in policy.retry_on:
        reason = f"used only when retry_on includes {_RETRIABLE_STATUS_CODES}"
        p.refuse(p.at(path, "retriable_status_codes"), raw["retriable_status_codes"], reason)
    return policy


def _check_backoff(policy: RetryPolicy, raw: dict, path: str) -> None:
    """The cap must not be below the base; blame the key the operator wrote."""
    if policy.backoff_max >= policy.backoff_base:
        return
    if "backoff_max" in raw:
        reason = f"must be at least backoff_base ({policy.backoff_base:g}s)"
        p.refuse(p.at(path, "backoff_max"), raw["backoff_max"], reason)
    reason = f"must be at most backoff_max ({policy.backoff_max:g}s, its default)"
    p.refuse(p.at(path, "backoff_base"), raw["backoff_base"], reason)


# --- HTTP routes: headers and faults -----------------------------------------------------------

# Hop-by-hop headers (RFC 9110 section 7.6.1) and framing: the proxy owns them per connection,
# and rewriting them would desynchronise the message framing between the two sides.
_PROTECTED_HEADERS = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
)
_HEADER_RULE_KEYS = ("request", "response")
_HEADER_OPERATION_KEYS = ("set", "add", "remove")


def _operated_header(node: object, path: str, seen: dict[str, str]) -> str:
    name = _header_name(node, path)
    if name in _PROTECTED_HEADERS:
        protected = ", ".join(_PROTECTED_HEADERS)
        p.refuse(path, node, f"the proxy manages this header itself (it owns: {protected})")
    _claim_header(name, node, path, seen)
    return name


def _header_value(node: object, path: str) -> str:
    """CR, LF or NUL would end or split the header (request smuggling); RFC 9110 section 5.5
    makes every other control character but tab invalid in a field value too."""
    text = _text(node, path)
    if _CONTROL.search(text):
        p.refuse(
            path, node, "a header value cannot contain CR, LF, NUL or other control characters"
        )
    return text


def _header_values(node: object, path: str, seen: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_operated_header(key, p.at(path, key), seen), _header_value(value, p.at(path, key)))
        for key, value in _header_map(node, path, "values").items()
    )


def _header_removals(node: object, path: str, seen: dict[str, str]) -> tuple[str, ...]:
    entries = p.list_of(node, path)
    return tuple(_operated_header(name, p.item(path, i), seen) for i, name in enumerate(entries))


def _header_operations(node: object, path: str) -> HeaderOperations:
    """One header in two of set/add/remove would leave the outcome to the order applied."""
    entry = p.mapping(node, path, _HEADER_OPERATION_KEYS)
    seen: dict[str, str] = {}
    return HeaderOperations(
        set=_header_values(entry.get("set"), p.at(path, "set"), seen),
        add=_header_values(entry.get("add"), p.at(path, "add"), seen),
        remove=_header_removals(entry.get("remove"), p.at(path, "remove"), seen),
    )


def _header_rules(node: object, path: str) -> dict[str, HeaderOperations]:
    """``headers: {request: ..., response: ...}`` as HttpRoute's keyword arguments."""
    entry = p.mapping(node, path, _HEADER_RULE_KEYS)
    return {
        "request_headers": _header_operations(entry.get("request"), p.at(path, "request")),
        "response_headers": _header_operations(entry.get("response"), p.at(path, "response")),
    }


# fault key -> {YAML key: (Fault field, parser)}; every key of a part is required.
_FAULT_PARTS: dict[str, dict[str, tuple[str, p.Parser]]] = {
    "delay": {"percentage": ("delay_percent", p.percentage), "fixed_delay": ("delay", p.duration)},
    "abort": {
        "percentage": ("abort_percent", p.percentage),
        "http_status": ("abort_status", p.ranged(200, 599)),
    },
}


def _fault(node: object, path: str) -> Fault | None:
    """Chaos testing: absent or null injects nothing."""
    if node is None:
        return None
    entry = p.mapping(node, path, _FAULT_PARTS)
    fields: dict[str, Any] = {}
    for key, table in _FAULT_PARTS.items():
        if entry.get(key) is not None:
            fields |= _fault_part(entry[key], p.at(path, key), table)
    return Fault(**fields)


def _fault_part(node: object, where: str, table: dict[str, tuple[str, p.Parser]]) -> dict[str, Any]:
    """A delay or abort without its percentage or its effect would be a silent no-op."""
    entry = p.entry(node, where, tuple(table))
    return {
        name: parse(p.required(entry, key, where), p.at(where, key))
        for key, (name, parse) in table.items()
    }


# --- HTTP routes -------------------------------------------------------------------------------

_ROUTE_KEYS = ("name", "match", "route", "timeout", "retries", "headers", "fault")
_HTTP_PROTOCOLS = ("http", "http2", "grpc", "auto")


def routes(
    node: object, path: str, ports: tuple[ServicePort, ...], subsets: tuple[Subset, ...]
) -> tuple[HttpRoute, ...]:
    """File order is kept (the first match wins); names tell routes apart, so are unique."""
    entries = p.list_of(node, path)
    if entries and not any(port.protocol in _HTTP_PROTOCOLS for port in ports):
        declared = ", ".join(f"{port.name} ({port.protocol})" for port in ports)
        reason = (
            f"HTTP routes need a port with protocol http, http2, grpc or auto; "
            f"this service has {declared}"
        )
        p.refuse(path, node, reason)
    names = tuple(s.name for s in subsets)
    parsed: list[HttpRoute] = []
    for index, entry in enumerate(entries):
        where = p.item(path, index)
        route = _http_route(entry, where, index, names)
        p.unique(route.name, [r.name for r in parsed], p.at(where, "name"), path, "route name")
        parsed.append(route)
    return tuple(parsed)


def _http_route(node: object, where: str, index: int, subsets: tuple[str, ...]) -> HttpRoute:
    entry = p.entry(node, where, _ROUTE_KEYS)
    timeout = entry.get("timeout")
    return HttpRoute(
        name=p.dns_label(entry.get("name", f"route-{index}"), p.at(where, "name")),
        matches=_matches(entry.get("match"), p.at(where, "match")),
        destinations=_destinations(entry.get("route"), p.at(where, "route"), subsets),
        timeout=None if timeout is None else p.duration(timeout, p.at(where, "timeout")),
        retries=_retries(entry.get("retries"), p.at(where, "retries")),
        **_header_rules(entry.get("headers"), p.at(where, "headers")),
        fault=_fault(entry.get("fault"), p.at(where, "fault")),
    )
