"""rules.build_rules: the invariants that make interception safe (no loops) and cleanup complete."""

from __future__ import annotations

import ipaddress
import re

import pytest

from init.config import CaptureConfig, parse_config
from init.rules import (
    BUILTIN_CHAINS,
    CHAIN_PREFIX,
    MULTIPORT_MAX,
    TABLE_ORDER,
    PolicyRoute,
    RuleSet,
    build_rules,
)

MANY = ",".join(str(p) for p in range(7001, 7021))  # 20 ports

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "tproxy": {"mode": "TPROXY"},
    "tproxy-inbound-ports": {"mode": "TPROXY", "inbound_ports": "8080,9090"},
    "tproxy-inbound-disabled": {"mode": "TPROXY", "inbound_ports": ""},
    "dns": {"capture_dns": "true"},
    "dns-custom-port": {"capture_dns": "true", "dns_port": "5353"},
    "drop-invalid": {"drop_invalid": "true"},
    "exclude-interfaces": {"exclude_interfaces": "eth1,cni0"},
    "multiple-uids-gids": {"proxy_uids": "1337,1338", "proxy_gids": "1337,2000"},
    "inbound-ports-list": {"inbound_ports": "8080,9090"},
    "inbound-ports-only-reserved": {"inbound_ports": "15020"},
    "inbound-disabled": {"inbound_ports": ""},
    "exclude-inbound-ports": {"exclude_inbound_ports": "22,8443"},
    "outbound-ports-list": {"outbound_ports": "80,443,8080"},
    "outbound-disabled": {"outbound_ports": ""},
    "outbound-cidrs-empty": {"outbound_cidrs": ""},
    "exclude-outbound-ports": {"exclude_outbound_ports": "3306,5432"},
    "many-excluded-ports": {"exclude_outbound_ports": MANY},
    "many-captured-ports": {"outbound_ports": MANY},
    "outbound-cidrs": {"outbound_cidrs": "10.96.0.0/12,fd00:10:96::/112"},
    "outbound-cidrs-v4-only": {"outbound_cidrs": "10.96.0.0/12"},
    "exclude-outbound-cidrs": {"exclude_outbound_cidrs": "169.254.169.254/32,10.0.0.0/8,fd00::/8"},
    "custom-listener-ports": {"outbound_port": "16001", "inbound_port": "16006"},
    "everything": {
        "mode": "TPROXY",
        "capture_dns": "true",
        "drop_invalid": "true",
        "exclude_interfaces": "eth9",
        "proxy_uids": "1337,1338",
        "outbound_ports": "80,443",
        "exclude_outbound_cidrs": "10.1.0.0/16,fd00::/8",
        "exclude_inbound_ports": "22",
        "exclude_outbound_ports": MANY,
    },
}

CASES = [(name, family) for name in CONFIGS for family in (4, 6)]


def config_of(**flags: str) -> CaptureConfig:
    return parse_config(flags, {})


def build(name: str, family: int) -> RuleSet:
    return build_rules(config_of(**CONFIGS[name]), family)


def chain_rules(ruleset: RuleSet, table: str, chain: str) -> list[str]:
    found = ruleset.table(table)
    return [] if found is None else [r.spec for r in found.rules if r.chain == chain]


def target(rule_spec: str) -> str:
    match = re.search(r"(?:^|\s)-[jg] (\S+)", rule_spec)
    assert match, rule_spec
    return match.group(1)


def matched_ports(rule_spec: str) -> list[int]:
    match = re.search(r"--dports? (\S+)", rule_spec)
    return [] if match is None else [int(p) for p in match.group(1).split(",")]


def addresses(rule_spec: str) -> list[str]:
    return re.findall(r"(?:^|\s)-[sd] (\S+)", rule_spec)


def index_where(rules: list[str], predicate) -> list[int]:
    return [i for i, r in enumerate(rules) if predicate(r)]


# --- structural invariants, over many configs -------------------------------------------------


@pytest.mark.parametrize(("name", "family"), CASES)
def test_builtin_chain_rules_only_jump_to_detour_chains(name: str, family: int) -> None:
    ruleset = build(name, family)
    for table in ruleset.tables:
        for rule in table.rules:
            if rule.chain in BUILTIN_CHAINS[table.name]:
                jumped = target(rule.spec)
                assert jumped.startswith(CHAIN_PREFIX), rule
                assert jumped in table.chains, f"{rule} jumps to an undeclared chain"


