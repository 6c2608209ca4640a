"""Transport-level helpers every protocol of the data path shares: the write-buffer marks,
closing with a RST, and watching a paused socket for a reset.

A side whose reading is paused is not watched by the event loop (neither uvloop nor asyncio
poll a paused socket), so a peer that resets while the other side stalls would go unnoticed
until the stalled side reads again or the idle timeout: ``ResetWatch`` looks at the paused
side's TCP state every ``PAUSED_PEER_CHECK`` seconds instead, and its owner reports a reset
found there the usual way. The L4 relay and the HTTP/1.1 channel both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

# Per-direction buffering bound. 256 KiB keeps a 10 Gb/s-ish loopback busy while bounding a
# connection's memory to ~0.5 MiB; below LOW_WATER the paused side reads again.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
# How often a side paused by backpressure is checked for a reset (one getsockopt each time,
# only while it stays paused).
PAUSED_PEER_CHECK = 0.5
_TCP_CLOSE = 7  # tcp_states.h: where a socket goes when a RST arrives


class ResetWatch:
    """Looks every ``PAUSED_PEER_CHECK`` seconds whether a transport whose reading is paused
    was reset (the event loop does not watch a paused socket) and calls ``on_reset`` once if
    so. Its owner cancels it when reading resumes or the connection ends; it also stops by
    itself once the transport is closing."""

    __slots__ = ("_loop", "_on_reset", "_timer", "_transport", "checks")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.BaseTransport,
        on_reset: Callable[[], object],
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._on_reset = on_reset
        self.checks = 0  # looks taken so far
        self._timer: asyncio.TimerHandle | None = loop.call_later(PAUSED_PEER_CHECK, self._check)

    @classmethod
    def start(
        cls, transport: asyncio.BaseTransport, on_reset: Callable[[], object]
    ) -> ResetWatch | None:
        """A watch on the running loop; None outside any loop (a half driven by hand in the
        unit tests of the flow control)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return cls(loop, transport, on_reset)

    def _check(self) -> None:
        self.checks += 1
        self._timer = None
        if self._transport.is_closing():
            return
        if was_reset(self._transport):
            self._on_reset()
            return
        self._timer = self._loop.call_later(PAUSED_PEER_CHECK, self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def was_reset(transport: asyncio.BaseTransport) -> bool:
    """True when the transport's TCP socket is in state CLOSE: the peer reset it (a socket we
    have not closed gets there by a RST, or by a timeout that the loop has not read yet)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, ValueError):
        return False  # not TCP (a Unix socket in a test), or closed by us (uvloop: fd -1)
    return info[0] == _TCP_CLOSE


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST rather than a FIN: SO_LINGER 0, then abort. For refusing a
    downstream connection (no route, no upstream): the client learns at once, as from Envoy."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # ValueError: a transport already closed (uvloop's socket then has fd -1), e.g. a
        # session cut at the drain deadline whose client had gone: nothing left to reset.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    transport.abort()
