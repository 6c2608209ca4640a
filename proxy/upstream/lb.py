"""Load balancers: pick one host of a cluster for each new upstream connection.

Every balancer runs once per connection, so ``pick`` is O(1) or O(log n) and allocates no
containers. Anything derived from the host list (a schedule, cumulative weights, a hash ring)
is rebuilt only when the list changes. "Changed" is first checked by identity: ``HostSet``
returns the same tuple object until a host's usability flips, so the common case is one
``is`` comparison; a different but equal sequence costs one O(n) comparison and no rebuild.
Pass tuples; a list is compared element by element on every pick.

Randomness comes from an injected ``random.Random`` and time plays no part, so a seeded
balancer is reproducible in tests.
"""

from __future__ import annotations

import heapq
import math
import random
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from hashlib import blake2b
from itertools import accumulate, islice
from typing import Any, ClassVar, Final, Protocol

from proxy.config.model import LoadBalancer
from proxy.upstream.hosts import Host

# Past this many points a ring takes noticeably long to build (~0.1 s in CPython), so larger
# rings are thinned; see ``build_ring``. Envoy's own default maximum is far larger (8M) but it
# builds rings in C++.
MAX_RING_POINTS: Final = 1 << 16
# One 64-byte blake2b digest yields eight 64-bit ring points.
_DIGEST_POINTS: Final = struct.Struct(">8Q")


class Balancer(Protocol):
    """The interface the data path uses; built by ``make_balancer``."""

    # True when the balancer wants every host and steps over unusable ones itself.
    skips_unusable: ClassVar[bool]

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        """A host from ``hosts``; None only when ``hosts`` is empty."""
        ...


def make_balancer(config: LoadBalancer, rng: random.Random) -> Balancer:
    """The balancer for one cluster. Keep one per cluster: balancers carry state (a round-robin
    position, a cached ring) that only makes sense for a single host list."""
    match config.policy:
        case "round_robin":
            return RoundRobin()
        case "least_request":
            return LeastRequest(config.choice_count, rng)
        case "random":
            return RandomBalancer(rng)
        case "ring_hash":
            return RingHash(config.ring_size, rng)
    raise ValueError(f"unknown load balancer policy {config.policy!r}")


class _TracksHosts:
    """Rebuilds derived state only when the host list really changes."""

    def __init__(self) -> None:
        self._seen: Sequence[Host] | None = None  # the last tuple object seen, for ``is``
        self._hosts: tuple[Host, ...] = ()

    def _sync(self, hosts: Sequence[Host]) -> None:
        known = self._hosts
        same = len(hosts) == len(known) and all(a is b for a, b in zip(hosts, known, strict=True))
        if not same:
            self._hosts = tuple(hosts)
            self._rebuild(self._hosts)
        # A list could be mutated in place behind our back, so only tuples skip the comparison.
        self._seen = hosts if isinstance(hosts, tuple) else None

    def _rebuild(self, hosts: tuple[Host, ...]) -> None:
        raise NotImplementedError


# --- round robin ------------------------------------------------------------------------------

# Fields of a round-robin schedule entry. Entries are lists so ``pick`` can update them in
# place. (deadline, order) decides heap order; ``order`` is unique, so hosts never compare, and
# it grows with every pick, so hosts due at the same time go first-come first-served.
_DEADLINE, _ORDER, _STEP, _HOST = 0, 1, 2, 3
# Virtual ticks per period unit: room to stagger first deadlines and to rescale remaining waits
# without rounding them together.
_RR_RESOLUTION = 1 << 16


