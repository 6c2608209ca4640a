"""Active health checking's state machine, without the probing.

The prober (asyncio, elsewhere) connects to each host every ``interval`` and reports the
outcome here; this module only decides when a run of outcomes flips the host, so the rule can
be tested without sockets or time.
"""

from __future__ import annotations

from proxy.config.model import HealthCheck
from proxy.upstream.hosts import Host


class HealthState:
    """Consecutive-outcome thresholds for one host, as in Envoy: ``unhealthy_threshold``
    failures in a row mark a healthy host unhealthy, ``healthy_threshold`` successes in a row
    mark an unhealthy host healthy. One outcome against the trend restarts the count, so a host
    flapping between results keeps its current state.

    The state starts from the host's current flag (healthy for a new host): a sidecar that
    refused traffic until the first probe round would fail every connection at startup. When
    ``host`` is given the verdict is written to ``host.healthy``, which updates its ``HostSet``.
    """

    def __init__(self, config: HealthCheck, host: Host | None = None) -> None:
        self._unhealthy_threshold = max(1, config.unhealthy_threshold)
        self._healthy_threshold = max(1, config.healthy_threshold)
        self._host = host
        self.healthy = True if host is None else host.healthy
        self._run = 0  # consecutive outcomes that disagree with ``healthy``

    def record(self, ok: bool) -> bool:
        """Feed one probe outcome. True when it flipped the state."""
        if ok == self.healthy:
            self._run = 0
            return False
        self._run += 1
        threshold = self._healthy_threshold if ok else self._unhealthy_threshold
        if self._run < threshold:
            return False
        self._run = 0
        self.healthy = ok
        if self._host is not None:
            self._host.healthy = ok
        return True
