"""The workload's authorization policies and path normalisation, as the mesh file says them.

    workload:
      path_normalization: {escaped_slashes: REJECT_REQUEST}   # or UNESCAPE_AND_FORWARD
      authorization_policies:
        - name: deny-admin
          action: DENY
          rules:
            - to: [{operation: {paths: ["/admin*"]}}]
        - name: frontend-reads
          action: ALLOW                     # the default
          rules:
            - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]
              to: [{operation: {methods: [GET, HEAD], paths: ["/api/*"]}}]
              when: [{key: "request.headers[x-tenant]", values: ["blue"]}]

Istio's ``AuthorizationPolicy`` spec in snake_case, one workload's policies (no selector:
the file is the workload's). What Detour cannot check is refused by name, never ignored:
``request_principals`` and ``request.auth.*`` (JWT), ``remote_ip_blocks``, the AUDIT and
CUSTOM actions. ``KEEP_UNCHANGED`` (forward ``%2F`` as it came) is refused with a policy on
paths: a policy would then match a path other than the one the app serves (CVE-2021-31920).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from proxy.config import parsing as p
from proxy.policy.model import (
    Action,
    AuthorizationPolicy,
    Condition,
    IPNetwork,
    Operation,
    PatternError,
    Rule,
    Source,
    StringMatch,
)
from proxy.policy.paths import EscapedSlashes

MAX_POLICIES = 1000
_NOT_SUPPORTED = {
    "request_principals": "JWT request authentication is not supported",
    "not_request_principals": "JWT request authentication is not supported",
    "remote_ip_blocks": "not supported (Detour does not trust X-Forwarded-For): use ip_blocks",
    "not_remote_ip_blocks": "not supported (Detour does not trust X-Forwarded-For): use "
    "not_ip_blocks",
}
_HEADER_KEY = re.compile(r"request\.headers\[([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\]")
_METHOD = re.compile(r"[A-Z*][A-Z0-9_*-]*")


def escaped_slashes(node: object, path: str) -> EscapedSlashes:
    section = p.mapping(node, path, ("escaped_slashes",))
    if "escaped_slashes" not in section:
        return EscapedSlashes.REJECT_REQUEST
    where = p.at(path, "escaped_slashes")
    name = p.choice(tuple(e.value for e in EscapedSlashes))(section["escaped_slashes"], where)
    return EscapedSlashes(name)


def policies(node: object, path: str) -> tuple[AuthorizationPolicy, ...]:
    items = p.list_of(node, path)
    if len(items) > MAX_POLICIES:
        p.refuse(path, f"{len(items)} policies", f"at most {MAX_POLICIES}")
    parsed: list[AuthorizationPolicy] = []
    names: list[str] = []
    for index, entry_node in enumerate(items):
        where = p.item(path, index)
        entry = p.entry(entry_node, where, ("name", "action", "rules", "selector", "provider"))
        for unsupported in ("selector", "provider"):
            if unsupported in entry:
                p.refuse(
                    p.at(where, unsupported),
                    entry[unsupported],
                    "not supported: a workload's file holds only its own policies"
                    if unsupported == "selector"
                    else "CUSTOM (external) authorization is not supported",
                )
        name = p.dns_label(p.required(entry, "name", where), p.at(where, "name"))
        p.unique(name, names, p.at(where, "name"), path, "policy name")
        names.append(name)
        action = _action(entry.get("action", "ALLOW"), p.at(where, "action"))
        rules = tuple(
            _rule(rule, p.item(p.at(where, "rules"), i))
            for i, rule in enumerate(p.list_of(entry.get("rules"), p.at(where, "rules")))
        )
        parsed.append(AuthorizationPolicy(name, action, rules))
    return tuple(parsed)


def check_normalization(
    escaped: EscapedSlashes, parsed: tuple[AuthorizationPolicy, ...], path: str
) -> None:
    """Refuse KEEP_UNCHANGED when a policy matches paths (see the module's docstring)."""
    if escaped is not EscapedSlashes.KEEP_UNCHANGED:
        return
    for policy in parsed:
        for rule in policy.rules:
            if any(op.paths or op.not_paths for op in rule.operations):
                p.refuse(
                    path,
                    escaped.value,
                    f"policy {policy.name!r} matches paths: a path left with %2F in it is "
                    "not the path the app serves; use REJECT_REQUEST or UNESCAPE_AND_FORWARD",
                )


def _action(node: object, path: str) -> Action:
    if node in ("AUDIT", "CUSTOM"):
        p.refuse(path, node, "not supported (ALLOW or DENY)")
    return Action(p.choice(("ALLOW", "DENY"))(node, path))


def _rule(node: object, where: str) -> Rule:
    entry = p.entry(node, where, ("from", "to", "when"))
    sources = tuple(
        _source(p.entry(item, p.item(p.at(where, "from"), i), ("source",)), where, i)
        for i, item in enumerate(p.list_of(entry.get("from"), p.at(where, "from")))
    )
    operations = tuple(
        _operation(p.entry(item, p.item(p.at(where, "to"), i), ("operation",)), where, i)
        for i, item in enumerate(p.list_of(entry.get("to"), p.at(where, "to")))
    )
    conditions = tuple(
        _condition(item, p.item(p.at(where, "when"), i))
        for i, item in enumerate(p.list_of(entry.get("when"), p.at(where, "when")))
    )
    return Rule(sources, operations, conditions)


_SOURCE_KEYS = (
    "principals",
    "not_principals",
    "namespaces",
    "not_namespaces",
    "ip_blocks",
    "not_ip_blocks",
    *_NOT_SUPPORTED,
)


def _source(item: dict[str, Any], rule_path: str, index: int) -> Source:
    where = p.at(p.item(p.at(rule_path, "from"), index), "source")
    section = p.mapping(p.required(item, "source", where.rsplit(".", 1)[0]), where, _SOURCE_KEYS)
    values: dict[str, Any] = {}
    for key, node in section.items():
        at = p.at(where, key)
        if key in _NOT_SUPPORTED:
            p.refuse(at, node, _NOT_SUPPORTED[key])
        if key.endswith("ip_blocks"):
            values[key] = _networks(node, at)
        elif key.endswith("principals"):
            values[key] = _matches(node, at, _principal)
        else:
            values[key] = _matches(node, at, None)
    return Source(**values)


_OPERATION_KEYS = (
    "hosts",
    "not_hosts",
    "ports",
    "not_ports",
    "methods",
    "not_methods",
    "paths",
    "not_paths",
)


def _operation(item: dict[str, Any], rule_path: str, index: int) -> Operation:
    where = p.at(p.item(p.at(rule_path, "to"), index), "operation")
    node = p.required(item, "operation", where.rsplit(".", 1)[0])
    section = p.mapping(node, where, _OPERATION_KEYS)
    values: dict[str, Any] = {}
    for key, value in section.items():
        at = p.at(where, key)
        if key.endswith("ports"):
            values[key] = _ports(value, at)
        elif key.endswith("hosts"):
            values[key] = _matches(value, at, lambda text, _where: text.lower().rstrip("."))
        elif key.endswith("methods"):
            values[key] = _matches(value, at, _method)
        else:
            values[key] = _matches(value, at, _path)
    return Operation(**values)


def _condition(node: object, where: str) -> Condition:
    entry = p.entry(node, where, ("key", "values", "not_values"))
    key_path = p.at(where, "key")
    key = p.string(p.required(entry, "key", where), key_path)
    if not entry.get("values") and not entry.get("not_values"):  # "values: []" matches all
        p.refuse(where, entry, "a condition needs values or not_values")
    header = _HEADER_KEY.fullmatch(key)
    if key.startswith("request.auth."):
        p.refuse(key_path, key, "JWT request authentication is not supported")
    if header is None and key not in _PLAIN_KEYS:
        p.refuse(key_path, key, f"unknown key (expected one of: {', '.join(_KNOWN)})")
    values_path, not_path = p.at(where, "values"), p.at(where, "not_values")
    if key in ("source.ip", "destination.ip"):
        return Condition(
            key,
            networks=_networks(entry.get("values"), values_path),
            not_networks=_networks(entry.get("not_values"), not_path),
        )
    check = _port_text if key == "destination.port" else None
    if key == "source.principal":
        check = _principal
    return Condition(
        "request.headers" if header else key,
        values=_matches(entry.get("values"), values_path, check),
        not_values=_matches(entry.get("not_values"), not_path, check),
        header=header.group(1).lower() if header else "",
    )


_PLAIN_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
)
_KNOWN = (*_PLAIN_KEYS, "request.headers[NAME]")


