"""validate.choose_probe: a destination the config captures, so a redirect must be seen."""

from __future__ import annotations

import ipaddress

import pytest

from init.config import CaptureConfig, parse_config
from init.rules import build_rules
from init.validate import Probe, ValidationFailed, choose_probe

DOCUMENTATION = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def config_of(**flags: str) -> CaptureConfig:
    return parse_config(flags, {})


def captured_by_rules(config: CaptureConfig, probe: Probe) -> bool:
    """Does an app's TCP connection to the probe reach the DETOUR_REDIRECT rule? A small reading
    of nat DETOUR_OUTPUT restricted to the matches Detour emits for outbound destinations."""
    address = ipaddress.ip_address(probe.address)
    nat = build_rules(config, probe.family).table("nat")
    rules = [r.spec for r in nat.rules if r.chain == "DETOUR_OUTPUT"]
    rules = [s for s in rules if s.startswith(("-d ", "-p tcp -m", "-p tcp -j DETOUR_REDIRECT"))]
    for spec in rules:
        words = spec.split()
        if "-d" in words and address not in ipaddress.ip_network(words[words.index("-d") + 1]):
            continue
        if "--dport" in words and probe.port != int(words[words.index("--dport") + 1]):
            continue
        if "--dports" in words:
            listed = {int(p) for p in words[words.index("--dports") + 1].split(",")}
            if probe.port not in listed:
                continue
        return words[-1] == "DETOUR_REDIRECT"
    return False


def test_the_rule_reading_helper_can_say_no() -> None:
    assert captured_by_rules(config_of(), Probe(4, "192.0.2.1", 80))
    assert not captured_by_rules(config_of(exclude_outbound_ports="80"), Probe(4, "192.0.2.1", 80))
    assert not captured_by_rules(config_of(outbound_ports="443"), Probe(4, "192.0.2.1", 80))
    excluded = config_of(exclude_outbound_cidrs="192.0.2.0/24")
    assert not captured_by_rules(excluded, Probe(4, "192.0.2.1", 80))
    assert not captured_by_rules(config_of(outbound_cidrs="10.0.0.0/8"), Probe(4, "11.0.0.1", 80))


@pytest.mark.parametrize(("family", "address"), [(4, "192.0.2.1"), (6, "2001:db8::1")])
def test_default_config_probes_the_documentation_address(family: int, address: str) -> None:
    config = config_of()
    probe = choose_probe(config, family)
    assert probe.family == family
    assert probe.address == address
    assert probe.port not in config.exclude_outbound_ports
    assert 1 <= probe.port <= 65535
    assert any(ipaddress.ip_address(probe.address) in n for n in DOCUMENTATION)
    assert captured_by_rules(config, probe)


def test_excluded_port_is_not_probed() -> None:
    default = choose_probe(config_of(), 4)
    config = config_of(exclude_outbound_ports=str(default.port))
    probe = choose_probe(config, 4)
    assert probe.port != default.port
    assert captured_by_rules(config, probe)


def test_excluded_documentation_range_picks_the_next_documentation_address() -> None:
    config = config_of(exclude_outbound_cidrs="192.0.2.0/24")
    probe = choose_probe(config, 4)
    assert probe.address == "198.51.100.1"
    assert captured_by_rules(config, probe)


def test_excluding_two_ranges_picks_the_third() -> None:
    config = config_of(exclude_outbound_cidrs="192.0.2.0/24,198.51.100.0/24")
    assert choose_probe(config, 4).address == "203.0.113.1"


def test_ipv6_documentation_range_excluded_picks_another_ipv6_address() -> None:
    config = config_of(exclude_outbound_cidrs="2001:db8::/48")
    probe = choose_probe(config, 6)
    assert probe.address == "2001:db8:1::1"
    assert captured_by_rules(config, probe)


def test_exclusions_of_the_other_family_do_not_matter() -> None:
    config = config_of(exclude_outbound_cidrs="2001:db8::/32")
    assert choose_probe(config, 4).address == "192.0.2.1"


def test_everything_excluded_raises() -> None:
    with pytest.raises(ValidationFailed) as caught:
        choose_probe(config_of(exclude_outbound_cidrs="0.0.0.0/0"), 4)
    assert "IPv4" in str(caught.value)


@pytest.mark.parametrize(
    ("cidrs", "family"),
    [("10.96.0.0/12", 4), ("172.20.5.7/32", 4), ("10.1.0.0/31", 4), ("fd00:10:96::/112", 6)],
)
def test_explicit_outbound_cidrs_probe_an_address_inside_them(cidrs: str, family: int) -> None:
    config = config_of(outbound_cidrs=cidrs + ",192.168.0.0/16,fd00::/8")
    probe = choose_probe(config, family)
    address = ipaddress.ip_address(probe.address)
    assert address.version == family
    [network] = [n for n in config.outbound_cidrs.networks if address in n]
    if network.num_addresses > 2:
        # A host address: not the network (or IPv6 subnet-router anycast) address, and not
        # the IPv4 broadcast address.
        assert address != network.network_address
        assert network.version == 6 or address != network.broadcast_address
    assert captured_by_rules(config, probe)


def test_explicit_cidrs_skip_an_excluded_network() -> None:
    config = config_of(
        outbound_cidrs="10.0.0.0/24,10.1.0.0/24", exclude_outbound_cidrs="10.0.0.0/24"
    )
    probe = choose_probe(config, 4)
    assert ipaddress.ip_address(probe.address) in ipaddress.ip_network("10.1.0.0/24")
    assert captured_by_rules(config, probe)


def test_explicit_cidrs_all_excluded_raise() -> None:
    config = config_of(outbound_cidrs="10.0.0.0/24", exclude_outbound_cidrs="10.0.0.0/16")
    with pytest.raises(ValidationFailed):
        choose_probe(config, 4)


def test_explicit_cidrs_of_only_the_other_family_raise() -> None:
    with pytest.raises(ValidationFailed) as caught:
        choose_probe(config_of(outbound_cidrs="10.96.0.0/12"), 6)
    assert "IPv6" in str(caught.value)


def test_explicit_cidr_partly_excluded_still_has_a_probe() -> None:
    config = config_of(outbound_cidrs="10.0.0.0/8", exclude_outbound_cidrs="10.0.0.0/24")
    probe = choose_probe(config, 4)
    assert captured_by_rules(config, probe)


@pytest.mark.parametrize(
    ("ports", "excluded", "expected"),
    [
        ("443,80", "", 80),
        ("80,443,8080", "80", 443),
        ("9090", "", 9090),
        ("80,443", "80,3306", 443),
    ],
)
def test_explicit_outbound_ports_probe_the_first_non_excluded(
    ports: str, excluded: str, expected: int
) -> None:
    config = config_of(outbound_ports=ports, exclude_outbound_ports=excluded)
    probe = choose_probe(config, 4)
    assert probe.port == expected
    assert captured_by_rules(config, probe)


def test_listed_ports_all_excluded_raise() -> None:
    with pytest.raises(ValidationFailed) as caught:
        choose_probe(config_of(outbound_ports="80,443", exclude_outbound_ports="443,80"), 4)
    assert "port" in str(caught.value)


@pytest.mark.parametrize("family", [4, 6])
def test_config_capturing_nothing_raises(family: int) -> None:
    with pytest.raises(ValidationFailed):
        choose_probe(config_of(outbound_ports=""), family)
    with pytest.raises(ValidationFailed):
        choose_probe(config_of(outbound_cidrs=""), family)


def test_choose_probe_is_pure() -> None:
    config = config_of(exclude_outbound_ports="15999")
    assert choose_probe(config, 4) == choose_probe(config, 4)
