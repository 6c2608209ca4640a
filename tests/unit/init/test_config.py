"""config.parse_config: defaults, flags vs DETOUR_* variables, and refusal of every bad value."""

from __future__ import annotations

import ipaddress

import pytest

from init.cli import build_parser
from init.config import (
    OPTIONS,
    SIDECAR_OWN_PORTS,
    CaptureConfig,
    CidrSelection,
    ConfigError,
    PortSelection,
    parse_config,
)

net = ipaddress.ip_network


def parse(environ: dict[str, str] | None = None, **flags: str) -> CaptureConfig:
    return parse_config(flags, environ or {})


def option(field: str):
    return next(o for o in OPTIONS if o.field == field)


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_are_the_documented_istio_numbers() -> None:
    config = parse()
    assert config.proxy_uids == (1337,)
    assert config.proxy_gids == (1337,)
    assert config.outbound_port == 15001
    assert config.inbound_port == 15006
    assert config.dns_port == 15053
    assert config.mode == "REDIRECT"
    assert config.inbound_ports == PortSelection(every=True)
    assert config.outbound_ports == PortSelection(every=True)
    assert config.outbound_cidrs == CidrSelection(every=True)
    assert config.exclude_inbound_ports == ()
    assert config.exclude_outbound_ports == ()
    assert config.exclude_outbound_cidrs == ()
    assert config.exclude_interfaces == ()
    assert config.capture_dns is False
    assert config.drop_invalid is False
    assert config.ipv6 == "auto"
    assert config.backend == "auto"
    assert config.log_format == "text"


def test_parsing_nothing_equals_the_dataclass_defaults() -> None:
    assert parse() == CaptureConfig()


def test_sidecar_ports_are_always_excluded_inbound() -> None:
    assert set(SIDECAR_OWN_PORTS) == {15000, 15020, 15021, 15090}
    config = parse(exclude_inbound_ports="8443,22")
    assert config.excluded_inbound_ports == (22, 8443, 15000, 15020, 15021, 15090)


def test_option_env_names_follow_the_flag_names() -> None:
    assert option("exclude_outbound_ports").env == "DETOUR_EXCLUDE_OUTBOUND_PORTS"
    for opt in OPTIONS:
        assert opt.flag.startswith("--")
        assert opt.env == "DETOUR_" + opt.flag[2:].upper().replace("-", "_")
        assert hasattr(CaptureConfig(), opt.field), opt


# --- one good value per option, through a flag and through the environment -------------------

GOOD: dict[str, tuple[str, object]] = {
    "proxy_uids": ("1338, 1337,1338", (1337, 1338)),
    "proxy_gids": ("0", (0,)),
    "outbound_port": (" 16001 ", 16001),
    "inbound_port": ("16006", 16006),
    "mode": ("tproxy", "TPROXY"),
    "inbound_ports": ("9090,8080", PortSelection(every=False, ports=(8080, 9090))),
    "exclude_inbound_ports": ("22", (22,)),
    "outbound_ports": ("443,80,443", PortSelection(every=False, ports=(80, 443))),
    "exclude_outbound_ports": ("3306, 5432", (3306, 5432)),
    "outbound_cidrs": ("10.96.0.0/12", CidrSelection(False, (net("10.96.0.0/12"),))),
    "exclude_outbound_cidrs": ("169.254.169.254", (net("169.254.169.254/32"),)),
    "exclude_interfaces": ("eth1,cni0,eth1", ("eth1", "cni0")),
    "capture_dns": ("yes", True),
    "dns_port": ("5353", 5353),
    "ipv6": ("ON", "on"),
    "drop_invalid": ("1", True),
    "backend": ("nft", "nft"),
    "log_format": ("json", "json"),
}


def test_every_option_has_a_good_value_case() -> None:
    assert {o.field for o in OPTIONS} == set(GOOD)


@pytest.mark.parametrize("field", sorted(GOOD))
def test_good_value_through_flag(field: str) -> None:
    text, expected = GOOD[field]
    assert getattr(parse(**{field: text}), field) == expected


@pytest.mark.parametrize("field", sorted(GOOD))
def test_good_value_through_environment(field: str) -> None:
    text, expected = GOOD[field]
    assert getattr(parse({option(field).env: text}), field) == expected


def test_exclude_outbound_ports_from_environment_example() -> None:
    config = parse({"DETOUR_EXCLUDE_OUTBOUND_PORTS": "3306, 5432"})
    assert config.exclude_outbound_ports == (3306, 5432)


def test_flag_wins_over_its_variable() -> None:
    config = parse({"DETOUR_OUTBOUND_PORT": "17001"}, outbound_port="16001")
    assert config.outbound_port == 16001


