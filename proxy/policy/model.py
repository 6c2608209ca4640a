"""What an authorization policy says: Istio's ``AuthorizationPolicy`` (security.istio.io/v1),
in the shape of Detour's YAML (snake_case: ``not_principals`` for ``notPrincipals``).

A policy has an action (ALLOW or DENY) and rules; a rule matches when its ``from`` (any of
its sources), its ``to`` (any of its operations) and its ``when`` (every condition) all match;
inside a source or an operation every field given must match (any of its values), and no
value of a ``not_`` field may. A policy with no rules matches nothing: an ALLOW policy with
no rules lets nobody in, ``rules: [{}]`` lets everybody.

Values are Istio's string matches: exact, ``prefix*``, ``*suffix``, or ``*`` alone (present:
any non-empty value, so ``principals: ["*"]`` means "any mTLS-authenticated caller").
Principals are written as Istio writes them, without ``spiffe://``:
``cluster.local/ns/default/sa/client``. Pure data; ``evaluate`` decides.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class PatternError(ValueError):
    """A string match with ``*`` anywhere but alone, first or last."""


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One of Istio's string matches; ``matches`` is case-sensitive (hosts and header names
    are lowered where they are read, not here)."""

    kind: str  # "exact" | "prefix" | "suffix" | "present"
    value: str

    @classmethod
    def parse(cls, text: str) -> StringMatch:
        if text == "*":
            return cls("present", "")
        if text.startswith("*") and "*" not in text[1:]:
            return cls("suffix", text[1:])
        if text.endswith("*") and "*" not in text[:-1]:
            return cls("prefix", text[:-1])
        if "*" in text:
            raise PatternError(f"'*' may only stand alone, first or last: {text!r}")
        return cls("exact", text)

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        kind = self.kind
        if kind == "exact":
            return text == self.value
        if kind == "prefix":
            return text.startswith(self.value)
        if kind == "suffix":
            return text.endswith(self.value)
        return text != ""


@dataclass(frozen=True, slots=True)
class Source:
    """Who calls: the peer's SPIFFE principal and namespace (mTLS), its address."""

    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    ip_blocks: tuple[IPNetwork, ...] = ()
    not_ip_blocks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """What is called: the destination port, and for HTTP the host, method and path (the
    normalised path, query excluded)."""

    hosts: tuple[StringMatch, ...] = ()
    not_hosts: tuple[StringMatch, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[StringMatch, ...] = ()
    not_methods: tuple[StringMatch, ...] = ()
    paths: tuple[StringMatch, ...] = ()
    not_paths: tuple[StringMatch, ...] = ()

    @property
    def http_only(self) -> bool:
        """Whether this operation names anything only an HTTP request has."""
        return bool(
            self.hosts
            or self.not_hosts
            or self.methods
            or self.not_methods
            or self.paths
            or self.not_paths
        )


# Istio's condition keys that Detour reads (request.auth.* needs JWT, which Detour has not).
CONDITION_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "request.headers[NAME]",
)


@dataclass(frozen=True, slots=True)
class Condition:
    """``when``: ``key`` is one of CONDITION_KEYS; the attribute must match one of
    ``values`` (when given) and none of ``not_values``. For ``source.ip`` and
    ``destination.ip`` the values are addresses or CIDR blocks; for ``destination.port``,
    port numbers; otherwise string matches. ``header`` is the lowercased header name of a
    ``request.headers[...]`` key."""

    key: str
    values: tuple[StringMatch, ...] = ()
    not_values: tuple[StringMatch, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    not_networks: tuple[IPNetwork, ...] = ()
    header: str = ""

    @property
    def http_only(self) -> bool:
        return self.key == "request.headers"


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[Source, ...] = ()  # "from": any of them; none given: anyone
    operations: tuple[Operation, ...] = ()  # "to": any of them; none given: anything
    conditions: tuple[Condition, ...] = ()  # "when": all of them

    @property
    def http_only(self) -> bool:
        """Whether the rule names anything only HTTP has: on a TCP connection an ALLOW rule
        that does never matches, and a DENY rule matches with those parts left out (Istio's
        rule: a policy must never let through more over TCP than over HTTP)."""
        return any(op.http_only for op in self.operations) or any(
            condition.http_only for condition in self.conditions
        )


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    name: str
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()  # none: the policy matches nothing
