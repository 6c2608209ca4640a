"""The mesh file: YAML text in, a validated frozen :class:`~proxy.config.model.Mesh` out.

The data path trusts the model completely, so every check happens here, once, before the
sidecar serves anything. A bad document is refused whole at its first error (nothing partial
is ever returned), with a message naming the file, the place in the document
(``services[1].ports[0].port``), the value found there and what is wrong with it, in the same
spirit as ``init/config.py``'s ``ConfigError``. Unknown keys are errors too: a typo such as
``conect_timeout`` would otherwise silently fall back to a default.

HTTP routing (``subsets``, ``http`` routes) uses Istio's DestinationRule / VirtualService
vocabulary in snake_case, and a route may only name subsets of its own service.

One module for the whole schema (over the project's ~400 lines): each section is a table of
field parsers next to the small functions it needs, and the tables refer to one another
(a service holds ports, subsets, routes, a policy), so the document reads top to bottom.

Durations are a number of seconds or a string with a unit (``250ms``, ``1.5s``, ``2m``,
``1h``). Every duration must be greater than zero and at most one day: anything longer is far
more likely a unit mistake than a wish, and a zero timeout would fail every connection.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn, get_args

from proxy.config.model import (
    LB_POLICIES,
    PROTOCOLS,
    RETRY_ON,
    STRING_MATCH_KINDS,
    CircuitBreaker,
    Endpoint,
    Fault,
    HeaderOperations,
    HealthCheck,
    HttpRoute,
    IPAddress,
    LoadBalancer,
    Mesh,
    OutboundPolicy,
    OutlierDetection,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    Service,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    Workload,
)
from proxy.config.vips import VipRangeExhaustedError, allocate_vips

if TYPE_CHECKING:
    import yaml

DOCUMENT = "<document>"  # the path of errors about the file as a whole
MAX_DURATION = 86400.0  # one day, in seconds
MAX_COUNT = 2**32 - 1  # Envoy keeps thresholds and counters in uint32
MAX_WEIGHT = 1_000_000
MAX_CONNECT_ATTEMPTS = 10
MAX_RING_SIZE = 8 * 1024 * 1024  # Envoy's default maximum_ring_size
MAX_CHOICE_COUNT = 100

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_OUTBOUND_POLICIES: tuple[str, ...] = get_args(OutboundPolicy)

Parser = Callable[[Any, str], Any]


class MeshConfigError(ValueError):
    """The mesh file is unusable; ``path`` says where in the document and ``value`` what."""

    def __init__(self, source: str, path: str, value: object, reason: str) -> None:
        self.source = source
        self.path = path
        self.value = value
        self.reason = reason
        super().__init__(f"{source}: {path} = {value!r}: {reason}")


class _Refused(Exception):
    """Raised deep in the parse without knowing the source; :func:`parse_mesh` adds it."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        super().__init__(path, value, reason)
        self.path = path
        self.value = value
        self.reason = reason


def _refuse(path: str, value: object, reason: str) -> NoReturn:
    raise _Refused(path, value, reason)


# --- entry points ------------------------------------------------------------------------------


def load_mesh(path: str | os.PathLike[str]) -> Mesh:
    """Read and parse the mesh file at ``path``; its name becomes ``Mesh.source``.

    An unreadable file is reported as a :class:`MeshConfigError` too, so the CLI has a single
    error type to print.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise MeshConfigError(source, DOCUMENT, source, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise MeshConfigError(source, DOCUMENT, source, f"not UTF-8 text: {exc}") from exc
    return parse_mesh(text, source)


def parse_mesh(text: str, source: str) -> Mesh:
    """Parse mesh YAML ``text``; ``source`` names it in errors and in ``Mesh.source``.

    Pure: no I/O, no state. Raises :class:`MeshConfigError` for the first problem found.
    """
    try:
        return _mesh(_load_yaml(text), source)
    except _Refused as refused:
        raise MeshConfigError(source, refused.path, refused.value, refused.reason) from None


def _load_yaml(text: str) -> object:
    """safe_load only: a mesh file must never be able to build arbitrary Python objects.

    PyYAML is imported here, by the first mesh file: a sidecar started without one (L4
    passthrough) never loads it (~1 MiB resident)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, reason = _yaml_problem(exc, text)
        lines = text.splitlines()
        snippet = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        _refuse(DOCUMENT, snippet, reason)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """The 1-based line of a YAML error (0 if unknown) and a reason that names it."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        line, column = exc.problem_mark.line + 1, exc.problem_mark.column + 1
        problem = "; ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
        return line, f"invalid YAML at line {line}, column {column}: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return line, f"invalid YAML at line {line}: {exc.reason}"
    return 0, f"invalid YAML: {exc}"


# --- path and scalar helpers --------------------------------------------------------------------


def _at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _mapping(node: object, path: str, allowed: Mapping[str, object] | tuple[str, ...]) -> dict:
    """A mapping with only ``allowed`` keys; null means empty (an emptied section)."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        _refuse(path or DOCUMENT, node, "expected a mapping")
    for key, value in node.items():
        if key not in allowed:
            _refuse(_at(path, key), value, _unknown_key_reason(key, tuple(allowed)))
    return node


