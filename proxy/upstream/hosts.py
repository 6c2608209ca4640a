"""Runtime state of a cluster's endpoints, and the set the load balancer chooses from.

The model's ``Endpoint`` is frozen config; a ``Host`` is the mutable twin the data path, the
outlier detector and the health checker write to. A ``HostSet`` caches which hosts are usable so
that asking for them on every new connection costs O(1): hosts tell their set when their
usability changes, instead of the set rescanning every host per pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxy.config.model import Endpoint

if TYPE_CHECKING:
    from proxy.upstream.lb import Balancer


def _noop() -> None:
    """Listener of a host that belongs to no set yet."""


class Host:
    """One endpoint of a cluster at runtime.

    The data path owns the counters (``active_requests``, ``connections_total``,
    ``connect_failures_total``); the outlier detector owns ``consecutive_5xx``,
    ``consecutive_gateway_errors``, ``times_ejected``, ``readmitted_at`` and
    ``ejected_until``; the health checker owns
    ``healthy``. ``usable`` is derived and read on the hot path, so it is recomputed only when
    ``healthy`` or ``ejected_until`` change, which is also when the owning ``HostSet`` is told.
    Identity is the object itself (no ``__eq__``): two hosts are never "equal" by address, which
    keeps set membership and balancer caches cheap and unambiguous.
    """

    __slots__ = (
        "_ejected_until",
        "_healthy",
        "_on_change",
        "_usable",
        "active_requests",
        "address",
        "connect_failures_total",
        "connections_total",
        "consecutive_5xx",
        "consecutive_gateway_errors",
        "endpoint",
        "key",
        "port",
        "readmitted_at",
        "times_ejected",
        "weight",
    )

    def __init__(self, endpoint: Endpoint, port: int) -> None:
        self.endpoint = endpoint
        self.address = str(endpoint.address)
        self.port = port
        # Weight 0 would make a host unreachable by every balancer yet still count as usable;
        # treat it as the smallest real weight instead of special-casing it on the hot path.
        self.weight = max(1, endpoint.weight)
        # Stable text identity, used by ring hash (it must not depend on the process).
        bracketed = endpoint.address.version == 6
        self.key = f"[{self.address}]:{port}" if bracketed else f"{self.address}:{port}"
        self.active_requests = 0
        self.connections_total = 0
        self.connect_failures_total = 0
        self.consecutive_5xx = 0
        self.consecutive_gateway_errors = 0
        self.times_ejected = 0
        self.readmitted_at: float | None = None
        self._healthy = True
        self._ejected_until: float | None = None
        self._usable = True
        self._on_change: Callable[[], None] = _noop

    def __repr__(self) -> str:
        return f"Host({self.key}, weight={self.weight})"

    @property
    def usable(self) -> bool:
        """Healthy and not ejected: eligible for load balancing outside panic mode."""
        return self._usable

    @property
    def healthy(self) -> bool:
        """The active health check's verdict (True until a checker says otherwise)."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy = value
        self._refresh()

    @property
    def ejected_until(self) -> float | None:
        """When the current outlier ejection ends, or None when the host is not ejected."""
        return self._ejected_until

    @ejected_until.setter
    def ejected_until(self, value: float | None) -> None:
        self._ejected_until = value
        self._refresh()

    @property
    def ejected(self) -> bool:
        return self._ejected_until is not None

    def watch(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever ``usable`` flips. One listener: the latest ``HostSet``
        built with this host, so state survives endpoint updates that keep the host."""
        self._on_change = listener

    def _refresh(self) -> None:
        usable = self._healthy and self._ejected_until is None
        if usable != self._usable:
            self._usable = usable
            self._on_change()


class HostSet:
    """The hosts of one cluster, with the usable ones cached.

    Panic mode (Envoy's name): when no host is usable, ``candidates()`` returns every host.
    A cluster whose hosts are all ejected or failing checks is more likely to be wrong about
    them (a network blip, an over-eager detector) than to be completely down, and refusing
    every connection would turn a partial outage into a total one. Envoy enters panic below a
    configurable healthy percentage (50% by default); Detour only when no host is usable at
    all, so ejecting a few hosts never spreads load back onto them.
    """

    __slots__ = ("_usable", "hosts")

    def __init__(self, hosts: Iterable[Host]) -> None:
        self.hosts: tuple[Host, ...] = tuple(hosts)
        self._usable: tuple[Host, ...] | None = None
        for host in self.hosts:
            host.watch(self.invalidate)

    def __len__(self) -> int:
        return len(self.hosts)

    def invalidate(self) -> None:
        """Forget the cached usable hosts; hosts call this when their usability flips."""
        self._usable = None

    def usable(self) -> tuple[Host, ...]:
        """Healthy, non-ejected hosts. The same tuple object is returned until a host changes,
        which lets balancers detect "nothing changed" with an identity check."""
        usable = self._usable
        if usable is None:
            usable = self._usable = tuple(host for host in self.hosts if host.usable)
        return usable

    @property
    def panic(self) -> bool:
        return bool(self.hosts) and not self.usable()

    def candidates(self) -> tuple[Host, ...]:
        """What a balancer should choose from: the usable hosts, or all of them in panic."""
        return self.usable() or self.hosts

    def pick(self, balancer: Balancer, hash_key: bytes | None = None) -> Host | None:
        """Pick a host for a new connection; None only when the cluster has no hosts.

        Balancers that skip unusable hosts themselves (ring hash, whose ring must not change
        when a host is ejected) get every host; the others get ``candidates()``.
        """
        hosts = self.hosts if balancer.skips_unusable else self.candidates()
        return balancer.pick(hosts, hash_key)
