"""Rules as data: the interception rule set for one address family, built by a pure function.

``build_rules(config, family)`` returns a :class:`RuleSet`: tables, the Detour chains in each,
and every rule with a one-line reason. Each rule's text is written in the canonical form that
``iptables-save`` prints (both the legacy and the nft backend print it identically), so what we
render can be compared byte for byte with what the kernel reports back.

Invariant that makes cleanup complete: every rule placed in a built-in chain (PREROUTING,
OUTPUT, ...) is a jump to a ``DETOUR_*`` chain. Removing those jumps and the ``DETOUR_*`` chains
removes everything Detour ever added, and nothing else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from detour_common.conventions import TPROXY_MARK, TPROXY_ROUTE_TABLE
from init.config import (
    INBOUND_PASSTHROUGH_V4,
    INBOUND_PASSTHROUGH_V6,
    CaptureConfig,
    IPNetwork,
)

CHAIN_PREFIX = "DETOUR_"
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
TABLE_ORDER = ("raw", "mangle", "nat")
MULTIPORT_MAX = 15  # xt_multiport accepts at most 15 ports per rule.
DNS_PORT = 53
# Conntrack zones for DNS (as Istio): the proxy's own upstream queries and their answers live in
# zone 1; an app's redirected query and the DNS proxy's answer to it live in zone 2. Without the
# split, an app query and a proxy query with the same 5-tuple would share one conntrack entry
# and the answers would be delivered to the wrong socket.
UPSTREAM_DNS_ZONE = 1
APP_DNS_ZONE = 2


@dataclass(frozen=True)
class Rule:
    """One ``-A chain spec`` line and why it exists."""

    chain: str
    spec: str
    reason: str


@dataclass(frozen=True)
class Table:
    """Detour's part of one iptables table: the chains it creates and its rules, in order."""

    name: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class PolicyRoute:
    """TPROXY policy routing: ``ip rule fwmark MARK lookup TABLE`` + ``local default dev lo``."""

    family: int
    mark: int
    table: int

    def describe(self) -> list[str]:
        ip = "ip" if self.family == 4 else "ip -6"
        default = "0.0.0.0/0" if self.family == 4 else "::/0"
        return [
            f"{ip} rule add fwmark {self.mark} lookup {self.table}",
            f"{ip} route add local {default} dev lo table {self.table}",
        ]


@dataclass(frozen=True)
class RuleSet:
    """Everything Detour installs for one address family."""

    family: int
    tables: tuple[Table, ...]
    routes: tuple[PolicyRoute, ...]
    # Addresses Detour puts on lo: ::6, the IPv6 inbound passthrough source. 127.0.0.6 needs
    # nothing (all of 127/8 is local), but ::6 must exist for the app's replies to come back.
    lo_addresses: tuple[str, ...] = ()

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


# --- canonical rule text ------------------------------------------------------------------


def spec(
    *,
    target: str,
    src: str | None = None,
    dst: str | None = None,
    not_dst: str | None = None,
    in_iface: str | None = None,
    out_iface: str | None = None,
    proto: str | None = None,
    matches: Sequence[str] = (),
) -> str:
    """Rule text in iptables-save's own order: -s, -d, -i, -o, -p, matches, -j."""
    parts: list[str] = []
    if src:
        parts.append(f"-s {src}")
    if dst:
        parts.append(f"-d {dst}")
    if not_dst:
        parts.append(f"! -d {not_dst}")
    if in_iface:
        parts.append(f"-i {in_iface}")
    if out_iface:
        parts.append(f"-o {out_iface}")
    if proto:
        parts.append(f"-p {proto}")
    parts.extend(matches)
    parts.append(f"-j {target}")
    return " ".join(parts)


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"{address}/{address.max_prefixlen}"


def _port_matches(proto: str, ports: Sequence[int], negate: bool = False) -> list[list[str]]:
    """Match text for a port list: ``-m tcp --dport`` for one, multiport chunks of 15 for more."""
    bang = "! " if negate else ""
    if len(ports) == 1:
        return [[f"-m {proto} {bang}--dport {ports[0]}"]]
    chunks = [ports[i : i + MULTIPORT_MAX] for i in range(0, len(ports), MULTIPORT_MAX)]
    return [[f"-m multiport {bang}--dports {','.join(map(str, c))}"] for c in chunks]


def _owner(kind: str, ident: int, negate: bool = False) -> str:
    return f"-m owner {'! ' if negate else ''}--{kind}-owner {ident}"


def _mark_hex(value: int) -> str:
    return f"{value:#x}"


# --- the builder -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """The per-family constants the rules mention."""

    number: int
    loopback_net: str
    loopback_host: str
    passthrough: str
    any_address: str


