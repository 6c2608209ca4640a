"""The configuration maps' contents, byte for byte as bpf/maps.h lays them out."""

from __future__ import annotations

import ipaddress
import re
import struct

from init.config import parse_config
from interceptor import loader, settings
from interceptor.settings import EbpfConfig, map_contents


def _config(**flags: str) -> EbpfConfig:
    return EbpfConfig(parse_config(flags, {}), ipv6_present=True)


def test_defaults_capture_everything_but_the_proxy_and_no_dns():
    contents = map_contents(_config())
    flags, proxy_port, dns_port = struct.unpack("<IHH", contents["settings"][b"\0\0\0\0"])
    assert (proxy_port, dns_port) == (15001, 15053)
    wanted = settings.CONFIGURED | settings.ALL_PORTS | settings.ALL_CIDRS | settings.IPV6
    assert flags == wanted  # sockmap is opt-in
    owners = {struct.pack("<II", 0, 1337), struct.pack("<II", 1, 1337)}  # uid 1337, gid 1337
    assert set(contents["proxy_owners"]) == owners
    assert contents["exclude_ports"] == contents["exclude_cidrs"] == {}


def test_exclusions_and_selections_become_map_keys():
    contents = map_contents(
        _config(
            exclude_outbound_ports="5432,22",
            exclude_outbound_cidrs="10.0.0.0/8,fd00::/8",
            outbound_ports="80,443",
            capture_dns="true",
            proxy_uids="1337,1338",
        )
    )
    assert set(contents["exclude_ports"]) == {struct.pack("<I", 22), struct.pack("<I", 5432)}
    assert set(contents["capture_ports"]) == {struct.pack("<I", 80), struct.pack("<I", 443)}
    v4 = struct.pack("<I", 96 + 8) + ipaddress.IPv6Address("::ffff:10.0.0.0").packed
    v6 = struct.pack("<I", 8) + ipaddress.IPv6Address("fd00::").packed
    assert set(contents["exclude_cidrs"]) == {v4, v6}
    flags = struct.unpack("<IHH", contents["settings"][b"\0\0\0\0"])[0]
    assert flags & settings.CAPTURE_DNS and not flags & settings.ALL_PORTS
    assert struct.pack("<II", 0, 1338) in contents["proxy_owners"]


def test_ipv6_off_clears_its_bit_and_sockmap_on_sets_its_own():
    config = EbpfConfig(parse_config({"ipv6": "off"}, {}), sockmap=True)
    flags = struct.unpack("<IHH", settings.settings_value(config))[0]
    assert not flags & settings.IPV6
    assert flags & settings.SOCKMAP


def test_python_and_c_agree_on_flag_bits_and_counter_order():
    header = (loader.BPF_DIR / "maps.h").read_text()
    bits = dict(re.findall(r"#define SETTING_(\w+) (\d+)", header))
    assert int(bits["CAPTURE_DNS"]) == settings.CAPTURE_DNS
    assert int(bits["SOCKMAP"]) == settings.SOCKMAP
    assert int(bits["IPV6"]) == settings.IPV6
    counted = re.findall(r"#define COUNT_(\w+) (\d+)", header)
    assert [int(i) for _, i in counted] == list(range(len(settings.COUNTERS)))
    assert int(re.search(r"#define COUNTERS (\d+)", header).group(1)) == len(settings.COUNTERS)


def test_status_describes_the_settings_it_reads_back():
    config = EbpfConfig(parse_config({"capture_dns": "true", "outbound_ports": "80"}, {}))
    shown = settings.describe_settings(settings.settings_value(config))
    assert shown == {
        "outbound_port": "15001",
        "dns": "on:15053",
        "ipv6": "on",
        "sockmap": "off",
        "ports": "listed",
        "cidrs": "all",
    }
