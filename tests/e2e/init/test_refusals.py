"""Refusals change nothing: bad input, missing privilege, a backend conflict, a failed apply.

Each test installs a known-good config first, provokes the refusal, and checks the message
and that the namespace's tables and routes are byte for byte what they were.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from support.lab import VENV_BIN, Netns, fingerprint

from init.config import OPTIONS

# One unusable value per option; a test below checks that no option is missing here.
BAD_VALUES: dict[str, str] = {
    "--proxy-uid": "istio",
    "--proxy-gid": "-5",
    "--outbound-port": "70000",
    "--inbound-port": "0",
    "--mode": "MASQUERADE",
    "--inbound-ports": "80,http",
    "--exclude-inbound-ports": "22;23",
    "--outbound-ports": "99999",
    "--exclude-outbound-ports": "three",
    "--outbound-cidrs": "10.0.0.0/33",
    "--exclude-outbound-cidrs": "not-a-cidr",
    "--exclude-interfaces": "eth0/1",
    "--capture-dns": "maybe",
    "--dns-port": "65536",
    "--ipv6": "sometimes",
    "--drop-invalid": "2",
    "--backend": "iptables",
    "--log-format": "xml",
}


def test_every_option_has_a_bad_value_case() -> None:
    assert set(BAD_VALUES) == {option.flag for option in OPTIONS}


@pytest.fixture
def installed(lab) -> Netns:
    ns = lab("refuse")
    done = ns.detour_init("apply", "--backend", "legacy", "--capture-dns")
    assert done.returncode == 0, done.stderr
    return ns


def _snapshot(ns: Netns) -> str:
    return fingerprint(ns, "legacy") + fingerprint(ns, "nft")


@pytest.mark.parametrize("flag", sorted(BAD_VALUES))
def test_bad_flag_is_refused_by_name_and_nothing_changes(installed: Netns, flag: str) -> None:
    before = _snapshot(installed)
    done = installed.detour_init("apply", f"{flag}={BAD_VALUES[flag]}")
    assert done.returncode == 2
    assert flag in done.stderr and repr(BAD_VALUES[flag]) in done.stderr
    assert "Traceback" not in done.stderr
    assert _snapshot(installed) == before


@pytest.mark.parametrize("flag", ["--exclude-outbound-ports", "--mode", "--outbound-cidrs"])
def test_bad_environment_value_is_refused_by_variable_name(installed: Netns, flag: str) -> None:
    variable = "DETOUR_" + flag.removeprefix("--").replace("-", "_").upper()
    before = _snapshot(installed)
    done = installed.detour_init("apply", env={variable: BAD_VALUES[flag]})
    assert done.returncode == 2
    assert variable in done.stderr and repr(BAD_VALUES[flag]) in done.stderr
    assert _snapshot(installed) == before


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--outbound-port", "15006"], "--inbound-port"),
        (["--inbound-port", "15021"], "--inbound-port"),
        (["--capture-dns", "--dns-port", "15001"], "--dns-port"),
    ],
)
def test_conflicting_ports_are_refused(installed: Netns, args: list[str], named: str) -> None:
    before = _snapshot(installed)
    done = installed.detour_init("apply", *args)
    assert done.returncode == 2 and named in done.stderr
    assert _snapshot(installed) == before


def test_without_cap_net_admin_apply_refuses_and_touches_nothing(installed: Netns) -> None:
    before = _snapshot(installed)
    done = installed.run(
        str(VENV_BIN / "detour-init"), "apply", "--mode", "TPROXY", uid=65534, check=False
    )
    assert done.returncode == 2
    assert "CAP_NET_ADMIN" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(installed) == before


def test_the_other_backend_is_refused_while_detour_rules_live_in_one(installed: Netns) -> None:
    before = _snapshot(installed)
    done = installed.detour_init("apply", "--backend", "nft")
    assert done.returncode == 2
    assert "legacy" in done.stderr and "cleanup --backend legacy" in done.stderr
    assert _snapshot(installed) == before


def test_auto_backend_finds_the_installed_rules_again(installed: Netns) -> None:
    assert installed.detour_init("cleanup").returncode == 0
    assert "DETOUR_" not in installed.run("iptables-legacy-save").stdout


# Runs inside the namespace: a real backend whose second restore (the IPv6 one, after IPv4
# was committed) fails, as a kernel missing ip6tables support would make it fail.
_FAIL_HALFWAY = textwrap.dedent("""
    import sys
    from init.backend import BackendError, IptablesBackend
    from init.config import parse_config
    from init.install import ApplyError, Installer
    from init.routing import PolicyRouting
    from init.rules import build_rules

    class FailsOnSecondRestore(IptablesBackend):
        calls = 0
        def restore(self, family, text, noflush=True, counters=False):
            self.calls += 1
            if self.calls == 2:
                raise BackendError("ip6tables-legacy-restore: simulated failure")
            super().restore(family, text, noflush, counters)

    config = parse_config({"mode": "TPROXY", "drop_invalid": "true"}, {})
    with PolicyRouting() as routing:
        installer = Installer(FailsOnSecondRestore("legacy"), routing, (4, 6))
        try:
            installer.converge({f: build_rules(config, f) for f in (4, 6)})
        except ApplyError as err:
            print(err)
            sys.exit(1)
""")


def test_a_failure_halfway_rolls_everything_back(installed: Netns) -> None:
    before = _snapshot(installed)
    done = installed.run(str(VENV_BIN / "python"), "-c", _FAIL_HALFWAY, check=False)
    assert done.returncode == 1, done.stderr
    assert "installing the IPv6 rules failed" in done.stdout
    assert "rolled back" in done.stdout and "INCOMPLETE" not in done.stdout
    assert _snapshot(installed) == before


def test_json_logs_are_one_object_per_line(lab) -> None:
    ns = lab("json")
    done = ns.detour_init("apply", "--log-format", "json")
    assert done.returncode == 0
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert entries and all({"time", "level", "msg"} <= set(e) for e in entries)
