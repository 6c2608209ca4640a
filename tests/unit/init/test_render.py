"""render: iptables-restore text for a rule set, the render plan, and install/cleanup transitions.

``apply_restore`` below is a small model of ``iptables-restore --noflush`` (declare = create or
flush, -A, -D, -X with its "empty and unreferenced" precondition). It lets us check that a
transition, applied to what is installed, produces exactly what was wanted and leaves other
rules alone. The real semantics are exercised by the e2e tests in network namespaces.
"""

from __future__ import annotations

import re

import pytest

from init.config import CaptureConfig, parse_config
from init.render import render_plan, render_ruleset, transition
from init.rules import BUILTIN_CHAINS, TABLE_ORDER, RuleSet, build_rules
from init.state import DetourView, detour_view, parse_save, view_of_ruleset

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "tproxy": {"mode": "TPROXY"},
    "dns": {"capture_dns": "true"},
    "drop-invalid": {"drop_invalid": "true"},
    "inbound-disabled": {"inbound_ports": ""},
    "exclusions": {
        "exclude_outbound_ports": ",".join(str(p) for p in range(7001, 7021)),
        "exclude_outbound_cidrs": "10.0.0.0/8,fd00::/8",
        "exclude_interfaces": "eth1",
    },
    "custom-ports": {"outbound_port": "16001", "inbound_port": "16006"},
    "everything": {
        "mode": "TPROXY",
        "capture_dns": "true",
        "drop_invalid": "true",
        "proxy_uids": "1337,1338",
        "outbound_ports": "80,443",
    },
}


def config_of(**flags: str) -> CaptureConfig:
    return parse_config(flags, {})


def build(name: str, family: int = 4) -> RuleSet:
    return build_rules(config_of(**CONFIGS[name]), family)


