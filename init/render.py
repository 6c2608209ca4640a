"""Rendering rule sets as ``iptables-restore`` input, and the transition from what is installed.

All pure. ``render_ruleset`` is what ``detour-init render`` prints and what the golden files
hold. ``transition`` is what ``apply`` and ``cleanup`` feed to ``iptables-restore --noflush``:
one block per table that removes Detour's old jumps, (re)declares its chains, adds the new
rules and deletes chains no longer wanted, so each table changes in a single commit.
"""

from __future__ import annotations

from init.rules import TABLE_ORDER, RuleSet
from init.state import DetourView, TableView, view_of_ruleset


def render_ruleset(ruleset: RuleSet, reasons: bool = True) -> str:
    """The rule set as iptables-restore text (for ``--noflush``), each rule after its reason."""
    lines: list[str] = []
    for table in ruleset.tables:
        lines.append(f"*{table.name}")
        lines.extend(f":{chain} - [0:0]" for chain in table.chains)
        for rule in table.rules:
            if reasons:
                lines.append(f"# {rule.reason}")
            lines.append(f"-A {rule.chain} {rule.spec}")
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def render_plan(rulesets: list[RuleSet]) -> str:
    """What ``detour-init render`` prints: each family's restore text and its policy routing."""
    out: list[str] = []
    for ruleset in rulesets:
        tool = "iptables" if ruleset.family == 4 else "ip6tables"
        out.append(f"# ==== IPv{ruleset.family}: {tool}-restore --noflush ====")
        out.append(render_ruleset(ruleset).rstrip("\n"))
        if ruleset.routes:
            out.append(f"# ==== IPv{ruleset.family}: policy routing (pyroute2) ====")
            for route in ruleset.routes:
                out.extend(f"# {line}" for line in route.describe())
        if ruleset.lo_addresses:
            out.append(f"# ==== IPv{ruleset.family}: loopback addresses (pyroute2) ====")
            out.extend(f"# ip -6 addr add {address} dev lo" for address in ruleset.lo_addresses)
    return "\n".join(line for line in out if line) + "\n"


def transition(installed: DetourView, wanted: RuleSet | None) -> str:
    """Restore text that turns the installed Detour rules into ``wanted`` (None = remove all).

    Only tables that change appear; an empty string means nothing to do.
    """
    target = view_of_ruleset(wanted) if wanted is not None else DetourView({})
    blocks: list[str] = []
    for name in TABLE_ORDER:
        have = installed.tables.get(name, TableView.empty())
        want = target.tables.get(name, TableView.empty())
        if have == want:
            continue
        lines = [f"*{name}"]
        # 1. Jumps from built-in chains into our chains: delete each one installed.
        for chain, specs in have.builtin_rules():
            lines.extend(f"-D {chain} {rule}" for rule in specs)
        # 2. Declaring a chain creates it, or flushes it when it exists (both backends).
        declared = sorted(have.chains) + [c for c in want.chains_in_order if c not in have.chains]
        lines.extend(f":{chain} - [0:0]" for chain in declared)
        # 3. The new rules, in order.
        for chain, specs in want.rules.items():
            lines.extend(f"-A {chain} {rule}" for rule in specs)
        # 4. Chains that are no longer wanted are now empty and unreferenced: delete them.
        lines.extend(f"-X {chain}" for chain in sorted(have.chains - want.chains))
        lines.append("COMMIT")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n" if blocks else ""