@pytest.mark.parametrize(("name", "family"), CASES)
def test_every_rule_is_in_a_builtin_or_declared_detour_chain(name: str, family: int) -> None:
    ruleset = build(name, family)
    for table in ruleset.tables:
        assert table.name in TABLE_ORDER
        assert all(c.startswith(CHAIN_PREFIX) for c in table.chains)
        assert len(set(table.chains)) == len(table.chains)
        for rule in table.rules:
            assert rule.chain in table.chains or rule.chain in BUILTIN_CHAINS[table.name], rule
            jumped = target(rule.spec)
            if jumped.startswith(CHAIN_PREFIX):
                assert jumped in table.chains, rule


@pytest.mark.parametrize(("name", "family"), CASES)
def test_every_rule_has_a_reason(name: str, family: int) -> None:
    for table in build(name, family).tables:
        for rule in table.rules:
            assert rule.reason.strip(), rule
            assert "\n" not in rule.reason, rule


@pytest.mark.parametrize(("name", "family"), CASES)
def test_no_address_of_the_other_family_appears(name: str, family: int) -> None:
    for table in build(name, family).tables:
        for rule in table.rules:
            for address in addresses(rule.spec):
                assert ipaddress.ip_network(address).version == family, rule


@pytest.mark.parametrize(("name", "family"), CASES)
def test_no_multiport_rule_has_more_than_15_ports(name: str, family: int) -> None:
    assert MULTIPORT_MAX == 15
    for table in build(name, family).tables:
        for rule in table.rules:
            assert len(matched_ports(rule.spec)) <= 15, rule


@pytest.mark.parametrize(("name", "family"), CASES)
def test_build_rules_is_deterministic(name: str, family: int) -> None:
    first = build(name, family)
    second = build_rules(config_of(**CONFIGS[name]), family)
    assert first == second
    assert first.family == family


def test_tables_come_in_restore_order() -> None:
    ruleset = build("everything", 4)
    assert [t.name for t in ruleset.tables] == ["raw", "mangle", "nat"]
    assert [t.name for t in build("default", 4).tables] == ["nat"]


# --- loop prevention in nat DETOUR_OUTPUT -----------------------------------------------------


@pytest.mark.parametrize(("name", "family"), CASES)
def test_proxy_owner_returns_before_any_capture(name: str, family: int) -> None:
    config = config_of(**CONFIGS[name])
    rules = chain_rules(build_rules(config, family), "nat", "DETOUR_OUTPUT")
    owner_returns = []
    for kind, ids in (("uid", config.proxy_uids), ("gid", config.proxy_gids)):
        for ident in ids:
            # Exactly the owner match and nothing else: every protocol, every destination.
            owner_returns.append(rules.index(f"-m owner --{kind}-owner {ident} -j RETURN"))
    captures = index_where(
        rules, lambda r: target(r) in {"DETOUR_REDIRECT", "REDIRECT", "DETOUR_IN_REDIRECT"}
    )
    assert owner_returns
    for capture in captures:
        assert max(owner_returns) < capture, rules[capture]


@pytest.mark.parametrize(("name", "family"), CASES)
def test_proxy_owned_traffic_only_reenters_inbound_over_lo_to_a_non_loopback_address(
    name: str, family: int
) -> None:
    loopback = "127.0.0.0/8" if family == 4 else "::1/128"
    for rule in chain_rules(build(name, family), "nat", "DETOUR_OUTPUT"):
        if "-owner " in rule and target(rule) != "RETURN":
            assert target(rule) == "DETOUR_INBOUND", rule
            assert "-o lo" in rule and f"! -d {loopback}" in rule and "-p tcp" in rule, rule


@pytest.mark.parametrize(("name", "family"), CASES)
def test_inbound_passthrough_source_is_never_captured(name: str, family: int) -> None:
    passthrough = "127.0.0.6/32" if family == 4 else "::6/128"
    rules = chain_rules(build(name, family), "nat", "DETOUR_OUTPUT")
    position = rules.index(f"-s {passthrough} -o lo -j RETURN")
    for i, rule in enumerate(rules):
        if target(rule) != "RETURN":
            assert position < i, f"{rule} precedes the passthrough RETURN"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", ["dns", "dns-custom-port", "everything"])
