"""Reading ``iptables-save`` output: what Detour has installed, and a whole-table fingerprint.

Pure parsing. ``DetourView`` is the part of a table Detour owns (its chains, their rules, and
the jumps into them from built-in chains), in a shape that both the rendered rule set and the
kernel's report can be turned into, so "installed equals rendered" is a plain ``==``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from init.rules import CHAIN_PREFIX, RuleSet

_JUMP_TO_DETOUR = re.compile(rf"(?:^|\s)-[jg] {CHAIN_PREFIX}\S*$")


@dataclass(frozen=True)
class TableView:
    """Detour's chains in one table and, per chain, its rules in order."""

    chains: frozenset[str]
    rules: dict[str, tuple[str, ...]] = field(hash=False)
    chains_in_order: tuple[str, ...] = field(default=(), compare=False)

    @staticmethod
    def empty() -> TableView:
        return TableView(frozenset(), {})

    def builtin_rules(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(c, specs) for c, specs in self.rules.items() if not c.startswith(CHAIN_PREFIX)]

    @property
    def is_empty(self) -> bool:
        return not self.chains and not any(self.rules.values())


@dataclass(frozen=True)
class DetourView:
    """Detour's part of every table of one family."""

    tables: dict[str, TableView]

    @property
    def is_empty(self) -> bool:
        return all(t.is_empty for t in self.tables.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DetourView):
            return NotImplemented
        mine = {k: v for k, v in self.tables.items() if not v.is_empty}
        theirs = {k: v for k, v in other.tables.items() if not v.is_empty}
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SavedTable:
    """One ``*table`` block of iptables-save output."""

    name: str
    policies: tuple[str, ...]  # ":CHAIN POLICY" for built-in chains, counters removed
    chains: tuple[str, ...]  # user-defined chains, as declared
    rules: tuple[tuple[str, str], ...]  # (chain, spec)


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse iptables-save (either backend) into tables; comments and counters are dropped."""
    tables: dict[str, SavedTable] = {}
    name, policies, chains, rules = None, [], [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name, policies, chains, rules = line[1:], [], [], []
        elif line == "COMMIT" and name is not None:
            tables[name] = SavedTable(name, tuple(policies), tuple(chains), tuple(rules))
            name = None
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if policy == "-":
                chains.append(chain)
            else:
                policies.append(f":{chain} {policy}")
        elif line.startswith("-A ") or (line.startswith("[") and "] -A " in line):
            # "iptables-save -c" prefixes each rule with "[packets:bytes] ".
            chain, _, rule_spec = line[line.index("-A ") + 3 :].partition(" ")
            rules.append((chain, rule_spec))
    return tables


def detour_view(tables: dict[str, SavedTable]) -> DetourView:
    """Detour's chains, their rules, and the jumps into them, from parsed iptables-save."""
    views: dict[str, TableView] = {}
    for name, table in tables.items():
        ours = tuple(c for c in table.chains if c.startswith(CHAIN_PREFIX))
        rules: dict[str, list[str]] = {}
        for chain, rule_spec in table.rules:
            if chain.startswith(CHAIN_PREFIX) or _JUMP_TO_DETOUR.search(rule_spec):
                rules.setdefault(chain, []).append(rule_spec)
        view = TableView(frozenset(ours), {c: tuple(s) for c, s in rules.items()}, ours)
        if not view.is_empty:
            views[name] = view
    return DetourView(views)


def view_of_ruleset(ruleset: RuleSet) -> DetourView:
    """The DetourView that installing ``ruleset`` must produce."""
    views: dict[str, TableView] = {}
    for table in ruleset.tables:
        rules: dict[str, list[str]] = {}
        for rule in table.rules:
            rules.setdefault(rule.chain, []).append(rule.spec)
        views[table.name] = TableView(
            frozenset(table.chains), {c: tuple(s) for c, s in rules.items()}, table.chains
        )
    return DetourView(views)


def fingerprint(text: str) -> str:
    """A whole-family fingerprint of iptables-save output, for "nothing else changed" checks.

    Comments and counters are dropped, and a table that holds only its built-in chains with
    ACCEPT policies is treated as absent: the legacy backend instantiates a table in a
    namespace the first time anything looks at it, which is not a change of rules.
    """
    out: list[str] = []
    for name in sorted(tables := parse_save(text)):
        table = tables[name]
        pristine = (
            not table.chains
            and not table.rules
            and all(p.endswith(" ACCEPT") for p in table.policies)
        )
        if pristine:
            continue
        out.append(f"*{name}")
        out.extend(sorted(table.policies))
        out.extend(f":{c}" for c in sorted(table.chains))
        out.extend(f"-A {c} {s}" for c, s in table.rules)
    return "\n".join(out)