def _unknown_key_reason(key: object, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key (expected one of: {', '.join(allowed)}){hint}"


def _entry(node: object, where: str, allowed: tuple[str, ...]) -> dict:
    """A list item that must be a mapping (null is not an empty item, it is a mistake)."""
    if not isinstance(node, dict):
        _refuse(where, node, "expected a mapping")
    return _mapping(node, where, allowed)


def _required(entry: dict, key: str, where: str) -> object:
    if key not in entry:
        _refuse(_at(where, key), None, "required")
    return entry[key]


def _list(node: object, path: str) -> list:
    """A list; null means empty (an emptied section)."""
    if node is None:
        return []
    if not isinstance(node, list):
        _refuse(path, node, "expected a list")
    return node


def _unique(value: object, earlier: list[Any], path: str, list_path: str, what: str) -> None:
    """Refuse ``value`` when an earlier item of the list at ``list_path`` already has it."""
    if value in earlier:
        _refuse(path, value, f"duplicate {what} (also {_item(list_path, earlier.index(value))})")


def _string(node: object, path: str) -> str:
    if not isinstance(node, str):
        _refuse(path, node, "expected a string")
    return node


def _dns_label(node: object, path: str) -> str:
    """Names become DNS labels (``name.namespace.svc.<domain>``), so they follow RFC 1123."""
    text = _string(node, path)
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        _refuse(path, node, "not a DNS label (lowercase a-z, 0-9 and '-', 1-63 chars)")
    return text


def _dns_name(node: object, path: str) -> str:
    text = _string(node, path)
    labels = text.split(".")
    if len(text) > 253 or not all(len(x) <= 63 and _DNS_LABEL.fullmatch(x) for x in labels):
        _refuse(path, node, "not a DNS name (dot-separated lowercase labels, at most 253 chars)")
    return text


def _integer(node: object, path: str, low: int, high: int) -> int:
    """An integer in ``[low, high]``; YAML booleans are ints in Python but never accepted."""
    if isinstance(node, bool) or not isinstance(node, int):
        _refuse(path, node, f"expected an integer ({low}-{high})")
    if not low <= node <= high:
        _refuse(path, node, f"out of range ({low}-{high})")
    return node


def _ranged(low: int, high: int) -> Parser:
    return lambda node, path: _integer(node, path, low, high)


_port = _ranged(1, 65535)
_count = _ranged(1, MAX_COUNT)


def _duration(node: object, path: str) -> float:
    """Seconds as a number, or a string with a unit; > 0 and <= one day."""
    seconds = _duration_seconds(node, path)
    if math.isnan(seconds) or seconds <= 0:
        _refuse(path, node, "a duration must be greater than zero")
    if seconds > MAX_DURATION:
        _refuse(path, node, f"a duration must be at most one day ({MAX_DURATION:g}s)")
    return seconds


def _duration_seconds(node: object, path: str) -> float:
    if isinstance(node, float):
        return node
    if isinstance(node, int) and not isinstance(node, bool):
        # YAML integers are unbounded; float() of a huge one would overflow.
        return float(node) if abs(node) <= 2**53 else (math.inf if node > 0 else -math.inf)
    match = _DURATION.fullmatch(node.strip()) if isinstance(node, str) else None
    if match is None:
        _refuse(path, node, "expected seconds as a number, or a duration like 250ms, 1.5s, 2m, 1h")
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]


def _percentage(node: object, path: str) -> float:
    """A share in percent, 0-100, as a number (``10`` or ``0.5``, not ``"10%"``)."""
    if isinstance(node, bool) or not isinstance(node, int | float):
        _refuse(path, node, "expected a number (0-100)")
    if not 0 <= node <= 100:  # also refuses NaN
        _refuse(path, node, "out of range (0-100)")
    return float(node)


def _choice(allowed: tuple[str, ...]) -> Parser:
    def parse(node: object, path: str) -> str:
        if node not in allowed:
            _refuse(path, node, f"expected one of: {', '.join(allowed)}")
        return node

    return parse