def test_dns_is_redirected_before_the_lo_return(name: str, family: int) -> None:
    config = config_of(**CONFIGS[name])
    rules = chain_rules(build_rules(config, family), "nat", "DETOUR_OUTPUT")
    udp = rules.index(f"-p udp -m udp --dport 53 -j REDIRECT --to-ports {config.dns_port}")
    tcp = rules.index(f"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports {config.dns_port}")
    lo_return = rules.index("-o lo -j RETURN")
    assert udp < lo_return and tcp < lo_return  # so DNS to 127.0.0.53 is still captured


@pytest.mark.parametrize(("name", "family"), CASES)
def test_lo_return_precedes_outbound_capture(name: str, family: int) -> None:
    rules = chain_rules(build(name, family), "nat", "DETOUR_OUTPUT")
    lo_return = rules.index("-o lo -j RETURN")
    for i in index_where(rules, lambda r: target(r) == "DETOUR_REDIRECT"):
        assert lo_return < i


def test_dns_capture_needs_every_protocol_to_enter_detour_output() -> None:
    assert chain_rules(build("dns", 4), "nat", "OUTPUT") == ["-j DETOUR_OUTPUT"]
    assert chain_rules(build("default", 4), "nat", "OUTPUT") == ["-p tcp -j DETOUR_OUTPUT"]
    default = build("default", 4)
    assert default.table("raw") is None
    assert not any("--dport 53" in r.spec for t in default.tables for r in t.rules)


@pytest.mark.parametrize("family", [4, 6])
def test_dns_conntrack_zones_proxy_rules_before_app_rule(family: int) -> None:
    config = config_of(**CONFIGS["multiple-uids-gids"], capture_dns="true")
    ruleset = build_rules(config, family)
    out = chain_rules(ruleset, "raw", "DETOUR_OUTPUT_DNS")
    app = out.index("-p udp -m udp --dport 53 -j CT --zone 2")
    owners = [f"--uid-owner {u}" for u in config.proxy_uids]
    owners += [f"--gid-owner {g}" for g in config.proxy_gids]
    for owner in owners:
        upstream = out.index(f"-p udp -m udp --dport 53 -m owner {owner} -j CT --zone 1")
        answers = out.index(f"-p udp -m udp --sport 15053 -m owner {owner} -j CT --zone 2")
        assert upstream < app and answers < app  # the first CT target wins
    assert chain_rules(ruleset, "raw", "DETOUR_INBOUND_DNS") == [
        "-p udp -m udp --sport 53 -j CT --zone 1"
    ]
    assert chain_rules(ruleset, "raw", "OUTPUT") == ["-p udp -j DETOUR_OUTPUT_DNS"]
    assert chain_rules(ruleset, "raw", "PREROUTING") == ["-p udp -j DETOUR_INBOUND_DNS"]


# --- exclusions --------------------------------------------------------------------------------