def test_flag_wins_even_over_a_bad_variable() -> None:
    # The variable is shadowed by the flag, so its bad value must not be reported.
    config = parse({"DETOUR_DNS_PORT": "not-a-port"}, dns_port="5353")
    assert config.dns_port == 5353


def test_empty_flag_still_wins_over_its_variable() -> None:
    config = parse({"DETOUR_INBOUND_PORTS": "8080"}, inbound_ports="")
    assert config.inbound_ports.empty


def test_variables_without_the_detour_prefix_are_ignored() -> None:
    assert parse({"OUTBOUND_PORT": "16001", "detour_outbound_port": "16001"}).outbound_port == 15001


def test_cli_flags_reach_parse_config_under_the_same_names() -> None:
    args = build_parser().parse_args(
        ["render", "--capture-dns", "--exclude-outbound-ports", "5432,3306"]
    )
    config = parse_config(vars(args), {"DETOUR_CAPTURE_DNS": "false", "DETOUR_MODE": "TPROXY"})
    assert config.capture_dns is True  # bare switch means true, and the flag wins
    assert config.exclude_outbound_ports == (3306, 5432)
    assert config.mode == "TPROXY"  # no flag given: the variable is used


# --- lists and selections ---------------------------------------------------------------------


def test_port_lists_are_sorted_and_deduplicated() -> None:
    config = parse(exclude_outbound_ports="5432,80, 3306,80,,5432")
    assert config.exclude_outbound_ports == (80, 3306, 5432)


@pytest.mark.parametrize("field", ["inbound_ports", "outbound_ports"])
def test_port_selection_star_explicit_and_empty(field: str) -> None:
    every = getattr(parse(**{field: " * "}), field)
    assert every.every and not every.empty
    explicit = getattr(parse(**{field: "443,80"}), field)
    assert explicit == PortSelection(every=False, ports=(80, 443))
    assert not explicit.empty
    for nothing in ("", " ", ","):
        empty = getattr(parse(**{field: nothing}), field)
        assert not empty.every and empty.ports == () and empty.empty


def test_cidr_selection_star_explicit_and_empty() -> None:
    assert parse(outbound_cidrs="*").outbound_cidrs.every
    explicit = parse(outbound_cidrs="fd00::/8,10.0.0.0/8").outbound_cidrs
    assert not explicit.every
    assert explicit.networks == (net("10.0.0.0/8"), net("fd00::/8"))
    assert explicit.for_family(4).networks == (net("10.0.0.0/8"),)
    assert explicit.for_family(6).networks == (net("fd00::/8"),)
    empty = parse(outbound_cidrs="").outbound_cidrs
    assert not empty.every and empty.networks == ()


def test_cidrs_with_host_bits_are_normalised() -> None:
    config = parse(exclude_outbound_cidrs="10.0.0.1/8,fd00::1/8")
    assert config.exclude_outbound_cidrs == (net("10.0.0.0/8"), net("fd00::/8"))
    assert [str(n) for n in config.exclude_outbound_cidrs] == ["10.0.0.0/8", "fd00::/8"]


def test_cidrs_are_deduplicated_after_normalisation_and_sorted_v4_first() -> None:
    config = parse(exclude_outbound_cidrs="fd00::/8, 10.1.2.3/8,10.0.0.0/8,192.168.0.0/16")
    assert [str(n) for n in config.exclude_outbound_cidrs] == [
        "10.0.0.0/8",
        "192.168.0.0/16",
        "fd00::/8",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("TRUE", True),
        (" Yes ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("False", False),
    ],
)
@pytest.mark.parametrize("field", ["capture_dns", "drop_invalid"])
def test_booleans(field: str, text: str, expected: bool) -> None:
    assert getattr(parse(**{field: text}), field) is expected
    assert getattr(parse({option(field).env: text}), field) is expected


# --- bad values: every option ----------------------------------------------------------------

