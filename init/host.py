"""Facts about the namespace init runs in: privileges and whether IPv6 exists."""

from __future__ import annotations

from pathlib import Path

from detour_common.capabilities import CAP_NET_ADMIN, has_capability


class PrivilegeError(RuntimeError):
    """The caller lacks a capability the command needs."""


def require_net_admin(command: str) -> None:
    if not has_capability(CAP_NET_ADMIN):
        raise PrivilegeError(
            f"detour-init {command} needs CAP_NET_ADMIN: run it as root, or as a container "
            "with --cap-add NET_ADMIN,NET_RAW"
        )


def ipv6_available() -> bool:
    """True when this namespace has an IPv6 stack (it may still have no IPv6 address): its
    ip6tables tables exist, so cleanup and show look there too."""
    return Path("/proc/net/if_inet6").exists() and Path("/proc/sys/net/ipv6").is_dir()


def ipv6_disabled() -> bool:
    """True when the stack exists but IPv6 is switched off on lo (``disable_ipv6=1``, as
    container runtimes set it for a network without IPv6): no IPv6 address or local route
    can be added there, so there is no IPv6 traffic to capture either."""
    try:
        return Path("/proc/sys/net/ipv6/conf/lo/disable_ipv6").read_text().strip() == "1"
    except OSError:
        return False