# --- values ------------------------------------------------------------------------------------


def _matches(node: object, path: str, check: Any) -> tuple[StringMatch, ...]:
    """A list of string matches; ``check(text, path)`` vets (and may rewrite) each value."""
    matches = []
    for i, value in enumerate(p.list_of(node, path)):
        where = p.item(path, i)
        text = p.string(value, where)
        if text == "":
            p.refuse(where, value, "empty (omit the field to match anything)")
        if check is not None:
            text = check(text, where)
        try:
            matches.append(StringMatch.parse(text))
        except PatternError as err:
            p.refuse(where, value, str(err))
    return tuple(matches)


def _principal(text: str, where: str) -> str:
    """Istio's form ``<trust domain>/ns/<namespace>/sa/<account>`` (a ``spiffe://`` in front
    is taken off): an exact principal must have that shape."""
    written, text = text, text.removeprefix("spiffe://")
    if "*" not in text and not re.fullmatch(r"[^/]+/ns/[^/]+/sa/[^/]+", text):
        p.refuse(
            where,
            written,
            "not a principal (trust-domain/ns/NAMESPACE/sa/ACCOUNT, or a "
            "pattern with '*' first or last)",
        )
    return text


def _method(text: str, where: str) -> str:
    if not _METHOD.fullmatch(text):
        p.refuse(where, text, "not an HTTP method (uppercase, as GET or POST)")
    return text


def _path(text: str, where: str) -> str:
    if not text.startswith(("/", "*")):
        p.refuse(where, text, "a path starts with '/' (or is a pattern with '*' first)")
    if "?" in text or "#" in text:
        p.refuse(where, text, "a path is matched without its query or fragment")
    return text


def _port_text(text: str, where: str) -> str:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        p.refuse(where, text, "not a port number (1-65535)")
    return text


def _ports(node: object, path: str) -> tuple[int, ...]:
    """Port numbers; Istio writes them as strings, so ``"8080"`` and ``8080`` both do."""
    ports = []
    for i, value in enumerate(p.list_of(node, path)):
        where = p.item(path, i)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        ports.append(p.port(value, where))
    return tuple(ports)


def _networks(node: object, path: str) -> tuple[IPNetwork, ...]:
    networks = []
    for i, value in enumerate(p.list_of(node, path)):
        where = p.item(path, i)
        try:
            networks.append(ipaddress.ip_network(p.string(value, where).strip(), strict=False))
        except ValueError:
            p.refuse(where, value, "not an IP address or CIDR block")
    return tuple(networks)
