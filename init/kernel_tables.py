"""What an iptables backend holds in this namespace's kernel when its tools are not installed.

``detour-init`` reads a backend through its ``*-save`` tool. Where one backend's tools are
missing (a slim image with iptables-legacy only, say) its rules may still be in the kernel,
put there by another container of the pod or by the host's own image: choosing the other
backend silently would then stack two interception layers that cannot see each other. These
read the kernel directly, without the tools: the legacy tables through libiptc
(python-iptables), which needs no iptables binary; the nft backend's tables (iptables-nft
writes tables named like iptables' in the ``ip`` and ``ip6`` families) over netlink, with
pyroute2. Both only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from init.rules import CHAIN_PREFIX

# The tables iptables (either backend) knows; an nft table of another name is nft's own.
IPTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_NFPROTO = {4: 2, 6: 10}  # NFPROTO_IPV4, NFPROTO_IPV6
_LEGACY_NAMES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


@dataclass(frozen=True)
class KernelRules:
    """Rules a backend holds in the kernel, and whether any chain is Detour's."""

    rules: int = 0
    has_detour: bool = False
    tables: tuple[str, ...] = ()  # "nat (IPv4)", ...: what to name in a message


def legacy_rules(families: tuple[int, ...]) -> KernelRules:
    """The legacy backend's rules: only tables the kernel already has in this namespace (in
    /proc/net/ip*_tables_names) are opened, since opening one through libiptc would create
    it."""
    rules, has_detour, tables = 0, False, []
    for family in families:
        names = Path(_LEGACY_NAMES[family])
        if not names.exists():
            continue  # no legacy table module loaded: no legacy rules anywhere
        for name in names.read_text().split():
            count, detour = _legacy_table(family, name)
            rules += count
            has_detour = has_detour or detour
            if count or detour:
                tables.append(f"{name} (IPv{family})")
    return KernelRules(rules, has_detour, tuple(tables))


def _legacy_table(family: int, name: str) -> tuple[int, bool]:
    import iptc  # libiptc is loaded on import: only here, where it is needed

    table = (iptc.Table6 if family == 6 else iptc.Table)(name)
    table.refresh()
    count, detour = 0, False
    for chain in table.chains:
        detour = detour or chain.name.startswith(CHAIN_PREFIX)
        entry = table.first_rule(chain.name)  # entries, not Rule objects: no extension needed
        while entry:
            count += 1
            entry = table.next_rule(entry)
    return count, detour


def nft_rules(families: tuple[int, ...]) -> KernelRules:
    """The nft backend's rules in iptables' tables of the ``ip``/``ip6`` families."""
    from pyroute2.nftables.main import NFTables

    rules, has_detour, tables = 0, False, []
    for family in families:
        nft = NFTables(nfgen_family=_NFPROTO[family])
        try:
            per_table: dict[str, int] = {}
            for rule in nft.get_rules():
                table = rule.get_attr("NFTA_RULE_TABLE")
                per_table[table] = per_table.get(table, 0) + 1
            for chain in nft.get_chains():
                table = chain.get_attr("NFTA_CHAIN_TABLE")
                if table in IPTABLES_TABLES and chain.get_attr("NFTA_CHAIN_NAME").startswith(
                    CHAIN_PREFIX
                ):
                    has_detour = True
                    per_table.setdefault(table, 0)
        finally:
            nft.close()
        for table, count in sorted(per_table.items()):
            if table in IPTABLES_TABLES:
                rules += count
                tables.append(f"{table} (IPv{family})")
    return KernelRules(rules, has_detour, tuple(tables))


def kernel_rules(kind: str, families: tuple[int, ...]) -> KernelRules:
    return legacy_rules(families) if kind == "legacy" else nft_rules(families)
