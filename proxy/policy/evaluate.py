"""Whether a caller may do what it asks: Istio's order of evaluation over a workload's
policies. Pure.

1. if any DENY policy matches, the request is denied;
2. if the workload has no ALLOW policy, it is allowed;
3. if any ALLOW policy matches, it is allowed; otherwise it is denied.

A TCP connection (``request=None``) has no HTTP attributes: an ALLOW rule that names any
(hosts, methods, paths, request headers) never matches it, and a DENY rule that does matches
with those parts left out, so a policy never lets more through over TCP than over HTTP
(Istio's builder drops the one and trims the other). Hosts are matched lowercase, and a
pattern without a port also matches the host part of an authority that has one
(``example.com`` matches ``example.com:8080``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.policy.model import (
    Action,
    AuthorizationPolicy,
    Condition,
    IPNetwork,
    Operation,
    Rule,
    Source,
    StringMatch,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Peer:
    """What the connection tells about the caller and where it called."""

    address: IPAddress
    destination: IPAddress | None
    port: int  # the destination port (the app's)
    principal: str | None = None  # Istio's form, without "spiffe://"; None: not mTLS
    namespace: str | None = None

    @classmethod
    def of(cls, client: str, destination: tuple[str, int], spiffe_uri: str | None) -> Peer:
        """From the session's addresses and the peer certificate's SPIFFE ID (if any)."""
        principal = namespace = None
        if spiffe_uri is not None and spiffe_uri.startswith("spiffe://"):
            principal = spiffe_uri[len("spiffe://") :]
            parts = principal.split("/")
            if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa":
                namespace = parts[2]
        return cls(_address(client), _address(destination[0]), destination[1], principal, namespace)


@dataclass(frozen=True, slots=True)
class HttpAttributes:
    method: str
    host: str | None  # lowercase, without a trailing dot (paths.normal_host)
    path: str  # normalised (paths.normalize), without the query
    headers: Sequence[tuple[bytes, bytes]] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str  # the policy that decided; "" when none matched (default allow / deny)

    @property
    def reason(self) -> str:
        """Envoy's response code details for a denial."""
        return f"rbac_access_denied_matched_policy[{self.policy or 'none'}]"


ALLOWED_BY_DEFAULT = Verdict(True, "")
DENIED_BY_DEFAULT = Verdict(False, "")


class Authorizer:
    """A workload's policies, split by action once per mesh version."""

    __slots__ = ("_allow", "_deny")

    def __init__(self, policies: Iterable[AuthorizationPolicy]) -> None:
        policies = tuple(policies)
        self._deny = tuple(p for p in policies if p.action is Action.DENY)
        self._allow = tuple(p for p in policies if p.action is Action.ALLOW)

    @property
    def active(self) -> bool:
        """Whether there is anything to check (else the data path skips it)."""
        return bool(self._deny or self._allow)

    def check(self, peer: Peer, request: HttpAttributes | None = None) -> Verdict:
        for policy in self._deny:
            if _policy_matches(policy, peer, request):
                return Verdict(False, policy.name)
        if not self._allow:
            return ALLOWED_BY_DEFAULT
        for policy in self._allow:
            if _policy_matches(policy, peer, request):
                return Verdict(True, policy.name)
        return DENIED_BY_DEFAULT


def _policy_matches(
    policy: AuthorizationPolicy, peer: Peer, request: HttpAttributes | None
) -> bool:
    deny = policy.action is Action.DENY
    for rule in policy.rules:
        if request is None and rule.http_only and not deny:
            continue  # an ALLOW rule about HTTP lets no TCP connection through
        if _rule_matches(rule, peer, request):
            return True
    return False


def _rule_matches(rule: Rule, peer: Peer, request: HttpAttributes | None) -> bool:
    if rule.sources and not any(_source_matches(s, peer) for s in rule.sources):
        return False
    if rule.operations and not any(_operation_matches(o, peer, request) for o in rule.operations):
        return False
    return all(_condition_matches(c, peer, request) for c in rule.conditions)


def _source_matches(source: Source, peer: Peer) -> bool:
    return (
        _included(source.principals, source.not_principals, peer.principal)
        and _included(source.namespaces, source.not_namespaces, peer.namespace)
        and _in_blocks(source.ip_blocks, source.not_ip_blocks, peer.address)
    )


def _operation_matches(operation: Operation, peer: Peer, request: HttpAttributes | None) -> bool:
    if operation.ports and peer.port not in operation.ports:
        return False
    if peer.port in operation.not_ports:
        return False
    if request is None:
        return True  # HTTP fields: left out (a DENY rule; an ALLOW one never gets here)
    if not _included(operation.methods, operation.not_methods, request.method):
        return False
    if not _included(operation.paths, operation.not_paths, request.path):
        return False
    if operation.hosts and not any(_host_matches(h, request.host) for h in operation.hosts):
        return False
    return not any(_host_matches(h, request.host) for h in operation.not_hosts)


def _condition_matches(condition: Condition, peer: Peer, request: HttpAttributes | None) -> bool:
    key = condition.key
    if key in ("source.ip", "destination.ip"):
        address = peer.address if key == "source.ip" else peer.destination
        return _in_blocks(condition.networks, condition.not_networks, address)
    if key == "destination.port":
        value: str | None = str(peer.port)
    elif key == "source.principal":
        value = peer.principal
    elif key == "source.namespace":
        value = peer.namespace
    else:  # request.headers[...]
        if request is None:
            return True  # left out (DENY); an ALLOW rule naming it never gets here
        value = _header(request.headers, condition.header)
    return _included(condition.values, condition.not_values, value)


def _included(
    wanted: tuple[StringMatch, ...], unwanted: tuple[StringMatch, ...], value: str | None
) -> bool:
    """Matches one of ``wanted`` (when any is given) and none of ``unwanted``."""
    if wanted and not any(m.matches(value) for m in wanted):
        return False
    return not any(m.matches(value) for m in unwanted)


def _in_blocks(
    wanted: tuple[IPNetwork, ...], unwanted: tuple[IPNetwork, ...], address: IPAddress | None
) -> bool:
    if wanted and (address is None or not any(address in block for block in wanted)):
        return False
    return address is None or not any(address in block for block in unwanted)


def _host_matches(pattern: StringMatch, host: str | None) -> bool:
    if pattern.matches(host):
        return True
    if host is None or _without_port(pattern.value) != pattern.value:
        return False  # the pattern names a port ("[::1]" does not: its colons are the address's)
    bare = _without_port(host)
    return bare != host and pattern.matches(bare)


def _without_port(authority: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[::1]:80`` → ``[::1]``."""
    head, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and (not head.startswith("[") or head.endswith("]")):
        return head
    return authority


def _header(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.encode("latin-1")
    values = [value for key, value in headers if key == wanted]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return address
