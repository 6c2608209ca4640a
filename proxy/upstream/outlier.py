"""Passive health: eject a host after consecutive connect failures (Envoy's consecutive-errors
outlier detection, for the failures a TCP proxy sees: connects that fail or time out).

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

from proxy.config.model import OutlierDetection
from proxy.upstream.hosts import Host

# Envoy's max_ejection_time default: however often a host is ejected, it is retried this often.
MAX_EJECTION_TIME = 300.0


class OutlierDetector:
    """Consecutive-failure ejection for one cluster.

    - ``consecutive_failures`` failures in a row (no success between) eject a host.
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
        self._threshold = max(1, config.consecutive_failures)
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
        """A connect to ``host`` succeeded: its failure run is over."""
        host.consecutive_failures = 0

    def on_failure(self, host: Host) -> bool:
        """A connect to ``host`` failed. True when this failure ejected it."""
        host.consecutive_failures += 1
        if host.ejected or host.consecutive_failures < self._threshold:
            return False
        if len(self._ejected) >= self._ejection_limit():
            self.ejections_overflow_total += 1
            return False
        self._eject(host, self._clock())
        return True

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
        host.consecutive_failures = 0
        host.readmitted_at = now
        host.ejected_until = None