def blocks(text: str) -> list[list[str]]:
    """Split restore text into table blocks (lists of lines from '*table' to 'COMMIT')."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            assert current is None, "a table block started before the previous COMMIT"
            current = [line]
        elif line == "COMMIT":
            assert current is not None, "COMMIT outside a table block"
            current.append(line)
            out.append(current)
            current = None
        elif current is not None:
            current.append(line)
        else:
            assert not line or line.startswith("#"), f"stray line outside a block: {line}"
    assert current is None, "the last table block has no COMMIT"
    return out


# --- a model of iptables-restore --noflush -----------------------------------------------------

State = dict[str, dict[str, list[str]]]  # table -> chain -> rule specs


def empty_state() -> State:
    return {name: {c: [] for c in BUILTIN_CHAINS[name]} for name in TABLE_ORDER}


def jump_target(rule_spec: str) -> str | None:
    match = re.search(r"(?:^|\s)-[jg] (\S+)", rule_spec)
    return match.group(1) if match else None


def apply_restore(state: State, text: str) -> None:
    for block in blocks(text):
        table = state[block[0][1:]]
        for line in block[1:-1]:
            if line.startswith(":"):
                chain = line[1:].split()[0]
                table[chain] = []  # create, or flush when it exists
            elif line.startswith("-A "):
                chain, _, rule = line[3:].partition(" ")
                assert chain in table, f"-A to a missing chain: {line}"
                jumped = jump_target(rule)
                if jumped and jumped.startswith("DETOUR_"):
                    assert jumped in table, f"jump to a missing chain: {line}"
                table[chain].append(rule)
            elif line.startswith("-D "):
                chain, _, rule = line[3:].partition(" ")
                assert rule in table.get(chain, []), f"-D of a rule that is not there: {line}"
                table[chain].remove(rule)
            elif line.startswith("-X "):
                chain = line[3:]
                assert chain in table and chain not in BUILTIN_CHAINS[block[0][1:]], line
                assert table[chain] == [], f"-X of a non-empty chain: {line}"
                referenced = [
                    r for rules in table.values() for r in rules if jump_target(r) == chain
                ]
                assert not referenced, f"-X of a chain still referenced: {line}"
                del table[chain]
            else:
                assert line.startswith("#"), f"unexpected restore line: {line}"


def save_text(state: State) -> str:
    """The model state in iptables-save form."""
    lines = []
    for name, chains in state.items():
        lines.append(f"*{name}")
        for chain in chains:
            policy = "ACCEPT" if chain in BUILTIN_CHAINS[name] else "-"
            lines.append(f":{chain} {policy} [0:0]")
        for chain, rules in chains.items():
            lines.extend(f"-A {chain} {rule}" for rule in rules)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def model_view(state: State) -> DetourView:
    return detour_view(parse_save(save_text(state)))


HOST_RULES = [
    ("nat", "POSTROUTING", "-o eth0 -j MASQUERADE"),
    ("nat", "OUTPUT", "-d 10.255.0.1/32 -p tcp -j DNAT --to-destination 10.255.0.2:80"),
    ("mangle", "PREROUTING", "-p udp -j ACCEPT"),
]


def host_state() -> State:
    state = empty_state()
    for table, chain, rule in HOST_RULES:
        state[table][chain].append(rule)
    state["nat"]["KUBE-SERVICES"] = ["-d 10.96.0.1/32 -p tcp -j RETURN"]
    state["nat"]["OUTPUT"].append("-j KUBE-SERVICES")
    return state


def host_rules_of(state: State) -> list[tuple[str, str, str]]:
    return [
        (t, c, r)
        for t, chains in state.items()
        for c, rules in chains.items()
        if not c.startswith("DETOUR_")
        for r in rules
        if not (jump_target(r) or "").startswith("DETOUR_")
    ]


# --- render_ruleset ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_render_is_valid_restore_shape(name: str, family: int) -> None:
    ruleset = build(name, family)
    text = render_ruleset(ruleset)
    assert text.endswith("COMMIT\n")
    found = blocks(text)
    assert [b[0] for b in found] == [f"*{t.name}" for t in ruleset.tables]
    for block, table in zip(found, ruleset.tables, strict=True):
        declared = [line for line in block if line.startswith(":")]
        assert declared == [f":{c} - [0:0]" for c in table.chains]
        # Chains are declared before any rule uses them.
        first_rule = next(i for i, line in enumerate(block) if line.startswith("-A "))
        assert all(block.index(d) < first_rule for d in declared)
        body = [line for line in block[1:-1] if not line.startswith(":")]
        assert len(body) == 2 * len(table.rules)  # "# reason" then "-A ..." for each rule
        for i, rule in enumerate(table.rules):
            assert body[2 * i] == f"# {rule.reason}"
            assert body[2 * i + 1] == f"-A {rule.chain} {rule.spec}"


def test_render_without_reasons_has_no_comments() -> None:
    ruleset = build("everything")
    text = render_ruleset(ruleset, reasons=False)
    assert not any(line.startswith("#") for line in text.splitlines())
    assert sum(line.startswith("-A ") for line in text.splitlines()) == sum(
        len(t.rules) for t in ruleset.tables
    )


def test_rendered_text_applied_to_a_clean_namespace_gives_the_ruleset() -> None:
    for name in CONFIGS:
        ruleset = build(name)
        state = empty_state()
        apply_restore(state, render_ruleset(ruleset))
        assert model_view(state) == view_of_ruleset(ruleset), name


# --- render_plan -------------------------------------------------------------------------------


def test_render_plan_headers_and_routes() -> None:
    plan = render_plan([build("tproxy", 4), build("tproxy", 6)])
    lines = plan.splitlines()
    assert plan.endswith("\n") and "" not in lines
    assert lines[0] == "# ==== IPv4: iptables-restore --noflush ===="
    assert "# ==== IPv6: ip6tables-restore --noflush ====" in lines
    v4_routes = lines.index("# ==== IPv4: policy routing (pyroute2) ====")
    v6_header = lines.index("# ==== IPv6: ip6tables-restore --noflush ====")
    assert v4_routes < v6_header
    assert "# ip rule add fwmark 1337 lookup 133" in lines
    assert "# ip route add local 0.0.0.0/0 dev lo table 133" in lines
    assert "# ip -6 rule add fwmark 1337 lookup 133" in lines
    assert "# ip -6 route add local ::/0 dev lo table 133" in lines
    # Without the comment lines, what is left is restore input for both families.
    assert len(blocks(plan)) == len(build("tproxy", 4).tables) + len(build("tproxy", 6).tables)


def test_render_plan_redirect_mode_mentions_no_routing() -> None:
    plan = render_plan([build("default", 4)])
    assert "policy routing" not in plan and "fwmark" not in plan
    assert "ip6tables" not in plan
    assert render_ruleset(build("default", 4)).rstrip("\n") in plan


# --- transition --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transition_from_nothing_adds_every_rule(name: str, family: int) -> None:
    ruleset = build(name, family)
    text = transition(DetourView({}), ruleset)
    lines = text.splitlines()
    for table in ruleset.tables:
        block = next(b for b in blocks(text) if b[0] == f"*{table.name}")
        for chain in table.chains:
            assert f":{chain} - [0:0]" in block
        added = [line for line in block if line.startswith("-A ")]
        assert sorted(added) == sorted(f"-A {r.chain} {r.spec}" for r in table.rules)
        # Order only matters within a chain, and there it must be the rendered order.
        for chain in {r.chain for r in table.rules}:
            assert [a for a in added if a.split()[1] == chain] == [
                f"-A {chain} {r.spec}" for r in table.rules if r.chain == chain
            ]
    assert not any(line.startswith(("-D ", "-X ")) for line in lines)
    assert [b[0][1:] for b in blocks(text)] == [t.name for t in ruleset.tables]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transition_to_what_is_installed_is_empty(name: str, family: int) -> None:
    ruleset = build(name, family)
    assert transition(view_of_ruleset(ruleset), ruleset) == ""
    assert transition(view_of_ruleset(ruleset), build(name, family)) == ""


def test_transition_from_nothing_to_nothing_is_empty() -> None:
    assert transition(DetourView({}), None) == ""


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cleanup_deletes_every_jump_and_chain(name: str, family: int) -> None:
    ruleset = build(name, family)
    text = transition(view_of_ruleset(ruleset), None)
    assert not any(line.startswith("-A ") for line in text.splitlines())
    found = {b[0][1:]: b for b in blocks(text)}
    assert set(found) == {t.name for t in ruleset.tables}
    for table in ruleset.tables:
        block = found[table.name]
        deletes = [i for i, line in enumerate(block) if line.startswith("-D ")]
        removals = [i for i, line in enumerate(block) if line.startswith("-X ")]
        for rule in table.rules:
            if rule.chain in BUILTIN_CHAINS[table.name]:
                assert f"-D {rule.chain} {rule.spec}" in block
        assert {block[i] for i in removals} == {f"-X {c}" for c in table.chains}
        # Jumps go before their chains are deleted; chains are flushed (declared) first too.
        assert max(deletes) < min(removals)
        for chain in table.chains:
            assert block.index(f":{chain} - [0:0]") < block.index(f"-X {chain}")


def test_tproxy_to_redirect_removes_the_mangle_chains_in_the_same_transition() -> None:
    before, after = build("tproxy"), build("default")
    text = transition(view_of_ruleset(before), after)
    found = {b[0][1:]: b for b in blocks(text)}
    mangle = found["mangle"]
    for chain in ("DETOUR_DIVERT", "DETOUR_TPROXY", "DETOUR_INBOUND", "DETOUR_OUTPUT"):
        assert f"-X {chain}" in mangle
    assert "-D PREROUTING -p tcp -j DETOUR_INBOUND" in mangle
    assert "-D OUTPUT -p tcp -j DETOUR_OUTPUT" in mangle
    assert not any(line.startswith("-A ") for line in mangle)
    assert "-A PREROUTING -p tcp -j DETOUR_INBOUND" in found["nat"]
    state = empty_state()
    apply_restore(state, render_ruleset(before))
    apply_restore(state, text)
    assert model_view(state) == view_of_ruleset(after)
    assert "DETOUR_DIVERT" not in state["mangle"]


PAIRS = [(a, b) for a in [*CONFIGS, None] for b in [*CONFIGS, None]]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_transition_between_any_two_configs(old: str | None, new: str | None, family: int) -> None:
    state = host_state()
    host_before = host_rules_of(state)
    if old is not None:
        apply_restore(state, transition(DetourView({}), build(old, family)))
    wanted = None if new is None else build(new, family)
    text = transition(model_view(state), wanted)
    apply_restore(state, text)
    expected = DetourView({}) if wanted is None else view_of_ruleset(wanted)
    assert model_view(state) == expected
    assert host_rules_of(state) == host_before, "other rules must be left alone"
    assert "KUBE-SERVICES" in state["nat"]
    if wanted is None:
        assert not any(c.startswith("DETOUR_") for t in state.values() for c in t)
    # And now it is converged: nothing more to do.
    assert transition(model_view(state), wanted) == ""