EXCLUDING = {
    "exclude_outbound_ports": "3306,5432",
    "exclude_outbound_cidrs": "169.254.169.254/32,10.0.0.0/8,fd00::/8,fd01::1/128",
    "exclude_interfaces": "eth1,cni0",
    "exclude_inbound_ports": "22,8443",
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("extra", [{}, {"outbound_ports": "80,443"}, {"capture_dns": "1"}])
def test_outbound_exclusions_return_before_capture(family: int, extra: dict[str, str]) -> None:
    rules = chain_rules(
        build_rules(config_of(**EXCLUDING, **extra), family), "nat", "DETOUR_OUTPUT"
    )
    first_capture = min(index_where(rules, lambda r: target(r) == "DETOUR_REDIRECT"))
    returns = rules[:first_capture]
    cidrs = {"169.254.169.254/32", "10.0.0.0/8"} if family == 4 else {"fd00::/8", "fd01::1/128"}
    for cidr in cidrs:
        assert f"-d {cidr} -j RETURN" in returns
    for iface in ("eth1", "cni0"):
        assert f"-o {iface} -j RETURN" in returns
    port_returns = [r for r in returns if target(r) == "RETURN" and matched_ports(r)]
    assert sorted(p for r in port_returns for p in matched_ports(r)) == [3306, 5432]
    assert all("-p tcp" in r for r in port_returns)
    ruleset = build_rules(config_of(**EXCLUDING, **extra), family)
    everything = " ".join(rule.spec for t in ruleset.tables for rule in t.rules)
    other = ("fd00::/8", "fd01::1/128") if family == 4 else ("10.0.0.0/8", "169.254.169.254/32")
    for cidr in other:
        assert cidr not in everything


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
@pytest.mark.parametrize("family", [4, 6])
def test_inbound_exclusions_return_before_capture(family: int, mode: str) -> None:
    ruleset = build_rules(config_of(**EXCLUDING, mode=mode), family)
    table = "nat" if mode == "REDIRECT" else "mangle"
    capture_target = "DETOUR_IN_REDIRECT" if mode == "REDIRECT" else "DETOUR_TPROXY"
    rules = chain_rules(ruleset, table, "DETOUR_INBOUND")
    capture = rules.index(f"-p tcp -j {capture_target}")
    returns = [r for r in rules[:capture] if target(r) == "RETURN"]
    assert "-i eth1 -j RETURN" in returns and "-i cni0 -j RETURN" in returns
    excluded = sorted(p for r in returns for p in matched_ports(r))
    assert excluded == [22, 8443, 15000, 15020, 15021, 15090]


def test_explicit_inbound_ports_skip_the_reserved_and_excluded_ones() -> None:
    config = config_of(inbound_ports="8080,15020,9090,22", exclude_inbound_ports="22")
    rules = chain_rules(build_rules(config, 4), "nat", "DETOUR_INBOUND")
    captured = [p for r in rules if target(r) == "DETOUR_IN_REDIRECT" for p in matched_ports(r)]
    assert sorted(captured) == [8080, 9090]
    assert all(target(r) == "DETOUR_IN_REDIRECT" for r in rules)  # no catch-all, no RETURNs


def test_inbound_list_of_only_reserved_ports_captures_nothing() -> None:
    ruleset = build("inbound-ports-only-reserved", 4)
    assert not any(target(r.spec) == "DETOUR_IN_REDIRECT" for r in ruleset.table("nat").rules)


# --- multiport chunks --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 15, 16, 20, 30, 31, 45])
@pytest.mark.parametrize("field", ["exclude_outbound_ports", "outbound_ports"])
def test_port_lists_split_into_multiport_chunks(field: str, count: int) -> None:
    ports = list(range(8001, 8001 + count))
    config = config_of(**{field: ",".join(map(str, ports))})
    wanted = "RETURN" if field.startswith("exclude") else "DETOUR_REDIRECT"
    rules = [
        r
        for r in chain_rules(build_rules(config, 4), "nat", "DETOUR_OUTPUT")
        if target(r) == wanted and matched_ports(r)
    ]
    assert len(rules) == -(-count // 15)  # ceil(count / 15)
    assert all("-m multiport --dports " in r for r in rules)
    assert all(len(matched_ports(r)) <= 15 for r in rules)
    assert [p for r in rules for p in matched_ports(r)] == ports


def test_single_port_uses_the_tcp_match() -> None:
    rules = chain_rules(
        build_rules(config_of(exclude_outbound_ports="3306"), 4), "nat", "DETOUR_OUTPUT"
    )
    assert "-p tcp -m tcp --dport 3306 -j RETURN" in rules


# --- outbound selections ----------------------------------------------------------------------


def test_outbound_disabled_captures_no_tcp_but_still_dns() -> None:
    plain = build("outbound-disabled", 4)
    assert not any(target(r.spec) == "DETOUR_REDIRECT" for r in plain.table("nat").rules)
    dns = build_rules(config_of(outbound_ports="", capture_dns="1"), 4)
    assert any("REDIRECT --to-ports 15053" in r.spec for r in dns.table("nat").rules)
    assert not any(target(r.spec) == "DETOUR_REDIRECT" for r in dns.table("nat").rules)


def test_empty_outbound_cidrs_capture_nothing() -> None:
    for family in (4, 6):
        nat = build("outbound-cidrs-empty", family).table("nat")
        assert not any(target(r.spec) == "DETOUR_REDIRECT" for r in nat.rules)


@pytest.mark.parametrize(("family", "cidr"), [(4, "10.96.0.0/12"), (6, "fd00:10:96::/112")])
def test_outbound_cidrs_capture_only_their_family(family: int, cidr: str) -> None:
    rules = chain_rules(build("outbound-cidrs", family), "nat", "DETOUR_OUTPUT")
    captures = [r for r in rules if target(r) == "DETOUR_REDIRECT"]
    assert captures == [f"-d {cidr} -p tcp -j DETOUR_REDIRECT"]


def test_ipv4_only_cidrs_capture_no_ipv6_destination() -> None:
    rules = chain_rules(build("outbound-cidrs-v4-only", 6), "nat", "DETOUR_OUTPUT")
    assert not any(target(r) == "DETOUR_REDIRECT" for r in rules)


def test_default_captures_all_outbound_tcp_to_the_outbound_port() -> None:
    ruleset = build("custom-listener-ports", 4)
    assert chain_rules(ruleset, "nat", "DETOUR_REDIRECT") == ["-p tcp -j REDIRECT --to-ports 16001"]
    assert chain_rules(ruleset, "nat", "DETOUR_IN_REDIRECT") == [
        "-p tcp -j REDIRECT --to-ports 16006"
    ]
    assert chain_rules(ruleset, "nat", "DETOUR_OUTPUT")[-1] == "-p tcp -j DETOUR_REDIRECT"


# --- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_tproxy_mode_uses_mangle_marks_and_policy_routing(family: int) -> None:
    assert hex(1337) == "0x539"
    ruleset = build("tproxy", family)
    mangle = ruleset.table("mangle")
    assert mangle is not None
    assert {"DETOUR_DIVERT", "DETOUR_TPROXY"} <= set(mangle.chains)
    assert "-j MARK --set-xmark 0x539/0xffffffff" in chain_rules(ruleset, "mangle", "DETOUR_DIVERT")
    [tproxy] = chain_rules(ruleset, "mangle", "DETOUR_TPROXY")
    any_address = "0.0.0.0" if family == 4 else "::"
    assert f"--on-port 15006 --on-ip {any_address} --tproxy-mark 0x539/0xffffffff" in tproxy
    assert chain_rules(ruleset, "mangle", "PREROUTING") == ["-p tcp -j DETOUR_INBOUND"]
    assert ruleset.routes == (PolicyRoute(family, 1337, 133),)
    # Inbound goes through TPROXY only: no nat PREROUTING redirect as well.
    assert chain_rules(ruleset, "nat", "PREROUTING") == []


def test_tproxy_on_port_follows_the_inbound_port() -> None:
    ruleset = build_rules(config_of(mode="TPROXY", inbound_port="16006"), 4)
    [tproxy] = chain_rules(ruleset, "mangle", "DETOUR_TPROXY")
    assert "--on-port 16006 " in tproxy


def test_tproxy_established_connections_are_diverted_before_new_ones() -> None:
    rules = chain_rules(build("tproxy", 4), "mangle", "DETOUR_INBOUND")
    established = rules.index("-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j DETOUR_DIVERT")
    assert established < rules.index("-p tcp -j DETOUR_TPROXY")
    assert rules.index("-p tcp -m mark --mark 0x539 -j RETURN") < established


@pytest.mark.parametrize("family", [4, 6])
def test_redirect_mode_has_no_routes_and_no_mangle(family: int) -> None:
    ruleset = build("default", family)
    assert ruleset.routes == ()
    assert ruleset.table("mangle") is None
    assert chain_rules(ruleset, "nat", "PREROUTING") == ["-p tcp -j DETOUR_INBOUND"]


@pytest.mark.parametrize("family", [4, 6])
def test_drop_invalid_adds_only_the_drop_chain_in_redirect_mode(family: int) -> None:
    ruleset = build("drop-invalid", family)
    mangle = ruleset.table("mangle")
    assert mangle is not None and mangle.chains == ("DETOUR_DROP_INVALID",)
    assert chain_rules(ruleset, "mangle", "DETOUR_DROP_INVALID") == [
        "-m conntrack --ctstate INVALID -j DROP"
    ]
    assert ruleset.routes == ()


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_inbound_disabled_installs_no_inbound_capture(mode: str, family: int) -> None:
    ruleset = build_rules(config_of(inbound_ports="", mode=mode), family)
    for table in ruleset.tables:
        assert chain_rules(ruleset, table.name, "PREROUTING") == []
        assert "DETOUR_INBOUND" not in table.chains
        assert not any(target(r.spec) == "DETOUR_INBOUND" for r in table.rules)
    assert ruleset.routes == ()
    assert ruleset.table("mangle") is None
    # The proxy's own traffic is still exempt from outbound capture.
    assert "-m owner --uid-owner 1337 -j RETURN" in chain_rules(ruleset, "nat", "DETOUR_OUTPUT")


def test_different_configs_give_different_rules() -> None:
    assert build("default", 4) != build("tproxy", 4)
    assert build("default", 4) != build("default", 6)
