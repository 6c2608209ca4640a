"""Facts about the namespace init runs in: privileges and whether IPv6 exists."""

from __future__ import annotations

from pathlib import Path

CAP_NET_ADMIN = 12


class PrivilegeError(RuntimeError):
    """The caller lacks a capability the command needs."""


def effective_capabilities(status: str | None = None) -> int:
    """The CapEff bitmask from /proc/self/status (or the given text)."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def require_net_admin(command: str) -> None:
    if not effective_capabilities() >> CAP_NET_ADMIN & 1:
        raise PrivilegeError(
            f"detour-init {command} needs CAP_NET_ADMIN: run it as root, or as a container "
            "with --cap-add NET_ADMIN,NET_RAW"
        )


def ipv6_available() -> bool:
    """True when this namespace has an IPv6 stack (it may still have no IPv6 address)."""
    return Path("/proc/net/if_inet6").exists() and Path("/proc/sys/net/ipv6").is_dir()
