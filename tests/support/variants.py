"""Named interception configs: each is golden-tested and applied in a real namespace."""

from __future__ import annotations

_MANY = ",".join(str(p) for p in range(7001, 7021))

VARIANTS: dict[str, list[str]] = {
    "redirect-default": [],
    "ipv4-only": ["--ipv6", "off"],
    "dual-stack": ["--ipv6", "on"],
    "tproxy": ["--mode", "TPROXY"],
    "tproxy-dual-stack": ["--mode", "TPROXY", "--ipv6", "on"],
    "tproxy-inbound-ports": ["--mode", "TPROXY", "--inbound-ports", "8080,9090"],
    "dns-capture": ["--capture-dns"],
    "dns-capture-ipv6": ["--capture-dns", "--ipv6", "on"],
    "dns-custom-port": ["--capture-dns", "--dns-port", "5353"],
    "drop-invalid": ["--drop-invalid"],
    "exclude-interfaces": ["--exclude-interfaces", "eth1,cni0"],
    "multiple-uids-gids": ["--proxy-uid", "1337,1338", "--proxy-gid", "1337,2000"],
    "inbound-ports-list": ["--inbound-ports", "8080,9090"],
    "inbound-disabled": ["--inbound-ports", ""],
    "exclude-inbound-ports": ["--exclude-inbound-ports", "22,8443"],
    "outbound-ports-list": ["--outbound-ports", "80,443,8080"],
    "outbound-disabled": ["--outbound-ports", ""],
    "exclude-outbound-ports": ["--exclude-outbound-ports", "3306,5432"],
    "many-ports-multiport-chunks": ["--exclude-outbound-ports", _MANY],
    "outbound-cidrs": ["--outbound-cidrs", "10.96.0.0/12,fd00:10:96::/112", "--ipv6", "on"],
    "exclude-outbound-cidrs": [
        "--exclude-outbound-cidrs",
        "169.254.169.254/32,10.0.0.0/8,fd00::/8",
        "--ipv6",
        "on",
    ],
    "custom-listener-ports": ["--outbound-port", "16001", "--inbound-port", "16006"],
    "everything": [
        "--mode",
        "TPROXY",
        "--capture-dns",
        "--drop-invalid",
        "--exclude-interfaces",
        "eth9",
        "--proxy-uid",
        "1337,1338",
        "--outbound-ports",
        "80,443",
        "--exclude-outbound-cidrs",
        "10.1.0.0/16",
        "--exclude-inbound-ports",
        "22",
        "--ipv6",
        "on",
    ],
}


def with_explicit_ipv6(args: list[str]) -> list[str]:
    """Variants that leave --ipv6 at auto are rendered IPv4-only, whatever the host has."""
    return args if "--ipv6" in args else [*args, "--ipv6", "off"]
