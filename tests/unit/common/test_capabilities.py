"""Reading the effective capabilities (shared by init, the interceptor and the sidecar), and
init refusing its commands without CAP_NET_ADMIN."""

from __future__ import annotations

from pathlib import Path

import pytest

from detour_common import capabilities
from detour_common.capabilities import CAP_NET_ADMIN, effective_capabilities, has_capability
from init.host import PrivilegeError, require_net_admin

ROOT_STATUS = """\
Name:\tpython3
Umask:\t0022
State:\tR (running)
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
"""

# A user process that may gain capabilities (CapPrm) but has none in effect.
USER_STATUS = """\
Name:\tpython3
Uid:\t1000\t1000\t1000\t1000
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t0000000000000000
CapBnd:\t000001ffffffffff
"""


def test_cap_net_admin_is_bit_12() -> None:
    assert CAP_NET_ADMIN == 12


def test_root_has_every_capability() -> None:
    caps = effective_capabilities(ROOT_STATUS)
    assert caps == 0x1FFFFFFFFFF
    assert caps >> CAP_NET_ADMIN & 1


def test_only_the_effective_set_counts() -> None:
    assert effective_capabilities(USER_STATUS) == 0


def test_container_with_net_admin_and_net_raw() -> None:
    # --cap-add NET_ADMIN,NET_RAW on top of nothing: bits 12 and 13.
    status = USER_STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000003000")
    caps = effective_capabilities(status)
    assert caps == (1 << 12) | (1 << 13)
    assert caps >> CAP_NET_ADMIN & 1


def test_has_capability_tests_one_bit() -> None:
    assert has_capability(CAP_NET_ADMIN, ROOT_STATUS)
    assert not has_capability(CAP_NET_ADMIN, USER_STATUS)


def test_missing_capeff_line_means_no_capabilities() -> None:
    assert effective_capabilities("Name:\tx\nCapPrm:\tffffffff\n") == 0
    assert effective_capabilities("") == 0


def test_reads_proc_self_status_by_default() -> None:
    text = Path("/proc/self/status").read_text()
    assert effective_capabilities() == effective_capabilities(text)


@pytest.mark.parametrize("caps", [0, 1 << 13, (1 << 12) - 1, 1 << 21])
def test_require_net_admin_refuses_without_the_bit(monkeypatch, caps: int) -> None:
    monkeypatch.setattr(capabilities, "effective_capabilities", lambda status=None: caps)
    with pytest.raises(PrivilegeError) as caught:
        require_net_admin("apply")
    assert "detour-init apply" in str(caught.value)
    assert "CAP_NET_ADMIN" in str(caught.value)


@pytest.mark.parametrize("caps", [1 << 12, 0x1FFFFFFFFFF])
def test_require_net_admin_accepts_with_the_bit(monkeypatch, caps: int) -> None:
    monkeypatch.setattr(capabilities, "effective_capabilities", lambda status=None: caps)
    require_net_admin("cleanup")
