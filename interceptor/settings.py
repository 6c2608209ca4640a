"""What the programs are told: init's CaptureConfig (the same options, parsers and errors as
``detour-init``) turned into the contents of the configuration maps declared in bpf/maps.h.

Pure: every function here returns bytes laid out as the C structs are, so the layout is unit
tested without a kernel. Addresses use the programs' 16-byte form (IPv4 as ::ffff:a.b.c.d).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from init.config import OPTIONS, CaptureConfig, IPNetwork

# The init options that mean something for eBPF interception; the rest (inbound, TPROXY,
# interfaces, iptables backend, ...) belong to iptables and are not offered by detour-ebpf.
EBPF_FIELDS = (
    "proxy_uids",
    "proxy_gids",
    "outbound_port",
    "outbound_ports",
    "exclude_outbound_ports",
    "outbound_cidrs",
    "exclude_outbound_cidrs",
    "capture_dns",
    "dns_port",
    "ipv6",
    "log_format",
)
EBPF_OPTIONS = tuple(option for option in OPTIONS if option.field in EBPF_FIELDS)
# Shorter spellings accepted too (the brief of issue #5 names them this way).
# --proxy-port is the first slice's name for the outbound port, kept for existing callers.
ALIASES = {
    "exclude_outbound_ports": "--exclude-ports",
    "exclude_outbound_cidrs": "--exclude-cidrs",
    "outbound_port": "--proxy-port",
}

# settings.flags bits (bpf/maps.h SETTING_*)
CONFIGURED, CAPTURE_DNS, SOCKMAP, ALL_PORTS, ALL_CIDRS, IPV6 = 1, 2, 4, 8, 16, 32

# counters[] indexes (bpf/maps.h COUNT_*), in order
COUNTERS = (
    "connect_redirected",
    "original_dst_answered",
    "record_rejected",
    "dns_redirected",
    "dns_replies_rewritten",
    "sockmap_inserted",
    "sockmap_redirected",
    "sockmap_bytes",
)

PRESENT = b"\x01"  # the value of every set-like map entry (__u8)
_SETTINGS = struct.Struct("<IHH")  # struct settings: flags, proxy_port, dns_port
_U32 = struct.Struct("<I")
_OWNER = struct.Struct("<II")  # struct owner_key: kind (0 uid, 1 gid), id
_CIDR = struct.Struct("<I16s")  # struct cidr_key: prefixlen (host order), address


@dataclass(frozen=True)
class EbpfConfig:
    """init's capture options plus the one switch only eBPF has."""

    capture: CaptureConfig
    sockmap: bool = False  # opt-in: see interceptor/README.md (blocking recv and EAGAIN)
    ipv6_present: bool = True


def settings_value(config: EbpfConfig) -> bytes:
    capture = config.capture
    flags = CONFIGURED
    if capture.capture_dns:
        flags |= CAPTURE_DNS
    if config.sockmap:
        flags |= SOCKMAP
    if capture.outbound_ports.every:
        flags |= ALL_PORTS
    if capture.outbound_cidrs.every:
        flags |= ALL_CIDRS
    if capture.ipv6 == "on" or (capture.ipv6 == "auto" and config.ipv6_present):
        flags |= IPV6
    return _SETTINGS.pack(flags, capture.outbound_port, capture.dns_port)


def sixteen_bytes(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The programs' address form: IPv6 as is, IPv4 v4-mapped."""
    if address.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed).packed
    return address.packed


def cidr_key(network: IPNetwork) -> bytes:
    offset = 96 if network.version == 4 else 0
    return _CIDR.pack(offset + network.prefixlen, sixteen_bytes(network.network_address))


def map_contents(config: EbpfConfig) -> dict[str, dict[bytes, bytes]]:
    """Every configuration map's wanted entries, by map name."""
    capture = config.capture
    owners = [_OWNER.pack(0, uid) for uid in capture.proxy_uids]
    owners += [_OWNER.pack(1, gid) for gid in capture.proxy_gids]
    return {
        "settings": {_U32.pack(0): settings_value(config)},
        "proxy_owners": dict.fromkeys(owners, PRESENT),
        "exclude_ports": {_U32.pack(p): PRESENT for p in capture.exclude_outbound_ports},
        "capture_ports": {_U32.pack(p): PRESENT for p in capture.outbound_ports.ports},
        "exclude_cidrs": {cidr_key(n): PRESENT for n in capture.exclude_outbound_cidrs},
        "capture_cidrs": {cidr_key(n): PRESENT for n in capture.outbound_cidrs.networks},
    }


def describe_settings(value: bytes) -> dict[str, str]:
    """settings[0] as `status` shows it."""
    flags, proxy_port, dns_port = _SETTINGS.unpack(value)

    def switch(bit: int) -> str:
        return "on" if flags & bit else "off"

    return {
        "outbound_port": str(proxy_port),
        "dns": f"{switch(CAPTURE_DNS)}:{dns_port}",
        "ipv6": switch(IPV6),
        "sockmap": switch(SOCKMAP),
        "ports": "all" if flags & ALL_PORTS else "listed",
        "cidrs": "all" if flags & ALL_CIDRS else "listed",
    }


def decode_counters(values: list[int]) -> dict[str, int]:
    return dict(zip(COUNTERS, values, strict=False))
