"""The L4 relay: two asyncio Protocols copying bytes to each other, with backpressure both ways.

Why Protocols and not streams: on uvloop, ``data_received`` → ``transport.write`` is the
shortest path Python offers (no StreamReader buffer, no await per chunk), and transports already
implement flow control: when one side's write buffer passes its high-water mark, its protocol's
``pause_writing`` fires and we stop reading the *other* side until ``resume_writing``. So memory
per connection is bounded by the two write buffers, whatever the speeds of the two peers.

Half-close is passed through (EOF from one side becomes ``write_eof`` on the other, and the
reverse direction keeps flowing); a reset on one side closes the other once what was relayed
is delivered.

A side whose reading is paused is not watched by the event loop (neither uvloop nor asyncio
poll a paused socket), so a peer that resets while the other side stalls would go unnoticed
until the stalled side reads again or the idle timeout: the paused side's TCP state is looked
at every ``PAUSED_PEER_CHECK`` seconds instead, and a reset found there is reported the usual
way (reading resumes, the loop sees the error).
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
_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
# How often a side paused by backpressure is checked for a reset (one getsockopt each time,
# only while it stays paused).
PAUSED_PEER_CHECK = 0.5
_TCP_CLOSE = 7  # tcp_states.h: where a socket goes when a RST arrives


class RelayHalf(asyncio.Protocol):
    """One end of a relayed connection: what it reads is written to ``peer``."""

    __slots__ = (
        "early",
        "eof",
        "lost",
        "on_early",
        "on_lost",
        "paused_peer_check",
        "peer",
        "received",
        "transport",
    )

    def __init__(self, on_lost: Callable[[RelayHalf, Exception | None], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: RelayHalf | None = None
        self.received = 0
        self.eof = False
        self.lost = False
        self.on_lost = on_lost
        # Bytes that arrived before the peer existed (the client spoke before the upstream
        # connect finished). Reading is paused as soon as anything lands here, so this holds
        # at most one read's worth.
        self.early: list[bytes] = []
        # Told when early bytes or the EOF arrive (protocol sniffing waits on it).
        self.on_early: Callable[[], object] | None = None
        # While our write buffer is full and the peer's reading is paused: its reset watch.
        self.paused_peer_check: ResetWatch | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.peer
        if peer is None:
            self.early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
            if self.on_early is not None:
                self.on_early()
            return
        peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            if self.on_early is not None:
                self.on_early()
            return True  # link() passes the EOF on
        if peer is not None and not peer.lost and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is not None and peer.eof:
            # Both directions are finished: close once the buffers are flushed.
            self.transport.close()  # type: ignore[union-attr]
            peer.transport.close()
        return True  # keep the transport open: the other direction may still be flowing

    def pause_writing(self) -> None:
        # Our outgoing buffer is full: stop reading the side that fills it.
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.pause_reading()
            if self.paused_peer_check is None:
                # On a reset, let it read again: the loop reads what is left and reports the
                # reset (connection_lost with ConnectionResetError) as for any other side.
                self.paused_peer_check = ResetWatch.start(
                    peer.transport, peer.transport.resume_reading
                )

    def resume_writing(self) -> None:
        self._stop_checking_peer()
        if self.peer is not None and not self.peer.lost:
            self.peer.transport.resume_reading()

    def _stop_checking_peer(self) -> None:
        if self.paused_peer_check is not None:
            self.paused_peer_check.cancel()
            self.paused_peer_check = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_checking_peer()
        peer = self.peer
        if peer is not None and not peer.lost:
            # Even after a reset, deliver what was relayed, then close (Envoy's FlushWrite):
            # a RST would make the peer's kernel drop a reply it has not read yet.
            peer.transport.close()
        self.on_lost(self, exc)


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
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def link(downstream: RelayHalf, upstream: RelayHalf) -> None:
    """Join two connected halves and let bytes flow, starting with anything already read."""
    downstream.peer = upstream
    upstream.peer = downstream
    if downstream.early:
        upstream.transport.writelines(downstream.early)  # type: ignore[union-attr]
        downstream.early.clear()
    if downstream.eof:
        if upstream.transport.can_write_eof():  # type: ignore[union-attr]
            upstream.transport.write_eof()  # type: ignore[union-attr]
        return
    if upstream.transport.get_write_buffer_size() <= HIGH_WATER:  # type: ignore[union-attr]
        downstream.transport.resume_reading()  # type: ignore[union-attr]
    # else: the early bytes filled the buffer; resume_writing() resumes reading later
