"""Passive health: eject a host after consecutive errors (Envoy's ``consecutive_5xx`` and
``consecutive_gateway_failure`` outlier detection, Istio's ``consecutive5xxErrors`` and
``consecutiveGatewayErrors``).

What counts, as Envoy counts it with ``split_external_local_origin_errors`` off (Istio's
setting): an HTTP response's status (a 5xx is an error, 502/503/504 a gateway error too, any
other status ends both runs), and failures of our own making, which stand for a 503 (a
connect that fails or times out, an upstream reset or closed before a response, a per-try
timeout): both runs grow. A connect that succeeds ends both runs only where the connection
is the whole exchange (TCP); for HTTP the response decides.

The detector is pure bookkeeping over ``Host`` fields. Ejecting sets ``host.ejected_until``,
which makes the host unusable and tells its ``HostSet``; nothing else needs to be notified.
Ejections end only in ``sweep``, which is O(1) when nothing is due, so the data path can call
it before every pick (or from a timer, as Envoy does every ``interval``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

from proxy.config.model import MAX_EJECTION_TIME, OutlierDetection
from proxy.upstream.hosts import Host

__all__ = ["GATEWAY_ERRORS", "MAX_EJECTION_TIME", "Ejection", "OutlierDetector"]
# Envoy's ``isGatewayError``: the statuses a proxy in front of a dead upstream answers.
GATEWAY_ERRORS = frozenset({502, 503, 504})

# Which run ejected a host: the ``kind`` label of the enforced-ejection counter (Envoy's
# ``ejections_enforced_consecutive_5xx`` / ``..._consecutive_gateway_failure``).
Ejection = Literal["consecutive_5xx", "consecutive_gateway_failure"]


class OutlierDetector:
    """Consecutive-error ejection for one cluster.

    - ``consecutive_5xx_errors`` errors in a row, or ``consecutive_gateway_errors`` gateway
      errors in a row, eject a host (a threshold of 0 turns that run off).
    - An ejection lasts ``base_ejection_time x times ejected``, capped at ``MAX_EJECTION_TIME``
      (or the base time, if larger). The multiplier drops by one for every base ejection time
      the host spends back in service, so an old flap does not punish it forever; Envoy
      decrements it per ``interval`` in the same spirit.
    - A readmitted host starts with a clean failure count: it needs a full run of failures to
      be ejected again.
    - At most ``max_ejection_percent`` of the cluster's hosts are ejected at once, rounded
      down, except that one ejection is always allowed when the percentage is above zero and
      the cluster has more than one host (Envoy too "ejects at least one host"). A lone host is
      never ejected below 100%: ejecting it would only put the cluster in panic mode, which
      routes to it anyway. A refused ejection counts in ``ejections_overflow_total``; the
      host's failure run is kept, so its next failure ejects it once there is room.
    - A failure of an already ejected host (a connection started before the ejection, or panic
      traffic) neither extends nor repeats the ejection.

    The detector must know the cluster's hosts to apply the percentage: pass them at
    construction and call ``set_hosts`` on every endpoint update.
    """

    def __init__(
        self,
        config: OutlierDetection,
        clock: Callable[[], float],
        hosts: Sequence[Host] = (),
    ) -> None:
        self._threshold_5xx = config.consecutive_5xx_errors
        self._threshold_gateway = config.consecutive_gateway_errors
        self._base = max(0.0, config.base_ejection_time)
        self._max_time = max(MAX_EJECTION_TIME, self._base)
        self._max_multiplier = math.ceil(self._max_time / self._base) if self._base else 1
        self._percent = config.max_ejection_percent
        self._clock = clock
        self._host_count = 0
        self._ejected: set[Host] = set()
        self._expiries: list[tuple[float, int, Host]] = []  # heap of (ejected_until, seq, host)
        self._sequence = itertools.count()  # heap tie-breaker, so hosts are never compared
        self.ejections_total = 0
        self.ejections_overflow_total = 0
        self.set_hosts(hosts)

    @property
    def ejections_active(self) -> int:
        return len(self._ejected)

    def set_hosts(self, hosts: Sequence[Host]) -> None:
        """Adopt the cluster's current hosts. A removed host that was ejected is readmitted
        (its state is cleared) so it no longer counts against the percentage, and so it is not
        stuck ejected should the same object come back."""
        current = set(hosts)
        self._host_count = len(current)
        for host in self._ejected - current:
            self._readmit(host, self._clock())

    def on_success(self, host: Host) -> None:
        """A TCP connect to ``host`` succeeded, or it answered below 500: its runs are over."""
        host.consecutive_5xx = 0
        host.consecutive_gateway_errors = 0

    def on_failure(self, host: Host) -> Ejection | None:
        """A failure of our own making on ``host`` (connect failed or timed out, reset before
        a response, per-try timeout): a 503 in Envoy's books. The ejection it made, if any."""
        host.consecutive_5xx += 1
        host.consecutive_gateway_errors += 1
        return self._judge(host)

    def on_response(self, host: Host, status: int) -> Ejection | None:
        """``host`` answered ``status``. The ejection it made, if any."""
        if status < 500:
            self.on_success(host)
            return None
        host.consecutive_5xx += 1
        if status in GATEWAY_ERRORS:
            host.consecutive_gateway_errors += 1
        else:
            host.consecutive_gateway_errors = 0
        return self._judge(host)

    def _judge(self, host: Host) -> Ejection | None:
        kind: Ejection
        if 0 < self._threshold_5xx <= host.consecutive_5xx:
            kind = "consecutive_5xx"
        elif 0 < self._threshold_gateway <= host.consecutive_gateway_errors:
            kind = "consecutive_gateway_failure"
        else:
            return None
        if host.ejected:
            return None
        if len(self._ejected) >= self._ejection_limit():
            self.ejections_overflow_total += 1
            return None
        self._eject(host, self._clock())
        return kind

    def is_ejected(self, host: Host, now: float) -> bool:
        """Whether ``host`` is ejected at ``now``. A pure query: an expired ejection still makes
        the host unusable until ``sweep`` readmits it."""
        until = host.ejected_until
        return until is not None and now < until

    def sweep(self, now: float) -> Sequence[Host]:
        """Readmit every host whose ejection ended by ``now``; returns them (for logs/metrics).
        O(1) when none is due, O(log n) per readmitted host."""
        expiries = self._expiries
        if not expiries or expiries[0][0] > now:
            return ()
        readmitted: list[Host] = []
        while expiries and expiries[0][0] <= now:
            until, _, host = heapq.heappop(expiries)
            # Skip stale entries: hosts readmitted by ``set_hosts`` (and maybe ejected again).
            if host in self._ejected and host.ejected_until == until:
                self._readmit(host, now)
                readmitted.append(host)
        return readmitted

    def _ejection_limit(self) -> int:
        count, percent = self._host_count, self._percent
        if percent <= 0:
            return 0
        limit = count * percent // 100
        return max(1, limit) if count > 1 else limit

    def _eject(self, host: Host, now: float) -> None:
        multiplier = host.times_ejected
        if host.readmitted_at is not None and self._base:
            multiplier -= int((now - host.readmitted_at) // self._base)
        multiplier = min(max(0, multiplier) + 1, self._max_multiplier)
        host.times_ejected = multiplier
        until = now + min(self._base * multiplier, self._max_time)
        host.ejected_until = until
        self._ejected.add(host)
        heapq.heappush(self._expiries, (until, next(self._sequence), host))
        self.ejections_total += 1

    def _readmit(self, host: Host, now: float) -> None:
        self._ejected.discard(host)
        host.consecutive_5xx = 0
        host.consecutive_gateway_errors = 0
        host.readmitted_at = now
        host.ejected_until = None
