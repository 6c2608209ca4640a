"""Every golden variant, on both backends, in a fresh namespace of the real kernel:

apply -> the kernel reports exactly what was rendered -> apply again changes nothing (rule
counters survive) -> cleanup -> tables and routes are as before, byte for byte.
"""

from __future__ import annotations

import pytest
from support.lab import fingerprint
from support.variants import VARIANTS

from init.cli import build_parser
from init.config import parse_config
from init.rules import build_rules
from init.state import detour_view, parse_save, view_of_ruleset

BACKENDS = ("legacy", "nft")


def _save(ns, backend: str, family: int, counters: bool = False) -> str:
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    return ns.run(tool, *(["-c"] if counters else [])).stdout


def _detour_counters(ns, backend: str) -> list[str]:
    """Detour's rules with their packet counters, as iptables-save -c prints them."""
    lines = []
    for family in (4, 6):
        for line in _save(ns, backend, family, counters=True).splitlines():
            if "DETOUR_" in line and line.startswith("["):
                lines.append(f"v{family} {line}")
    return lines


def _poke(ns) -> None:
    """One new outbound TCP connection, so the OUTPUT jump's counter moves."""
    ns.run(
        "/usr/bin/python3",
        "-c",
        "import socket; s=socket.socket(); s.settimeout(0.3)\n"
        "try: s.connect(('192.0.2.1', 80))\nexcept OSError: pass",
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_apply_verify_reapply_cleanup(lab, name: str, backend: str) -> None:
    args = VARIANTS[name]
    ns = lab("apply")
    ns.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ns.run("ip", "addr", "add", "10.200.0.1/24", "dev", "d0")
    ns.run("ip", "link", "set", "d0", "up")
    ns.run("ip", "route", "add", "default", "via", "10.200.0.2")
    before = fingerprint(ns, backend)

    applied = ns.detour_init("apply", "--backend", backend, *args)
    assert applied.returncode == 0, applied.stderr

    config = parse_config(vars(build_parser().parse_args(["apply", *args])), {})
    enabled = (4,) if config.ipv6 == "off" else (4, 6)  # a fresh namespace has IPv6
    for family in (4, 6):
        installed = detour_view(parse_save(_save(ns, backend, family)))
        expected = view_of_ruleset(build_rules(config, family)) if family in enabled else None
        if expected is None:
            assert installed.is_empty
        else:
            assert installed == expected, f"IPv{family} installed rules differ from rendered"

    _poke(ns)
    counted = _detour_counters(ns, backend)
    assert any(not line.split()[1].startswith("[0:") for line in counted), counted
    table_state = fingerprint(ns, backend)

    again = ns.detour_init("apply", "--backend", backend, *args)
    assert again.returncode == 0, again.stderr
    assert _detour_counters(ns, backend) == counted, "re-apply replaced rules it should keep"
    assert fingerprint(ns, backend) == table_state

    removed = ns.detour_init("cleanup", "--backend", backend)
    assert removed.returncode == 0, removed.stderr
    assert fingerprint(ns, backend) == before