class RoundRobin(_TracksHosts):
    """Weighted round robin as earliest-deadline-first scheduling (Envoy's EDF scheduler).

    A host of weight w is due every ``period / w`` virtual ticks, ``period`` being a multiple
    of the weights' least common multiple, so deadlines are exact integers: over every run of
    ``sum(weights)`` consecutive picks each host is picked exactly ``weight`` times, and equal
    weights give plain rotation (never the same host twice in a row). A host's first deadline
    is staggered by its position in the list (host i of n is first due (i+1)/n of the way through
    its interval), so hosts of equal weight do not all come due together, which would bunch a
    heavy host's turns: 3:1:1:1 repeats A A B C A D, where starting every host at once repeats
    A A B C D A, three A's in a row across cycles.

    When the list changes, every surviving host keeps the share of its interval still to wait,
    so an ejection neither restarts the cycle nor hands a just-picked host another turn. When
    the weights' least common multiple is unchanged (always, with equal weights) the schedule
    continues exactly as before, minus the removed host.
    Cost per pick: one heap replace, O(log n).
    """

    skips_unusable: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[list[Any]] = []  # [deadline, order, step, host] (see _DEADLINE)
        self._now = 0  # the deadline of the latest pick: virtual "now"
        self._order = 0  # next tie-breaker

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        if hosts is not self._seen:
            self._sync(hosts)
        heap = self._heap
        if not heap:
            return None
        entry = heap[0]
        self._now = entry[_DEADLINE]
        entry[_DEADLINE] += entry[_STEP]
        entry[_ORDER] = self._order
        self._order += 1
        heapq.heapreplace(heap, entry)  # the root leaves and comes back with its new deadline
        host: Host = entry[_HOST]
        return host

    def _rebuild(self, hosts: tuple[Host, ...]) -> None:
        period = math.lcm(*(host.weight for host in hosts)) * _RR_RESOLUTION if hosts else 1
        previous = {entry[_HOST]: entry for entry in self._heap}
        heap: list[list[Any]] = []
        for index, host in enumerate(hosts):
            step = period // host.weight
            old = previous.get(host)
            if old is None:  # a newcomer: first due part-way into its interval, by position
                entry = [step * (index + 1) // len(hosts), self._order, step, host]
                self._order += 1
            else:  # the same share of the (rescaled) interval still to wait, rounded up
                deadline = -(-(old[_DEADLINE] - self._now) * step // old[_STEP])
                entry = [deadline, old[_ORDER], step, host]
            heap.append(entry)
        heapq.heapify(heap)
        self._heap = heap
        self._now = 0


# --- least request ----------------------------------------------------------------------------


class LeastRequest(_TracksHosts):
    """Power of ``choice_count`` choices (Envoy's P2C): draw that many hosts uniformly at random
    (with replacement) and keep the one with the fewest active requests per unit of weight.

    Comparing a few random hosts, instead of scanning for the global minimum, is O(k) per pick
    and avoids every connection herding onto the same momentarily idle host. With equal
    weights this is "fewest ``active_requests``"; with unequal weights, comparing
    ``(active + 1) / weight`` steers load towards being proportional to weight (Envoy switches
    to a weighted scheduler there; this is the cheap approximation). Ties keep the first draw.
    """

    skips_unusable: ClassVar[bool] = False

    def __init__(self, choice_count: int, rng: random.Random) -> None:
        super().__init__()
        self._extra_draws = range(max(1, choice_count) - 1)
        self._random = rng.random

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        if hosts is not self._seen:
            self._sync(hosts)
        candidates = self._hosts
        count = len(candidates)
        if count <= 1:
            return candidates[0] if candidates else None
        draw = self._random
        best = candidates[int(draw() * count)]
        for _ in self._extra_draws:
            other = candidates[int(draw() * count)]
            # other's load < best's load, load being (active + 1) / weight, without division
            scaled_other = (other.active_requests + 1) * best.weight
            if scaled_other < (best.active_requests + 1) * other.weight:
                best = other
        return best

    def _rebuild(self, hosts: tuple[Host, ...]) -> None:
        """Nothing derived to keep: ``_sync`` already stored the tuple."""


# --- random -----------------------------------------------------------------------------------


class RandomBalancer(_TracksHosts):
    """Weighted random: a host's chance is its weight over the total. A bisect over cumulative
    weights (built once per host list), O(log n) per pick."""

    skips_unusable: ClassVar[bool] = False

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._random = rng.random
        self._cumulative: list[int] = []
        self._total = 0

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        if hosts is not self._seen:
            self._sync(hosts)
        if not self._total:
            return None
        return self._hosts[bisect_right(self._cumulative, self._random() * self._total)]

    def _rebuild(self, hosts: tuple[Host, ...]) -> None:
        self._cumulative = list(accumulate(host.weight for host in hosts))
        self._total = self._cumulative[-1] if hosts else 0


# --- ring hash --------------------------------------------------------------------------------


class Ring:
    """Sorted ring points and, index for index, the host owning each point."""

    __slots__ = ("hosts", "owners", "points")

    def __init__(self, points: list[int], owners: list[Host], hosts: tuple[Host, ...]) -> None:
        self.points = points
        self.owners = owners
        self.hosts = hosts

    def __len__(self) -> int:
        return len(self.points)


def build_ring(hosts: tuple[Host, ...], ring_size: int, max_points: int = MAX_RING_POINTS) -> Ring:
    """A consistent-hash ring with at least ``ring_size`` points, shared in proportion to weight.

    A host of weight w gets ``ring_size * w / lightest_weight`` points (rounded up), each the
    blake2b hash of its address and an index. Because a host's points depend only on itself
    (and the lightest weight), adding or removing a host adds or removes exactly that host's
    points: only the keys landing on them move, about 1/N of all keys. Envoy instead spreads a
    fixed ring size over all hosts, which also shifts a few keys between the hosts that stay.

    Past ``max_points`` every host's count is halved (repeatedly) to keep building cheap.
    Each host's points are a prefix of one fixed sequence, so thinning drops points rather than
    moving them, and the halving step changes rarely as a cluster grows.
    """
    if not hosts:
        return Ring([], [], hosts)
    ring_size = max(1, ring_size)
    lightest = min(host.weight for host in hosts)
    counts = [-(-ring_size * host.weight // lightest) for host in hosts]
    total, limit, shift = sum(counts), max(max_points, 2 * ring_size), 0
    while total >> shift > limit:
        shift += 1
    if shift:
        counts = [max(1, -(-count >> shift)) for count in counts]
    entries = [
        (point, host.key, index)
        for index, (host, count) in enumerate(zip(hosts, counts, strict=True))
        for point in islice(_host_points(host.key), count)
    ]
    entries.sort()  # ties (astronomically rare) broken by address, so order never matters
    return Ring([e[0] for e in entries], [hosts[e[2]] for e in entries], hosts)


def _host_points(key: str) -> Iterator[int]:
    """The endless, process-independent sequence of ring points of the host named ``key``."""
    block = 0
    while True:
        yield from _DIGEST_POINTS.unpack(blake2b(f"{key}#{block}".encode()).digest())
        block += 1


def key_point(hash_key: bytes) -> int:
    """Where a key lands on the ring. blake2b, not ``hash()``: Python salts ``hash()`` per
    process, and every sidecar (and every restart) must send a key to the same host."""
    return int.from_bytes(blake2b(hash_key, digest_size=8).digest(), "big")


class RingHash(_TracksHosts):
    """Consistent hashing (Envoy's ring hash): the key goes to the first ring point at or after
    its own hash, so a given key keeps its host while the cluster's hosts stay the same.

    It takes every host (``skips_unusable``) and walks clockwise past unusable ones, so an
    ejection or failed health check moves only that host's keys, and only while it lasts; the
    ring itself is rebuilt only when the host list changes. When no host is usable (panic) the
    key's own host is returned. Without a key the point is random, as in Envoy.

    Per pick: one blake2b of the key and a bisect. The walk runs only when the key's host is
    unusable; it first checks that some host is usable (O(n) at worst, in panic).
    """

    skips_unusable: ClassVar[bool] = True

    def __init__(self, ring_size: int, rng: random.Random) -> None:
        super().__init__()
        self._ring_size = ring_size
        self._rng = rng
        self._ring = Ring([], [], ())

    @property
    def ring(self) -> Ring:
        """The current ring (for /config_dump-style introspection and tests)."""
        return self._ring

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        if hosts is not self._seen:
            self._sync(hosts)
        ring = self._ring
        points = ring.points
        if not points:
            return None
        point = self._rng.getrandbits(64) if hash_key is None else key_point(hash_key)
        index = bisect_left(points, point)
        if index == len(points):
            index = 0
        host = ring.owners[index]
        if host.usable:
            return host
        return _walk(ring, index, host)

    def _rebuild(self, hosts: tuple[Host, ...]) -> None:
        self._ring = build_ring(hosts, self._ring_size)


def _walk(ring: Ring, index: int, owner: Host) -> Host:
    """The first usable host clockwise after ``index``, or ``owner`` when none is usable."""
    if not any(host.usable for host in ring.hosts):
        return owner
    owners, count = ring.owners, len(ring.owners)
    while True:
        index += 1
        if index == count:
            index = 0
        host = owners[index]
        if host.usable:
            return host
