"""The L4 relay: two asyncio Protocols copying bytes to each other, with backpressure both ways.

Why Protocols and not streams: on uvloop, ``data_received`` → ``transport.write`` is the
shortest path Python offers (no StreamReader buffer, no await per chunk), and transports already
implement flow control: when one side's write buffer passes its high-water mark, its protocol's
``pause_writing`` fires and we stop reading the *other* side until ``resume_writing``. So memory
per connection is bounded by the two write buffers, whatever the speeds of the two peers.

Half-close is passed through (EOF from one side becomes ``write_eof`` on the other, and the
reverse direction keeps flowing); a reset on one side closes the other once what was relayed
is delivered.

A TLS side cannot be half-closed (an asyncio TLS transport has no ``write_eof``, and the
receiving sidecar's transport ends the whole connection on a ``close_notify``). So an EOF that
should cross to a TLS side is held while the TLS side still sends, and the TLS side is closed
(``close_notify``, then the TCP close) once it has been quiet for ``HALF_CLOSE_LINGER``: a
client that shut its write side and waits for an answer still gets one that starts within
that time, and a client that closed whole (the common case: a FIN, then nothing) does not
keep both sidecars' connections open until the server closes.

A side paused by backpressure is watched for a reset (``platform.transport.ResetWatch``): on
one, reading resumes and the loop reports it the usual way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.platform.transport import HIGH_WATER, LOW_WATER, ResetWatch

# How long a TLS side that cannot be given a half-close may stay quiet before it is closed.
HALF_CLOSE_LINGER = 5.0


class RelayHalf(asyncio.Protocol):
    """One end of a relayed connection: what it reads is written to ``peer``."""

    __slots__ = (
        "early",
        "eof",
        "linger",
        "lost",
        "on_early",
        "on_lost",
        "paused_peer_check",
        "peer",
        "peer_principal",
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
        self.peer_principal: str | None = None  # the mesh mTLS peer's, when verified
        # A TLS side held open after the other side's EOF: closed once it is quiet.
        self.linger: asyncio.TimerHandle | None = None

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
        # Keep the transport open: the other direction may still be flowing. Not a TLS one:
        # it closes on the peer's close_notify whatever we answer (and warns if told not to).
        keep_open = self.transport.can_write_eof()  # type: ignore[union-attr]
        peer = self.peer
        if peer is None:
            if self.on_early is not None:
                self.on_early()
            return keep_open  # link() passes the EOF on
        if peer is not None and not peer.lost:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.close_when_quiet(HALF_CLOSE_LINGER)
        if peer is not None and peer.eof:
            # Both directions are finished: close once the buffers are flushed.
            self.transport.close()  # type: ignore[union-attr]
            peer.transport.close()
        return keep_open

    def close_when_quiet(self, after: float) -> None:
        """Close this (TLS) side once it has received nothing for ``after`` seconds."""
        if self.linger is None and not self.lost:
            loop = asyncio.get_running_loop()
            self.linger = loop.call_later(after, self._quiet_check, loop, after, self.received)

    def _quiet_check(self, loop: asyncio.AbstractEventLoop, after: float, seen: int) -> None:
        if self.lost:
            return
        peer = self.peer
        busy = peer is not None and not peer.lost and peer.transport.get_write_buffer_size()
        if self.received != seen or busy:  # still answering (or its answer still being
            # delivered: our reading may be paused by it): look again later
            self.linger = loop.call_later(after, self._quiet_check, loop, after, self.received)
            return
        self.linger = None
        self.transport.close()  # type: ignore[union-attr]

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
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        peer = self.peer
        if peer is not None and not peer.lost:
            # Even after a reset, deliver what was relayed, then close (Envoy's FlushWrite):
            # a RST would make the peer's kernel drop a reply it has not read yet.
            peer.transport.close()
        self.on_lost(self, exc)


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
        else:
            upstream.close_when_quiet(HALF_CLOSE_LINGER)
        return
    if upstream.transport.get_write_buffer_size() <= HIGH_WATER:  # type: ignore[union-attr]
        downstream.transport.resume_reading()  # type: ignore[union-attr]
    # else: the early bytes filled the buffer; resume_writing() resumes reading later