_FAMILIES = {
    4: _Family(4, "127.0.0.0/8", "127.0.0.1/32", _host(INBOUND_PASSTHROUGH_V4), "0.0.0.0"),
    6: _Family(6, "::1/128", "::1/128", _host(INBOUND_PASSTHROUGH_V6), "::"),
}


class _TableBuilder:
    """Collects one table's chains and rules in the order they are added."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: list[str] = []
        self.rules: list[Rule] = []

    def chain(self, name: str) -> str:
        if name not in self.chains:
            self.chains.append(name)
        return name

    def add(self, chain: str, rule_spec: str, reason: str) -> None:
        builtin = chain in BUILTIN_CHAINS[self.name]
        if builtin and f"-j {CHAIN_PREFIX}" not in rule_spec:
            raise AssertionError(f"built-in chain rule must jump to a Detour chain: {rule_spec}")
        self.rules.append(Rule(chain, rule_spec, reason))

    def build(self) -> Table | None:
        if not self.rules:
            return None
        return Table(self.name, tuple(self.chains), tuple(self.rules))


def build_rules(config: CaptureConfig, family: int) -> RuleSet:
    """The complete rule set for ``family`` (4 or 6). Pure: same config, same rules."""
    fam = _FAMILIES[family]
    nat, mangle, raw = _TableBuilder("nat"), _TableBuilder("mangle"), _TableBuilder("raw")
    inbound = not config.inbound_ports.empty

    nat.add(
        nat.chain("DETOUR_REDIRECT"),
        spec(proto="tcp", target=f"REDIRECT --to-ports {config.outbound_port}"),
        "captured outbound TCP goes to the proxy's outbound listener",
    )
    if inbound:
        _nat_inbound(nat, config)
    _nat_output(nat, config, fam, inbound)
    if config.capture_dns:
        _raw_dns(raw, config)
    if inbound and config.mode == "TPROXY":
        _mangle_tproxy(mangle, config, fam)
    if config.drop_invalid:
        mangle.chain("DETOUR_DROP_INVALID")
        mangle.add(
            "PREROUTING",
            spec(proto="tcp", target="DETOUR_DROP_INVALID"),
            "inbound TCP is checked for conntrack-invalid packets",
        )
        mangle.add(
            "DETOUR_DROP_INVALID",
            spec(matches=["-m conntrack --ctstate INVALID"], target="DROP"),
            "an out-of-window packet would skip de-NAT and reach the app with the proxy's "
            "address, which resets the connection; drop it instead",
        )

    built = {t.name: t for t in (nat.build(), mangle.build(), raw.build()) if t is not None}
    tables = tuple(built[name] for name in TABLE_ORDER if name in built)
    routes: tuple[PolicyRoute, ...] = ()
    if inbound and config.mode == "TPROXY":
        routes = (PolicyRoute(family, TPROXY_MARK, TPROXY_ROUTE_TABLE),)
    lo_addresses = (
        (fam.passthrough,) if inbound and config.mode == "REDIRECT" and family == 6 else ()
    )
    return RuleSet(family, tables, routes, lo_addresses)


def _inbound_exclusions(table: _TableBuilder, chain: str, config: CaptureConfig) -> None:
    """Inbound traffic that is never captured: excluded interfaces and ports."""
    for iface in config.exclude_interfaces:
        table.add(
            chain,
            spec(in_iface=iface, target="RETURN"),
            f"traffic arriving on excluded interface {iface} is never captured",
        )
    if config.inbound_ports.every:
        for match in _port_matches("tcp", config.excluded_inbound_ports):
            table.add(
                chain,
                spec(proto="tcp", matches=match, target="RETURN"),
                "excluded inbound ports (and the sidecar's own 15000/15020/15021/15090) "
                "are delivered directly",
            )


def _inbound_capture(
    table: _TableBuilder, chain: str, config: CaptureConfig, capture_target: str
) -> None:
    """The rule(s) sending captured inbound TCP to ``capture_target``."""
    if config.inbound_ports.every:
        table.add(
            chain,
            spec(proto="tcp", target=capture_target),
            "every other inbound TCP port goes to the proxy's inbound listener",
        )
        return
    ports = [p for p in config.inbound_ports.ports if p not in config.excluded_inbound_ports]
    for match in _port_matches("tcp", ports) if ports else []:
        table.add(
            chain,
            spec(proto="tcp", matches=match, target=capture_target),
            "the listed inbound ports go to the proxy's inbound listener",
        )


def _nat_inbound(nat: _TableBuilder, config: CaptureConfig) -> None:
    nat.chain("DETOUR_INBOUND")
    nat.chain("DETOUR_IN_REDIRECT")
    nat.add(
        "DETOUR_IN_REDIRECT",
        spec(proto="tcp", target=f"REDIRECT --to-ports {config.inbound_port}"),
        "captured inbound TCP goes to the proxy's inbound listener",
    )
    if config.mode == "REDIRECT":
        nat.add(
            "PREROUTING",
            spec(proto="tcp", target="DETOUR_INBOUND"),
            "inbound TCP from other hosts is examined for capture",
        )
    _inbound_exclusions(nat, "DETOUR_INBOUND", config)
    _inbound_capture(nat, "DETOUR_INBOUND", config, "DETOUR_IN_REDIRECT")


def _nat_output(nat: _TableBuilder, config: CaptureConfig, fam: _Family, inbound: bool) -> None:
    chain = nat.chain("DETOUR_OUTPUT")
    nat.add(
        "OUTPUT",
        spec(proto=None if config.capture_dns else "tcp", target=chain),
        "locally generated traffic is examined for capture"
        + (" (UDP too, for DNS)" if config.capture_dns else ""),
    )
    for iface in config.exclude_interfaces:
        nat.add(
            chain,
            spec(out_iface=iface, target="RETURN"),
            f"traffic leaving through excluded interface {iface} is never captured",
        )
    nat.add(
        chain,
        spec(src=fam.passthrough, out_iface="lo", target="RETURN"),
        "inbound passthrough: the proxy forwarding to the local app from "
        f"{fam.passthrough.split('/')[0]} is never captured again",
    )
    # Under TPROXY the proxy forwards inbound connections to the app transparently (from the
    # client's address, with SO_MARK 1337); those must not be redirected back to it.
    tproxy_skip = [f"-m mark ! --mark {_mark_hex(TPROXY_MARK)}"] if config.mode == "TPROXY" else []
    owners = [("uid", u) for u in config.proxy_uids] + [("gid", g) for g in config.proxy_gids]
    for kind, ident in owners:
        if inbound:
            nat.add(
                chain,
                spec(
                    not_dst=fam.loopback_net,
                    out_iface="lo",
                    proto="tcp",
                    matches=[_owner(kind, ident), *tproxy_skip],
                    target="DETOUR_INBOUND",
                ),
                f"the proxy ({kind} {ident}) calling its own pod address over lo is inbound "
                "traffic: send it through the inbound rules"
                + (
                    " (except its transparent connections to the app, which carry the mark)"
                    if tproxy_skip
                    else ""
                ),
            )
        nat.add(
            chain,
            spec(matches=[_owner(kind, ident)], target="RETURN"),
            f"the proxy's own traffic ({kind} {ident}) is never captured: no loops",
        )
    if config.capture_dns:
        for proto in ("udp", "tcp"):
            nat.add(
                chain,
                spec(
                    proto=proto,
                    matches=[f"-m {proto} --dport {DNS_PORT}"],
                    target=f"REDIRECT --to-ports {config.dns_port}",
                ),
                f"app DNS over {proto.upper()} to any server goes to the sidecar's DNS proxy",
            )
    nat.add(
        chain,
        spec(out_iface="lo", target="RETURN"),
        "an app calling itself or localhost over lo is not captured",
    )
    for network in _family_networks(config.exclude_outbound_cidrs, fam.number):
        nat.add(
            chain,
            spec(dst=str(network), target="RETURN"),
            f"excluded destination {network} is never captured",
        )
    for match in (
        _port_matches("tcp", config.exclude_outbound_ports) if config.exclude_outbound_ports else []
    ):
        nat.add(
            chain,
            spec(proto="tcp", matches=match, target="RETURN"),
            "excluded outbound ports are never captured",
        )
    _outbound_capture(nat, chain, config, fam.number)


def _outbound_capture(nat: _TableBuilder, chain: str, config: CaptureConfig, family: int) -> None:
    cidrs = config.outbound_cidrs.for_family(family)
    destinations: list[str | None] = [None] if cidrs.every else [str(n) for n in cidrs.networks]
    ports = config.outbound_ports
    port_matches = (
        [[]] if ports.every else (_port_matches("tcp", ports.ports) if ports.ports else [])
    )
    for destination in destinations:
        for match in port_matches:
            nat.add(
                chain,
                spec(dst=destination, proto="tcp", matches=match, target="DETOUR_REDIRECT"),
                "outbound TCP to "
                + (destination or "any destination")
                + ("" if ports.every else " on the listed ports")
                + " goes to the proxy",
            )


def _raw_dns(raw: _TableBuilder, config: CaptureConfig) -> None:
    out = raw.chain("DETOUR_OUTPUT_DNS")
    inbound = raw.chain("DETOUR_INBOUND_DNS")
    raw.add("OUTPUT", spec(proto="udp", target=out), "outgoing UDP is sorted into DNS zones")
    raw.add(
        "PREROUTING", spec(proto="udp", target=inbound), "incoming UDP is sorted into DNS zones"
    )
    owners = [("uid", u) for u in config.proxy_uids] + [("gid", g) for g in config.proxy_gids]
    for kind, ident in owners:
        raw.add(
            out,
            spec(
                proto="udp",
                matches=[f"-m udp --dport {DNS_PORT}", _owner(kind, ident)],
                target=f"CT --zone {UPSTREAM_DNS_ZONE}",
            ),
            f"the DNS proxy's upstream queries ({kind} {ident}) use zone {UPSTREAM_DNS_ZONE}",
        )
        raw.add(
            out,
            spec(
                proto="udp",
                matches=[f"-m udp --sport {config.dns_port}", _owner(kind, ident)],
                target=f"CT --zone {APP_DNS_ZONE}",
            ),
            f"the DNS proxy's answers to apps ({kind} {ident}) join the app's query in zone "
            f"{APP_DNS_ZONE}",
        )
    raw.add(
        out,
        spec(
            proto="udp", matches=[f"-m udp --dport {DNS_PORT}"], target=f"CT --zone {APP_DNS_ZONE}"
        ),
        f"app DNS queries use zone {APP_DNS_ZONE} (the first CT target wins, so the proxy's "
        "rules above take precedence)",
    )
    raw.add(
        inbound,
        spec(
            proto="udp",
            matches=[f"-m udp --sport {DNS_PORT}"],
            target=f"CT --zone {UPSTREAM_DNS_ZONE}",
        ),
        f"answers from upstream resolvers return to the proxy's zone {UPSTREAM_DNS_ZONE}",
    )


def _mangle_tproxy(mangle: _TableBuilder, config: CaptureConfig, fam: _Family) -> None:
    mark = _mark_hex(TPROXY_MARK)
    full_mark = f"{mark}/0xffffffff"
    inbound = mangle.chain("DETOUR_INBOUND")
    divert = mangle.chain("DETOUR_DIVERT")
    tproxy = mangle.chain("DETOUR_TPROXY")
    output = mangle.chain("DETOUR_OUTPUT")
    mangle.add(
        "PREROUTING",
        spec(proto="tcp", target=inbound),
        "inbound TCP is examined for TPROXY capture",
    )
    mangle.add(
        inbound,
        spec(
            proto="tcp",
            matches=[f"-m mark --mark {mark}"],
            target="CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        ),
        "a packet the proxy marked (its transparent connection to the app): remember the "
        "mark on the connection so the app's replies route back to the proxy",
    )
    mangle.add(
        inbound,
        spec(proto="tcp", matches=[f"-m mark --mark {mark}"], target="RETURN"),
        "packets the proxy marked itself are never diverted again",
    )
    mangle.add(
        inbound,
        spec(in_iface="lo", target="RETURN"),
        "local traffic over lo is never diverted (the proxy's calls to its own pod "
        "address are handled by the nat rules)",
    )
    _inbound_exclusions(mangle, inbound, config)
    mangle.add(
        inbound,
        spec(proto="tcp", matches=["-m conntrack --ctstate RELATED,ESTABLISHED"], target=divert),
        "packets of established connections go straight to their local socket",
    )
    _inbound_capture(mangle, inbound, config, tproxy)
    mangle.add(
        divert,
        spec(target=f"MARK --set-xmark {full_mark}"),
        "mark diverted packets so policy routing delivers them locally",
    )
    mangle.add(divert, spec(target="ACCEPT"), "diverted packets need no further mangling")
    mangle.add(
        tproxy,
        spec(
            not_dst=fam.loopback_host,
            proto="tcp",
            target=f"TPROXY --on-port {config.inbound_port} "
            f"--on-ip {fam.any_address} --tproxy-mark {full_mark}",
        ),
        "new inbound connections go to the proxy's transparent inbound listener with "
        "their original destination kept as the socket's address",
    )
    mangle.add(
        "OUTPUT",
        spec(proto="tcp", target=output),
        "locally generated TCP may need its TPROXY mark restored",
    )
    mangle.add(
        output,
        spec(
            proto="tcp",
            matches=[f"-m connmark --mark {mark}"],
            target="CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        ),
        "the app's replies on a transparent inbound connection carry the mark, so policy "
        "routing returns them to the proxy",
    )


def _family_networks(networks: Iterable[IPNetwork], family: int) -> list[IPNetwork]:
    return [n for n in networks if n.version == family]