BAD: list[tuple[str, str]] = [
    ("proxy_uids", "abc"),
    ("proxy_uids", "-1"),
    ("proxy_uids", ""),
    ("proxy_uids", "1337,root"),
    ("proxy_uids", "4294967295"),
    ("proxy_gids", "1.5"),
    ("proxy_gids", " , "),
    ("outbound_port", "70000"),
    ("outbound_port", "0"),
    ("outbound_port", "http"),
    ("outbound_port", ""),
    ("inbound_port", "-5"),
    ("inbound_port", "15006,15007"),
    ("mode", "NAT"),
    ("mode", ""),
    ("inbound_ports", "80,http"),
    ("inbound_ports", "*,80"),
    ("exclude_inbound_ports", "22;80"),
    ("exclude_inbound_ports", "65536"),
    ("outbound_ports", "99999"),
    ("outbound_ports", "80-90"),
    ("exclude_outbound_ports", "3306-3310"),
    ("exclude_outbound_ports", "*"),
    ("outbound_cidrs", "10.0.0.0/33"),
    ("outbound_cidrs", "*,10.0.0.0/8"),
    ("exclude_outbound_cidrs", "not-a-cidr"),
    ("exclude_outbound_cidrs", "10.0.0.0/8,300.1.1.1"),
    ("exclude_interfaces", "eth0/1"),
    ("exclude_interfaces", "eth0:1"),
    ("exclude_interfaces", "averyveryverylongname"),
    ("exclude_interfaces", ".."),
    ("capture_dns", "maybe"),
    ("capture_dns", "2"),
    ("dns_port", "dns"),
    ("dns_port", "100000"),
    ("ipv6", "dual"),
    ("drop_invalid", "enable"),
    ("backend", "iptables"),
    ("backend", "nf_tables"),
    ("log_format", "xml"),
]


def test_every_option_has_a_bad_value_case() -> None:
    assert {o.field for o in OPTIONS} <= {field for field, _ in BAD}


@pytest.mark.parametrize(("field", "value"), BAD)
def test_bad_value_through_flag_names_the_flag_and_value(field: str, value: str) -> None:
    flag = option(field).flag
    with pytest.raises(ConfigError) as caught:
        parse(**{field: value})
    message = str(caught.value)
    assert flag in message
    assert repr(value) in message or value in message
    assert caught.value.option == flag
    assert caught.value.value == value


@pytest.mark.parametrize(("field", "value"), BAD)
def test_bad_value_through_environment_names_the_variable(field: str, value: str) -> None:
    env = option(field).env
    with pytest.raises(ConfigError) as caught:
        parse({env: value})
    message = str(caught.value)
    assert env in message
    assert option(field).flag not in message
    assert repr(value) in message or value in message
    assert caught.value.option == env


def test_bad_list_item_is_quoted_in_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(exclude_outbound_ports="3306,mysql,5432")
    assert "'mysql'" in caught.value.reason
    assert caught.value.value == "3306,mysql,5432"


def test_config_error_is_raised_before_a_later_option_is_parsed() -> None:
    # Both are bad; the operator is told about one of them, by name, not a generic failure.
    with pytest.raises(ConfigError) as caught:
        parse(outbound_port="x", log_format="y")
    assert caught.value.option in {"--outbound-port", "--log-format"}


def test_superscript_digit_uid_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse(proxy_uids="²")


# --- consistency -------------------------------------------------------------------------------


def test_outbound_port_equal_to_inbound_port_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(outbound_port="15006")
    message = str(caught.value)
    assert "--outbound-port" in message and "--inbound-port" in message
    assert "15006" in message


def test_inbound_port_equal_to_outbound_port_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(outbound_port="16000", inbound_port="16000")
    assert "16000" in str(caught.value)


@pytest.mark.parametrize("port", SIDECAR_OWN_PORTS)
@pytest.mark.parametrize("field", ["outbound_port", "inbound_port"])
def test_listener_on_a_reserved_sidecar_port_is_refused(field: str, port: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**{field: str(port)})
    assert option(field).flag in str(caught.value)
    assert str(port) in str(caught.value)


@pytest.mark.parametrize("port", SIDECAR_OWN_PORTS)
def test_dns_port_on_a_reserved_sidecar_port_is_refused_when_capturing_dns(port: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(capture_dns="true", dns_port=str(port))
    assert "--dns-port" in str(caught.value) and str(port) in str(caught.value)


def test_dns_port_equal_to_outbound_port_matters_only_with_capture_dns() -> None:
    assert parse(dns_port="15001").dns_port == 15001  # DNS not captured: port unused
    with pytest.raises(ConfigError) as caught:
        parse(dns_port="15001", capture_dns="true")
    message = str(caught.value)
    assert "--dns-port" in message and "--outbound-port" in message and "15001" in message


def test_dns_port_equal_to_inbound_port_is_refused_with_capture_dns() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"DETOUR_CAPTURE_DNS": "1"}, dns_port="15006")
    assert "15006" in str(caught.value)


def test_consistent_custom_ports_are_accepted() -> None:
    config = parse(outbound_port="16001", inbound_port="16006", dns_port="5353", capture_dns="on")
    assert (config.outbound_port, config.inbound_port, config.dns_port) == (16001, 16006, 5353)
