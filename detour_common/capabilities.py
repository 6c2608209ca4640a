"""The calling process's effective capabilities (``CapEff`` in /proc/self/status)."""

from __future__ import annotations

from pathlib import Path

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


def effective_capabilities(status: str | None = None) -> int:
    """The CapEff bitmask from /proc/self/status, or from the given text of such a file."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_capability(capability: int, status: str | None = None) -> bool:
    return bool(effective_capabilities(status) >> capability & 1)
