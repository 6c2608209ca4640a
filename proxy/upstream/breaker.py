"""Circuit breaking: cap how much of the upstream one cluster may hold at once.

Envoy's cluster thresholds, for what a TCP proxy holds: open upstream connections and
connections still waiting for their upstream connect. A refusal is cheap and immediate, so an
overloaded or black-holed upstream sheds load at the sidecar instead of piling up sockets.
The counters are the breaker's own; callers pair every successful ``try_*`` with exactly one
release.
"""

from __future__ import annotations

from proxy.config.model import CircuitBreaker as CircuitBreakerConfig


class CircuitBreaker:
    """Counts open and pending upstream connections of one cluster against their limits.

    Typical use per downstream connection: ``try_start_pending()`` before connecting upstream
    and ``pending_done()`` once the connect finished either way; ``try_open_connection()`` once
    the socket is to be opened and ``connection_closed()`` when it closes. A refusal leaves
    every count unchanged and only bumps an overflow counter (Envoy's ``upstream_cx_overflow``
    and ``upstream_rq_pending_overflow``).
    """

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._max_connections = config.max_connections
        self._max_pending = config.max_pending
        self._connections = 0
        self._pending = 0
        self.connection_overflow_total = 0
        self.pending_overflow_total = 0

    @property
    def connections(self) -> int:
        return self._connections

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def overflow_total(self) -> int:
        """Every refusal, of either kind."""
        return self.connection_overflow_total + self.pending_overflow_total

    def try_open_connection(self) -> bool:
        if self._connections >= self._max_connections:
            self.connection_overflow_total += 1
            return False
        self._connections += 1
        return True

    def connection_closed(self) -> None:
        if self._connections <= 0:
            # A close without an open is a data-path bug; going negative would silently raise
            # the effective limit, so fail loudly instead.
            raise RuntimeError("connection_closed() without a matching try_open_connection()")
        self._connections -= 1

    def try_start_pending(self) -> bool:
        if self._pending >= self._max_pending:
            self.pending_overflow_total += 1
            return False
        self._pending += 1
        return True

    def pending_done(self) -> None:
        if self._pending <= 0:
            raise RuntimeError("pending_done() without a matching try_start_pending()")
        self._pending -= 1
