"""Reading the legacy tables back through python-iptables (libiptc), for ``show`` and verify.

``iptables-save`` text is the byte-for-byte check; this is the second, independent reader: it
walks the kernel's tables through libiptc and reports each Detour rule's target and counters.
python-iptables only speaks to the legacy backend, so the nft backend has no such reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from init.rules import CHAIN_PREFIX, RuleSet


@dataclass(frozen=True)
class RuleCount:
    """One rule as libiptc sees it: where, what it jumps to, and how much it matched."""

    table: str
    chain: str
    target: str
    packets: int
    bytes: int


def read_detour_rules(family: int, tables: tuple[str, ...]) -> list[RuleCount]:
    """Detour's rules (and the jumps into its chains) in ``tables``, in kernel order."""
    import iptc  # libiptc is loaded on import; keep it out of code paths that never need it

    table_class = iptc.Table6 if family == 6 else iptc.Table
    found: list[RuleCount] = []
    for name in tables:
        table = table_class(name)
        table.refresh()
        # Walk libiptc's entries directly: python-iptables' Rule objects load each extension's
        # .so to decode its options, and that fails for some (REDIRECT in ip6tables, seen on
        # iptables 1.8.9). The target's name and the counters need no extension.
        for chain in table.chains:
            entry = table.first_rule(chain.name)
            while entry:
                raw_target = table.get_target(entry)
                target = raw_target.decode() if raw_target else ""
                if chain.name.startswith(CHAIN_PREFIX) or target.startswith(CHAIN_PREFIX):
                    found.append(
                        RuleCount(
                            name, chain.name, target, entry.counters.pcnt, entry.counters.bcnt
                        )
                    )
                entry = table.next_rule(entry)
    return found


def targets_by_chain(counts: list[RuleCount]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for count in counts:
        grouped.setdefault((count.table, count.chain), []).append(count.target)
    return grouped


def expected_targets(ruleset: RuleSet | None) -> dict[tuple[str, str], list[str]]:
    """The targets libiptc must report for ``ruleset``: the first word after ``-j``."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for table in ruleset.tables if ruleset else ():
        for rule in table.rules:
            target = (
                rule.spec.split(" -j ", 1)[1].split()[0]
                if " -j " in rule.spec
                else rule.spec.removeprefix("-j ").split()[0]
            )
            grouped.setdefault((table.name, rule.chain), []).append(target)
    return grouped


def cross_check(family: int, ruleset: RuleSet | None, tables: tuple[str, ...]) -> list[str]:
    """Differences between what libiptc reports and what ``ruleset`` needs, one line each."""
    got = targets_by_chain(read_detour_rules(family, tables))
    want = expected_targets(ruleset)
    problems = []
    for key in sorted(set(got) | set(want)):
        if got.get(key, []) != want.get(key, []):
            problems.append(
                f"IPv{family} {key[0]}/{key[1]}: targets {got.get(key, [])} "
                f"where {want.get(key, [])} were rendered"
            )
    return problems
