"""The mesh file: YAML text in, a validated frozen :class:`~proxy.config.model.Mesh` out.

The data path trusts the model completely, so every check happens while loading, once,
before the sidecar serves anything. A bad document is refused whole at its first error
(nothing partial is ever returned), with a message naming the file, the place in the document
(``services[1].ports[0].port``), the value found there and what is wrong with it, in the same
spirit as ``init/config.py``'s ``ConfigError``.

This module owns the entry points (:func:`load_mesh`, :func:`parse_mesh`, reading the YAML
and reporting its syntax errors) and the document's sections: ``mesh``, ``workload`` and the
``services``, with their VIPs, ports, endpoints, traffic policy and subsets. Each section is a
table of field parsers next to the small functions it needs, built from the helpers of
:mod:`proxy.config.parsing` (which also defines :class:`MeshConfigError`, re-exported here); a
service's ``http`` routes are parsed by :mod:`proxy.config.http_routes`.

Subsets use Istio's DestinationRule vocabulary in snake_case.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, get_args

from proxy.config import authorization, http_routes, security
from proxy.config import parsing as p
from proxy.config.model import (
    LB_POLICIES,
    PROTOCOLS,
    CircuitBreaker,
    Endpoint,
    HealthCheck,
    IPAddress,
    LoadBalancer,
    Mesh,
    OutboundPolicy,
    OutlierDetection,
    Service,
    ServicePort,
    Subset,
    TrafficPolicy,
    Workload,
)
from proxy.config.parsing import MAX_DURATION, MeshConfigError
from proxy.config.vips import VipRangeExhaustedError, allocate_vips
from proxy.policy.paths import EscapedSlashes

if TYPE_CHECKING:
    import yaml

__all__ = ["MAX_DURATION", "MeshConfigError", "load_mesh", "parse_mesh"]

_OUTBOUND_POLICIES: tuple[str, ...] = get_args(OutboundPolicy)

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
        raise MeshConfigError(source, p.DOCUMENT, source, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise MeshConfigError(source, p.DOCUMENT, source, f"not UTF-8 text: {exc}") from exc
    return parse_mesh(text, source)


def parse_mesh(text: str, source: str) -> Mesh:
    """Parse mesh YAML ``text``; ``source`` names it in errors and in ``Mesh.source``.

    Pure: no I/O, no state. Raises :class:`MeshConfigError` for the first problem found.
    """
    try:
        return _mesh(_load_yaml(text), source)
    except p.Refused as refused:
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
        p.refuse(p.DOCUMENT, snippet, reason)


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


# --- the document ------------------------------------------------------------------------------


def _mesh(document: object, source: str) -> Mesh:
    top = p.mapping(document, "", ("mesh", "workload", "services"))
    settings = p.fields(top.get("mesh"), "mesh", _MESH_FIELDS)
    fields = p.fields(top.get("workload"), "workload", _WORKLOAD_FIELDS)
    declared = fields.pop("inbound_ports", ())
    escaped = fields.pop("path_normalization", EscapedSlashes.REJECT_REQUEST)
    authorization.check_normalization(
        escaped,
        fields.get("authorization_policies", ()),
        "workload.path_normalization.escaped_slashes",
    )
    workload = Workload(
        **fields,
        inbound_ports=tuple(port for port, _ in declared),
        inbound_protocols=tuple(entry for entry in declared if entry[1] != "tcp"),
        escaped_slashes=escaped,
    )
    services = _services(top.get("services"), "services")
    return Mesh(services=services, workload=workload, source=source, **settings)


_INBOUND_PROTOCOLS = ("tcp", "http", "auto")


def _inbound_ports(node: object, path: str) -> tuple[tuple[int, str], ...]:
    """A port number (TCP), or ``{port: N, protocol: http|auto|tcp}`` for the sidecar to serve
    it with the HTTP router: destination-side request metrics and access log."""
    ports: list[int] = []
    declared: list[tuple[int, str]] = []
    for index, entry in enumerate(p.list_of(node, path)):
        where = p.item(path, index)
        protocol = "tcp"
        if isinstance(entry, dict):
            fields = p.entry(entry, where, ("port", "protocol"))
            port = p.port(p.required(fields, "port", where), p.at(where, "port"))
            protocol = p.choice(_INBOUND_PROTOCOLS)(
                fields.get("protocol", "tcp"), p.at(where, "protocol")
            )
        else:
            port = p.port(entry, where)
        if port in ports:
            p.refuse(where, entry, f"duplicate port (also {path}[{ports.index(port)}])")
        ports.append(port)
        declared.append((port, protocol))
    return tuple(declared)


_MESH_FIELDS: dict[str, p.Parser] = {
    "cluster_domain": p.dns_name,
    "outbound_traffic_policy": p.choice(_OUTBOUND_POLICIES),
    "trust_domain": security.trust_domain,
}
_WORKLOAD_FIELDS: dict[str, p.Parser] = {
    "name": p.dns_label,
    "namespace": p.dns_label,
    "inbound_ports": _inbound_ports,
    "service_account": security.service_account,
    "tls": security.workload_tls,
    "peer_authentication": security.peer_authentication,
    "authorization_policies": authorization.policies,
    "path_normalization": authorization.escaped_slashes,
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
            p.refuse(p.at(where, "name"), name, f"duplicate service {key} (also {self.keys[key]})")
        self.keys[key] = where

    def vip(self, vip: IPAddress, node: object, path: str, owner: str) -> None:
        if vip in self.vips:
            p.refuse(path, node, f"VIP already used by {self.vips[vip]}")
        self.vips[vip] = owner


def _services(node: object, path: str) -> tuple[Service, ...]:
    """Every service, in file order, then auto VIPs filled in around the explicit ones."""
    claims = _Claims()
    services = [
        _service(entry, p.item(path, index), claims)
        for index, entry in enumerate(p.list_of(node, path))
    ]
    try:
        vips = allocate_vips(claims.auto, tuple(claims.vips))
    except VipRangeExhaustedError as exc:
        p.refuse(path, len(claims.auto), str(exc))
    return tuple(replace(s, vips=vips[s.key]) if s.key in vips else s for s in services)


def _service(node: object, where: str, claims: _Claims) -> Service:
    """One service; with ``vip: auto`` its VIPs are left empty and its key queued in claims."""
    entry = p.entry(node, where, _SERVICE_KEYS)
    name = p.dns_label(p.required(entry, "name", where), p.at(where, "name"))
    namespace = p.dns_label(entry.get("namespace", "default"), p.at(where, "namespace"))
    key = f"{name}.{namespace}"
    claims.key(key, name, where)
    vips = _vips(entry.get("vip", _AUTO), p.at(where, "vip"), claims, f"{where} ({key})")
    if vips is None:
        claims.auto.append(key)
    ports = _service_ports(entry.get("ports"), p.at(where, "ports"))
    names = tuple(port.name for port in ports)
    endpoints = _endpoints(entry.get("endpoints"), p.at(where, "endpoints"), names)
    policy = _traffic_policy(entry.get("traffic_policy"), p.at(where, "traffic_policy"))
    subsets = _subsets(entry.get("subsets"), p.at(where, "subsets"))
    routes = http_routes.routes(entry.get("http"), p.at(where, "http"), ports, subsets)
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
        p.refuse(path, node, "expected 'auto', an IP address, or a non-empty list of addresses")
    vips: list[IPAddress] = []
    for index, entry in enumerate(node):
        vip = _explicit_vip(entry, p.item(path, index))
        if any(v.version == vip.version for v in vips):
            p.refuse(p.item(path, index), entry, f"a second IPv{vip.version} VIP (one per family)")
        claims.vip(vip, entry, p.item(path, index), owner)
        vips.append(vip)
    return tuple(sorted(vips, key=lambda v: v.version))


def _explicit_vip(node: object, path: str) -> IPAddress:
    """A VIP must be an address the kernel will route out to be intercepted."""
    try:
        vip = ipaddress.ip_address(node.strip() if isinstance(node, str) else "")
    except ValueError:
        p.refuse(path, node, "expected 'auto' or an IPv4 or IPv6 address")
    for bad, what in (
        (vip.is_loopback, "loopback"),
        (vip.is_unspecified, "unspecified"),
        (vip.is_multicast, "multicast"),
    ):
        if bad:
            p.refuse(path, node, f"a VIP cannot be a {what} address")
    return vip


# --- ports -------------------------------------------------------------------------------------

_PORT_KEYS = ("name", "port", "protocol", "target_port")


def _service_ports(node: object, path: str) -> tuple[ServicePort, ...]:
    """At least one port; numbers and names unique, since routes select by either."""
    entries = p.list_of(node, path)
    if not entries:
        p.refuse(path, node, "a service needs at least one port")
    ports: list[ServicePort] = []
    for index, entry in enumerate(entries):
        where = p.item(path, index)
        port = _service_port(entry, where)
        for other_index, other in enumerate(ports):
            also = f"(also {p.item(path, other_index)})"
            if other.port == port.port:
                p.refuse(p.at(where, "port"), port.port, f"duplicate port {also}")
            if other.name == port.name:
                p.refuse(p.at(where, "name"), port.name, f"duplicate port name {also}")
        ports.append(port)
    return tuple(ports)


def _service_port(node: object, where: str) -> ServicePort:
    entry = p.entry(node, where, _PORT_KEYS)
    number = p.port(p.required(entry, "port", where), p.at(where, "port"))
    protocol = p.choice(PROTOCOLS)(entry.get("protocol", "tcp"), p.at(where, "protocol"))
    name = p.dns_label(entry.get("name", f"{protocol}-{number}"), p.at(where, "name"))
    target = p.port(entry.get("target_port", number), p.at(where, "target_port"))
    return ServicePort(name, number, protocol, target)


# --- endpoints ---------------------------------------------------------------------------------

_ENDPOINT_KEYS = ("address", "weight", "labels", "ports", "service_account")


def _endpoints(node: object, path: str, port_names: tuple[str, ...]) -> tuple[Endpoint, ...]:
    return tuple(
        _endpoint(entry, p.item(path, index), port_names)
        for index, entry in enumerate(p.list_of(node, path))
    )


def _endpoint(node: object, where: str, port_names: tuple[str, ...]) -> Endpoint:
    entry = p.entry(node, where, _ENDPOINT_KEYS)
    address = p.ip(p.required(entry, "address", where), p.at(where, "address"))
    weight = p.integer(entry.get("weight", 1), p.at(where, "weight"), 1, p.MAX_WEIGHT)
    labels = _labels(entry.get("labels"), p.at(where, "labels"))
    ports = _endpoint_ports(entry.get("ports"), p.at(where, "ports"), port_names)
    account = entry.get("service_account")
    if account is not None:  # meshed: reached over mesh mTLS as this identity
        account = security.service_account(account, p.at(where, "service_account"))
    return Endpoint(address, weight, labels, ports, account)


def _labels(node: object, path: str) -> tuple[tuple[str, str], ...]:
    """Labels are matched as text; a bare ``1.0`` or ``true`` must be quoted to be one."""
    if node is not None and not isinstance(node, dict):
        p.refuse(path, node, "expected a mapping of strings to strings")
    for key, value in (node or {}).items():
        if not isinstance(key, str):
            p.refuse(p.at(path, key), key, "a label key must be a string")
        if not isinstance(value, str):
            p.refuse(p.at(path, key), value, "a label value must be a string (quote it)")
    return tuple(sorted((node or {}).items()))


def _endpoint_ports(
    node: object, path: str, port_names: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    """Per-endpoint overrides of ``target_port``, keyed by the service port's name."""
    if node is not None and not isinstance(node, dict):
        p.refuse(path, node, "expected a mapping of service port names to port numbers")
    overrides: list[tuple[str, int]] = []
    for key, value in (node or {}).items():
        if key not in port_names:
            expected = ", ".join(port_names)
            p.refuse(p.at(path, key), key, f"not a port name of this service ({expected})")
        overrides.append((key, p.port(value, p.at(path, key))))
    return tuple(overrides)