def _ip(node: object, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(_string(node, path).strip())
    except ValueError:
        _refuse(path, node, "not an IPv4 or IPv6 address")


def _fields(node: object, path: str, table: Mapping[str, Parser]) -> dict[str, Any]:
    """Parse a flat section through its table; absent keys are left to the model's defaults."""
    mapping = _mapping(node, path, table)
    return {key: table[key](value, _at(path, key)) for key, value in mapping.items()}


# --- the document ------------------------------------------------------------------------------


def _mesh(document: object, source: str) -> Mesh:
    top = _mapping(document, "", ("mesh", "workload", "services"))
    settings = _fields(top.get("mesh"), "mesh", _MESH_FIELDS)
    fields = _fields(top.get("workload"), "workload", _WORKLOAD_FIELDS)
    declared = fields.pop("inbound_ports", ())
    workload = Workload(
        **fields,
        inbound_ports=tuple(port for port, _ in declared),
        inbound_protocols=tuple(entry for entry in declared if entry[1] != "tcp"),
    )
    services = _services(top.get("services"), "services")
    return Mesh(services=services, workload=workload, source=source, **settings)


_INBOUND_PROTOCOLS = ("tcp", "http", "auto")


def _inbound_ports(node: object, path: str) -> tuple[tuple[int, str], ...]:
    """A port number (TCP), or ``{port: N, protocol: http|auto|tcp}`` for the sidecar to serve
    it with the HTTP router: destination-side request metrics and access log."""
    ports: list[int] = []
    declared: list[tuple[int, str]] = []
    for index, entry in enumerate(_list(node, path)):
        where = _item(path, index)
        protocol = "tcp"
        if isinstance(entry, dict):
            fields = _entry(entry, where, ("port", "protocol"))
            port = _port(_required(fields, "port", where), _at(where, "port"))
            protocol = _choice(_INBOUND_PROTOCOLS)(
                fields.get("protocol", "tcp"), _at(where, "protocol")
            )
        else:
            port = _port(entry, where)
        if port in ports:
            _refuse(where, entry, f"duplicate port (also {path}[{ports.index(port)}])")
        ports.append(port)
        declared.append((port, protocol))
    return tuple(declared)


_MESH_FIELDS: dict[str, Parser] = {
    "cluster_domain": _dns_name,
    "outbound_traffic_policy": _choice(_OUTBOUND_POLICIES),
}
_WORKLOAD_FIELDS: dict[str, Parser] = {
    "name": _dns_label,
    "namespace": _dns_label,
    "inbound_ports": _inbound_ports,
}


# --- services ----------------------------------------------------------------------------------

_SERVICE_KEYS = (
    "name",
    "namespace",
    "vip",
    "ports",
    "endpoints",
    "subsets",
    "http",
    "traffic_policy",
)
_AUTO = "auto"


@dataclass
class _Claims:
    """What earlier services took: keys and explicit VIPs identify a service, so are unique."""

    keys: dict[str, str] = field(default_factory=dict)  # service key -> its path
    vips: dict[IPAddress, str] = field(default_factory=dict)  # VIP -> "path (key)"
    auto: list[str] = field(default_factory=list)  # keys still waiting for a VIP

    def key(self, key: str, name: str, where: str) -> None:
        if key in self.keys:
            _refuse(_at(where, "name"), name, f"duplicate service {key} (also {self.keys[key]})")
        self.keys[key] = where

    def vip(self, vip: IPAddress, node: object, path: str, owner: str) -> None:
        if vip in self.vips:
            _refuse(path, node, f"VIP already used by {self.vips[vip]}")
        self.vips[vip] = owner


def _services(node: object, path: str) -> tuple[Service, ...]:
    """Every service, in file order, then auto VIPs filled in around the explicit ones."""
    claims = _Claims()
    services = [
        _service(entry, _item(path, index), claims) for index, entry in enumerate(_list(node, path))
    ]
    try:
        vips = allocate_vips(claims.auto, tuple(claims.vips))
    except VipRangeExhaustedError as exc:
        _refuse(path, len(claims.auto), str(exc))
    return tuple(replace(s, vips=vips[s.key]) if s.key in vips else s for s in services)


def _service(node: object, where: str, claims: _Claims) -> Service:
    """One service; with ``vip: auto`` its VIPs are left empty and its key queued in claims."""
    entry = _entry(node, where, _SERVICE_KEYS)
    name = _dns_label(_required(entry, "name", where), _at(where, "name"))
    namespace = _dns_label(entry.get("namespace", "default"), _at(where, "namespace"))
    key = f"{name}.{namespace}"
    claims.key(key, name, where)
    vips = _vips(entry.get("vip", _AUTO), _at(where, "vip"), claims, f"{where} ({key})")
    if vips is None:
        claims.auto.append(key)
    ports = _service_ports(entry.get("ports"), _at(where, "ports"))
    names = tuple(p.name for p in ports)
    endpoints = _endpoints(entry.get("endpoints"), _at(where, "endpoints"), names)
    policy = _traffic_policy(entry.get("traffic_policy"), _at(where, "traffic_policy"))
    subsets = _subsets(entry.get("subsets"), _at(where, "subsets"))
    routes = _http_routes(entry.get("http"), _at(where, "http"), ports, subsets)
    return Service(name, namespace, vips or (), ports, endpoints, policy, subsets, routes)


def _vips(node: object, path: str, claims: _Claims, owner: str) -> tuple[IPAddress, ...] | None:
    """``auto`` (None: allocate later), one address, or a list with at most one per family.

    Explicit VIPs come out IPv4 first, the same order auto VIPs have.
    """
    if node == _AUTO:
        return None
    if isinstance(node, str):
        vip = _explicit_vip(node, path)
        claims.vip(vip, node, path, owner)
        return (vip,)
    if not isinstance(node, list) or not node:
        _refuse(path, node, "expected 'auto', an IP address, or a non-empty list of addresses")
    vips: list[IPAddress] = []
    for index, entry in enumerate(node):
        vip = _explicit_vip(entry, _item(path, index))
        if any(v.version == vip.version for v in vips):
            _refuse(_item(path, index), entry, f"a second IPv{vip.version} VIP (one per family)")
        claims.vip(vip, entry, _item(path, index), owner)
        vips.append(vip)
    return tuple(sorted(vips, key=lambda v: v.version))


def _explicit_vip(node: object, path: str) -> IPAddress:
    """A VIP must be an address the kernel will route out to be intercepted."""
    try:
        vip = ipaddress.ip_address(node.strip() if isinstance(node, str) else "")
    except ValueError:
        _refuse(path, node, "expected 'auto' or an IPv4 or IPv6 address")
    for bad, what in (
        (vip.is_loopback, "loopback"),
        (vip.is_unspecified, "unspecified"),
        (vip.is_multicast, "multicast"),
    ):
        if bad:
            _refuse(path, node, f"a VIP cannot be a {what} address")
    return vip


# --- ports -------------------------------------------------------------------------------------

_PORT_KEYS = ("name", "port", "protocol", "target_port")


def _service_ports(node: object, path: str) -> tuple[ServicePort, ...]:
    """At least one port; numbers and names unique, since routes select by either."""
    entries = _list(node, path)
    if not entries:
        _refuse(path, node, "a service needs at least one port")
    ports: list[ServicePort] = []
    for index, entry in enumerate(entries):
        port = _service_port(entry, _item(path, index))
        for other_index, other in enumerate(ports):
            also = f"(also {_item(path, other_index)})"
            if other.port == port.port:
                _refuse(_at(_item(path, index), "port"), port.port, f"duplicate port {also}")
            if other.name == port.name:
                _refuse(_at(_item(path, index), "name"), port.name, f"duplicate port name {also}")
        ports.append(port)
    return tuple(ports)


def _service_port(node: object, where: str) -> ServicePort:
    entry = _entry(node, where, _PORT_KEYS)
    number = _port(_required(entry, "port", where), _at(where, "port"))
    protocol = _choice(PROTOCOLS)(entry.get("protocol", "tcp"), _at(where, "protocol"))
    name = _dns_label(entry.get("name", f"{protocol}-{number}"), _at(where, "name"))
    target = _port(entry.get("target_port", number), _at(where, "target_port"))
    return ServicePort(name, number, protocol, target)


# --- endpoints ---------------------------------------------------------------------------------

_ENDPOINT_KEYS = ("address", "weight", "labels", "ports")


def _endpoints(node: object, path: str, port_names: tuple[str, ...]) -> tuple[Endpoint, ...]:
    return tuple(
        _endpoint(entry, _item(path, index), port_names)
        for index, entry in enumerate(_list(node, path))
    )


def _endpoint(node: object, where: str, port_names: tuple[str, ...]) -> Endpoint:
    entry = _entry(node, where, _ENDPOINT_KEYS)
    address = _ip(_required(entry, "address", where), _at(where, "address"))
    weight = _integer(entry.get("weight", 1), _at(where, "weight"), 1, MAX_WEIGHT)
    labels = _labels(entry.get("labels"), _at(where, "labels"))
    ports = _endpoint_ports(entry.get("ports"), _at(where, "ports"), port_names)
    return Endpoint(address, weight, labels, ports)


def _labels(node: object, path: str) -> tuple[tuple[str, str], ...]:
    """Labels are matched as text; a bare ``1.0`` or ``true`` must be quoted to be one."""
    if node is not None and not isinstance(node, dict):
        _refuse(path, node, "expected a mapping of strings to strings")
    for key, value in (node or {}).items():
        if not isinstance(key, str):
            _refuse(_at(path, key), key, "a label key must be a string")
        if not isinstance(value, str):
            _refuse(_at(path, key), value, "a label value must be a string (quote it)")
    return tuple(sorted((node or {}).items()))


def _endpoint_ports(
    node: object, path: str, port_names: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    """Per-endpoint overrides of ``target_port``, keyed by the service port's name."""
    if node is not None and not isinstance(node, dict):
        _refuse(path, node, "expected a mapping of service port names to port numbers")
    overrides: list[tuple[str, int]] = []
    for key, value in (node or {}).items():
        if key not in port_names:
            expected = ", ".join(port_names)
            _refuse(_at(path, key), key, f"not a port name of this service ({expected})")
        overrides.append((key, _port(value, _at(path, key))))
    return tuple(overrides)


# --- traffic policy ----------------------------------------------------------------------------

_LB_ONLY_FOR = {"ring_size": "ring_hash", "choice_count": "least_request"}


def _load_balancer(node: object, path: str) -> LoadBalancer:
    """A policy name, or a mapping that may tune the policy it names (and only that one)."""
    if isinstance(node, str):
        return LoadBalancer(policy=_choice(LB_POLICIES)(node, path))
    if node is not None and not isinstance(node, dict):
        _refuse(path, node, f"expected a policy ({', '.join(LB_POLICIES)}) or a mapping")
    fields = _fields(node, path, _LB_FIELDS)
    policy = fields.get("policy", LoadBalancer.policy)
    for key, only in _LB_ONLY_FOR.items():
        if key in fields and policy != only:
            _refuse(_at(path, key), fields[key], f"applies only to policy {only}, not {policy}")
    return LoadBalancer(**fields)


def _optional(kind: type, table: Mapping[str, Parser]) -> Parser:
    """A section whose absence (or null) disables the feature; ``{}`` enables its defaults."""

    def parse(node: object, path: str) -> Any:
        return None if node is None else kind(**_fields(node, path, table))

    return parse


def _traffic_policy(node: object, path: str) -> TrafficPolicy:
    return TrafficPolicy(**_fields(node, path, _POLICY_FIELDS))


_LB_FIELDS: dict[str, Parser] = {
    "policy": _choice(LB_POLICIES),
    "ring_size": _ranged(1, MAX_RING_SIZE),
    "choice_count": _ranged(2, MAX_CHOICE_COUNT),
}
_CIRCUIT_BREAKER_FIELDS: dict[str, Parser] = {
    "max_connections": _count,
    "max_pending": _count,
    "max_requests": _count,
    "retry_budget_percent": _percentage,
    "min_retry_concurrency": _ranged(0, MAX_COUNT),
}
_OUTLIER_FIELDS: dict[str, Parser] = {
    "consecutive_failures": _count,
    "base_ejection_time": _duration,
    "max_ejection_percent": _ranged(0, 100),
}
_HEALTH_CHECK_FIELDS: dict[str, Parser] = {
    "interval": _duration,
    "timeout": _duration,
    "unhealthy_threshold": _count,
    "healthy_threshold": _count,
}
_POLICY_FIELDS: dict[str, Parser] = {
    "load_balancer": _load_balancer,
    "connect_timeout": _duration,
    "idle_timeout": _duration,
    "connect_attempts": _ranged(1, MAX_CONNECT_ATTEMPTS),
    "circuit_breaker": lambda node, path: CircuitBreaker(
        **_fields(node, path, _CIRCUIT_BREAKER_FIELDS)
    ),
    "outlier_detection": _optional(OutlierDetection, _OUTLIER_FIELDS),
    "health_check": _optional(HealthCheck, _HEALTH_CHECK_FIELDS),
    "http_idle_timeout": _duration,
    "max_requests_per_connection": _ranged(0, MAX_COUNT),  # 0: unlimited
}


# --- subsets -----------------------------------------------------------------------------------

_SUBSET_KEYS = ("name", "labels")


def _subsets(node: object, path: str) -> tuple[Subset, ...]:
    """Routes refer to subsets by name, so names are unique within the service."""
    subsets: list[Subset] = []
    for index, entry in enumerate(_list(node, path)):
        subset = _subset(entry, _item(path, index))
        names = [s.name for s in subsets]
        _unique(subset.name, names, _at(_item(path, index), "name"), path, "subset name")
        subsets.append(subset)
    return tuple(subsets)


def _subset(node: object, where: str) -> Subset:
    """A subset without labels would select every endpoint: surely a mistake, so refused."""
    entry = _entry(node, where, _SUBSET_KEYS)
    name = _dns_label(_required(entry, "name", where), _at(where, "name"))
    labels = _labels(_required(entry, "labels", where), _at(where, "labels"))
    if not labels:
        _refuse(_at(where, "labels"), entry["labels"], "a subset needs at least one label")
    return Subset(name, labels)


# --- HTTP routes: matching ---------------------------------------------------------------------

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every ASCII control character but tab


def _text(node: object, path: str) -> str:
    """A string that YAML might have turned into a bool or number (``yes``, ``1.0``) unquoted."""
    if not isinstance(node, str):
        _refuse(path, node, "expected a string (quote it)")
    return node


def _regex(text: str, path: str) -> str:
    """Compiled here only to refuse a bad pattern. The router compiles its UTF-8 bytes (it
    matches raw header bytes), where ``\\u00e9`` or ``(?u)`` fail, so both forms must compile."""
    try:
        re.compile(text)
        re.compile(text.encode())
    except re.error as exc:
        _refuse(path, text, f"not a valid regular expression: {exc}")
    return text


def _string_match(node: object, path: str) -> StringMatch:
    """Istio's StringMatch: a mapping with exactly one of exact, prefix or regex."""
    kinds = ", ".join(STRING_MATCH_KINDS)
    if not isinstance(node, dict):
        _refuse(path, node, f"expected a mapping with one of: {kinds} (e.g. {{prefix: /api}})")
    entry = _mapping(node, path, STRING_MATCH_KINDS)
    if len(entry) != 1:
        _refuse(path, node, f"expected exactly one of: {kinds}")
    ((kind, value),) = entry.items()
    text = _text(value, _at(path, kind))
    return StringMatch(kind, _regex(text, _at(path, kind)) if kind == "regex" else text)


def _header_name(node: object, path: str) -> str:
    """Field names are tokens, compared case-insensitively: the model keeps them lowercase."""
    if not isinstance(node, str) or not _TOKEN.fullmatch(node):
        _refuse(path, node, "not a header name (an HTTP token: letters, digits, !#$%&'*+-.^_`|~)")
    return node.lower()


def _claim_header(name: str, node: object, path: str, seen: dict[str, str]) -> None:
    """``X-A`` and ``x-a`` are one header: naming it twice in one place is a contradiction."""
    if name in seen:
        _refuse(path, node, f"header {name!r} given twice (also {seen[name]})")
    seen[name] = path


def _header_map(node: object, path: str, what: str) -> dict:
    if node is not None and not isinstance(node, dict):
        _refuse(path, node, f"expected a mapping of header names to {what}")
    return node or {}


def _header_matches(node: object, path: str) -> tuple[tuple[str, StringMatch], ...]:
    seen: dict[str, str] = {}
    pairs: list[tuple[str, StringMatch]] = []
    for key, value in _header_map(node, path, "matches").items():
        name = _header_name(key, _at(path, key))
        _claim_header(name, key, _at(path, key), seen)
        pairs.append((name, _string_match(value, _at(path, key))))
    return tuple(pairs)


_MATCH_FIELDS: dict[str, Parser] = {
    "uri": _string_match,
    "method": _string_match,
    "authority": _string_match,
    "headers": _header_matches,
}


def _matches(node: object, path: str) -> tuple[RouteMatch, ...]:
    """The list is OR'ed, each item's conditions AND'ed; no list matches every request."""
    matches: list[RouteMatch] = []
    for index, entry in enumerate(_list(node, path)):
        where = _item(path, index)
        _entry(entry, where, _MATCH_FIELDS)
        matches.append(RouteMatch(**_fields(entry, where, _MATCH_FIELDS)))
    return tuple(matches)


# --- HTTP routes: destinations -----------------------------------------------------------------

_DESTINATION_KEYS = ("subset", "weight")


def _destinations(
    node: object, path: str, subsets: tuple[str, ...]
) -> tuple[RouteDestination, ...]:
    """No list sends everything to all endpoints; several destinations split it by weight."""
    entries = _list(node, path)
    if not entries:
        return (RouteDestination(),)
    destinations: list[RouteDestination] = []
    for index, entry in enumerate(entries):
        where = _item(path, index)
        destination = _destination(entry, where, subsets, shared=len(entries) > 1)
        earlier = [d.subset for d in destinations]
        _unique(destination.subset, earlier, _at(where, "subset"), path, "destination")
        destinations.append(destination)
    total = sum(d.weight for d in destinations)
    if total != 100:
        _refuse(path, [d.weight for d in destinations], f"weights add up to {total}, not 100")
    return tuple(destinations)


def _destination(
    node: object, where: str, subsets: tuple[str, ...], shared: bool
) -> RouteDestination:
    entry = _entry(node, where, _DESTINATION_KEYS)
    subset = _subset_name(entry.get("subset"), _at(where, "subset"), subsets)
    return RouteDestination(subset, _weight(entry, where, shared))


def _subset_name(node: object, path: str, subsets: tuple[str, ...]) -> str | None:
    """A subset of this service (None: all its endpoints)."""
    if node is None:
        return None
    if node not in subsets:
        known = ", ".join(subsets) if subsets else "it defines none"
        _refuse(path, node, f"not a subset of this service ({known})")
    return node


def _weight(entry: dict, where: str, shared: bool) -> int:
    """A weight is a percentage of the route's traffic: required only when it is shared."""
    if "weight" not in entry:
        if shared:
            _refuse(_at(where, "weight"), None, "required when a route has several destinations")
        return 100
    weight = _integer(entry["weight"], _at(where, "weight"), 0, 100)
    if not shared and weight != 100:
        reason = "a single destination takes all the traffic: leave its weight out or make it 100"
        _refuse(_at(where, "weight"), weight, reason)
    return weight


# --- HTTP routes: retries ----------------------------------------------------------------------

MAX_RETRIES = 10
_RETRIABLE_STATUS_CODES = "retriable-status-codes"


def _retry_on(node: object, path: str) -> tuple[str, ...]:
    """Istio's comma-separated string (``5xx,connect-failure``) or a YAML list of conditions."""
    if isinstance(node, str):
        found = [(part.strip(), path, node) for part in node.split(",")]
    elif isinstance(node, list):
        found = [(item, _item(path, index), item) for index, item in enumerate(node)]
    else:
        _refuse(path, node, "expected a comma-separated string or a list of conditions")
    conditions: list[str] = []
    for condition, where, value in found:
        if condition not in RETRY_ON:
            _refuse(where, value, _unknown_condition(condition))
        if condition in conditions:
            _refuse(where, value, f"condition {condition!r} given twice")
        conditions.append(condition)
    if not conditions:
        _refuse(path, node, f"expected at least one condition ({', '.join(RETRY_ON)})")
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
    for index, entry in enumerate(_list(node, path)):
        code = _integer(entry, _item(path, index), 100, 599)
        _unique(code, codes, _item(path, index), path, "status code")
        codes.append(code)
    return tuple(codes)


_RETRY_FIELDS: dict[str, Parser] = {
    "attempts": _ranged(0, MAX_RETRIES),  # 0 disables retries
    "per_try_timeout": _duration,
    "retry_on": _retry_on,
    "retriable_status_codes": _status_codes,
    "backoff_base": _duration,
    "backoff_max": _duration,
}


def _retries(node: object, path: str) -> RetryPolicy:
    """Absent or null: the model's defaults (``attempts: 0`` is how retries are turned off)."""
    raw = _mapping(node, path, _RETRY_FIELDS)
    policy = RetryPolicy(**_fields(raw, path, _RETRY_FIELDS))
    _check_backoff(policy, raw, path)
    if "retriable_status_codes" in raw and _RETRIABLE_STATUS_CODES not in policy.retry_on:
        reason = f"used only when retry_on includes {_RETRIABLE_STATUS_CODES}"
        _refuse(_at(path, "retriable_status_codes"), raw["retriable_status_codes"], reason)
    return policy


def _check_backoff(policy: RetryPolicy, raw: dict, path: str) -> None:
    """The cap must not be below the base; blame the key the operator wrote."""
    if policy.backoff_max >= policy.backoff_base:
        return
    if "backoff_max" in raw:
        reason = f"must be at least backoff_base ({policy.backoff_base:g}s)"
        _refuse(_at(path, "backoff_max"), raw["backoff_max"], reason)
    reason = f"must be at most backoff_max ({policy.backoff_max:g}s, its default)"
    _refuse(_at(path, "backoff_base"), raw["backoff_base"], reason)


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
        _refuse(path, node, f"the proxy manages this header itself (it owns: {protected})")
    _claim_header(name, node, path, seen)
    return name


def _header_value(node: object, path: str) -> str:
    """CR, LF or NUL would end or split the header (request smuggling); RFC 9110 section 5.5
    makes every other control character but tab invalid in a field value too."""
    text = _text(node, path)
    if _CONTROL.search(text):
        _refuse(path, node, "a header value cannot contain CR, LF, NUL or other control characters")
    return text


def _header_values(node: object, path: str, seen: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_operated_header(key, _at(path, key), seen), _header_value(value, _at(path, key)))
        for key, value in _header_map(node, path, "values").items()
    )


def _header_removals(node: object, path: str, seen: dict[str, str]) -> tuple[str, ...]:
    entries = _list(node, path)
    return tuple(_operated_header(name, _item(path, i), seen) for i, name in enumerate(entries))


def _header_operations(node: object, path: str) -> HeaderOperations:
    """One header in two of set/add/remove would leave the outcome to the order applied."""
    entry = _mapping(node, path, _HEADER_OPERATION_KEYS)
    seen: dict[str, str] = {}
    return HeaderOperations(
        set=_header_values(entry.get("set"), _at(path, "set"), seen),
        add=_header_values(entry.get("add"), _at(path, "add"), seen),
        remove=_header_removals(entry.get("remove"), _at(path, "remove"), seen),
    )


def _header_rules(node: object, path: str) -> dict[str, HeaderOperations]:
    """``headers: {request: ..., response: ...}`` as HttpRoute's keyword arguments."""
    entry = _mapping(node, path, _HEADER_RULE_KEYS)
    return {
        "request_headers": _header_operations(entry.get("request"), _at(path, "request")),
        "response_headers": _header_operations(entry.get("response"), _at(path, "response")),
    }


# fault key -> {YAML key: (Fault field, parser)}; every key of a part is required.
_FAULT_PARTS: dict[str, dict[str, tuple[str, Parser]]] = {
    "delay": {"percentage": ("delay_percent", _percentage), "fixed_delay": ("delay", _duration)},
    "abort": {
        "percentage": ("abort_percent", _percentage),
        "http_status": ("abort_status", _ranged(200, 599)),
    },
}


def _fault(node: object, path: str) -> Fault | None:
    """Chaos testing: absent or null injects nothing."""
    if node is None:
        return None
    entry = _mapping(node, path, _FAULT_PARTS)
    fields: dict[str, Any] = {}
    for key, table in _FAULT_PARTS.items():
        if entry.get(key) is not None:
            fields |= _fault_part(entry[key], _at(path, key), table)
    return Fault(**fields)


def _fault_part(node: object, where: str, table: dict[str, tuple[str, Parser]]) -> dict[str, Any]:
    """A delay or abort without its percentage or its effect would be a silent no-op."""
    entry = _entry(node, where, tuple(table))
    return {
        name: parse(_required(entry, key, where), _at(where, key))
        for key, (name, parse) in table.items()
    }


# --- HTTP routes -------------------------------------------------------------------------------

_ROUTE_KEYS = ("name", "match", "route", "timeout", "retries", "headers", "fault")
_HTTP_PROTOCOLS = ("http", "http2", "grpc", "auto")


def _http_routes(
    node: object, path: str, ports: tuple[ServicePort, ...], subsets: tuple[Subset, ...]
) -> tuple[HttpRoute, ...]:
    """File order is kept (the first match wins); names tell routes apart, so are unique."""
    entries = _list(node, path)
    if entries and not any(p.protocol in _HTTP_PROTOCOLS for p in ports):
        declared = ", ".join(f"{p.name} ({p.protocol})" for p in ports)
        reason = (
            f"HTTP routes need a port with protocol http, http2, grpc or auto; "
            f"this service has {declared}"
        )
        _refuse(path, node, reason)
    names = tuple(s.name for s in subsets)
    routes: list[HttpRoute] = []
    for index, entry in enumerate(entries):
        where = _item(path, index)
        route = _http_route(entry, where, index, names)
        _unique(route.name, [r.name for r in routes], _at(where, "name"), path, "route name")
        routes.append(route)
    return tuple(routes)


def _http_route(node: object, where: str, index: int, subsets: tuple[str, ...]) -> HttpRoute:
    entry = _entry(node, where, _ROUTE_KEYS)
    timeout = entry.get("timeout")
    return HttpRoute(
        name=_dns_label(entry.get("name", f"route-{index}"), _at(where, "name")),
        matches=_matches(entry.get("match"), _at(where, "match")),
        destinations=_destinations(entry.get("route"), _at(where, "route"), subsets),
        timeout=None if timeout is None else _duration(timeout, _at(where, "timeout")),
        retries=_retries(entry.get("retries"), _at(where, "retries")),
        **_header_rules(entry.get("headers"), _at(where, "headers")),
        fault=_fault(entry.get("fault"), _at(where, "fault")),
    )