# --- traffic policy ----------------------------------------------------------------------------

_LB_ONLY_FOR = {"ring_size": "ring_hash", "choice_count": "least_request"}


def _load_balancer(node: object, path: str) -> LoadBalancer:
    """A policy name, or a mapping that may tune the policy it names (and only that one)."""
    if isinstance(node, str):
        return LoadBalancer(policy=p.choice(LB_POLICIES)(node, path))
    if node is not None and not isinstance(node, dict):
        p.refuse(path, node, f"expected a policy ({', '.join(LB_POLICIES)}) or a mapping")
    fields = p.fields(node, path, _LB_FIELDS)
    policy = fields.get("policy", LoadBalancer.policy)
    for key, only in _LB_ONLY_FOR.items():
        if key in fields and policy != only:
            p.refuse(p.at(path, key), fields[key], f"applies only to policy {only}, not {policy}")
    return LoadBalancer(**fields)


def _traffic_policy(node: object, path: str) -> TrafficPolicy:
    return TrafficPolicy(**p.fields(node, path, _POLICY_FIELDS))


_LB_FIELDS: dict[str, p.Parser] = {
    "policy": p.choice(LB_POLICIES),
    "ring_size": p.ranged(1, p.MAX_RING_SIZE),
    "choice_count": p.ranged(2, p.MAX_CHOICE_COUNT),
}
_CIRCUIT_BREAKER_FIELDS: dict[str, p.Parser] = {
    "max_connections": p.count,
    "max_pending": p.count,
    "max_requests": p.count,
    "retry_budget_percent": p.percentage,
    "min_retry_concurrency": p.ranged(0, p.MAX_COUNT),
}
_OUTLIER_FIELDS: dict[str, p.Parser] = {
    "consecutive_5xx_errors": p.ranged(0, p.MAX_COUNT),  # 0: this run never ejects
    "consecutive_gateway_errors": p.ranged(0, p.MAX_COUNT),
    "base_ejection_time": p.duration,
    "max_ejection_percent": p.ranged(0, 100),
}
_HEALTH_CHECK_FIELDS: dict[str, p.Parser] = {
    "interval": p.duration,
    "timeout": p.duration,
    "unhealthy_threshold": p.count,
    "healthy_threshold": p.count,
}
_POLICY_FIELDS: dict[str, p.Parser] = {
    "load_balancer": _load_balancer,
    "connect_timeout": p.duration,
    "idle_timeout": p.duration,
    "connect_attempts": p.ranged(1, p.MAX_CONNECT_ATTEMPTS),
    "circuit_breaker": lambda node, path: CircuitBreaker(
        **p.fields(node, path, _CIRCUIT_BREAKER_FIELDS)
    ),
    "outlier_detection": p.optional(OutlierDetection, _OUTLIER_FIELDS),
    "health_check": p.optional(HealthCheck, _HEALTH_CHECK_FIELDS),
    "http_idle_timeout": p.duration,
    "max_requests_per_connection": p.ranged(0, p.MAX_COUNT),  # 0: unlimited
}


# --- subsets -----------------------------------------------------------------------------------

_SUBSET_KEYS = ("name", "labels")


def _subsets(node: object, path: str) -> tuple[Subset, ...]:
    """Routes refer to subsets by name, so names are unique within the service."""
    subsets: list[Subset] = []
    for index, entry in enumerate(p.list_of(node, path)):
        subset = _subset(entry, p.item(path, index))
        names = [s.name for s in subsets]
        p.unique(subset.name, names, p.at(p.item(path, index), "name"), path, "subset name")
        subsets.append(subset)
    return tuple(subsets)


def _subset(node: object, where: str) -> Subset:
    """A subset without labels would select every endpoint: surely a mistake, so refused."""
    entry = p.entry(node, where, _SUBSET_KEYS)
    name = p.dns_label(p.required(entry, "name", where), p.at(where, "name"))
    labels = _labels(p.required(entry, "labels", where), p.at(where, "labels"))
    if not labels:
        p.refuse(p.at(where, "labels"), entry["labels"], "a subset needs at least one label")
    return Subset(name, labels)
