"""Least request (power of two choices): statistical preference for less-loaded hosts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from proxy.upstream.hosts import Host
from proxy.upstream.lb import LeastRequest

MakeHosts = Callable[..., tuple[Host, ...]]
PICKS = 10_000


def test_idle_host_wins_far_more_than_its_uniform_share(make_hosts: MakeHosts) -> None:
    idle, *busy = hosts = make_hosts(1, 1, 1, 1)
    for host in busy:
        host.active_requests = 10
    balancer = LeastRequest(2, random.Random(7))
    counts = Counter(balancer.pick(hosts) for _ in range(PICKS))
    # Uniform would give the idle host 25%; two choices give 1 - (3/4)^2 = 43.75%.
    assert counts[idle] > 0.40 * PICKS


def test_busy_host_is_picked_only_when_it_is_every_draw(make_hosts: MakeHosts) -> None:
    _, busy = hosts = make_hosts(1, 1)
    busy.active_requests = 5
    balancer = LeastRequest(2, random.Random(11))
    counts = Counter(balancer.pick(hosts) for _ in range(PICKS))
    # Drawn twice out of two: 25%; random or round robin would give 50%.
    assert 0.20 * PICKS < counts[busy] < 0.30 * PICKS


def test_load_stays_even_as_requests_pile_up(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1, 1, 1)
    balancer = LeastRequest(2, random.Random(3))
    for _ in range(5_000):
        balancer.pick(hosts).active_requests += 1
    loads = [host.active_requests for host in hosts]
    # Uniform random spreads these by ~50-130 with this seed range; two choices by a handful.
    assert max(loads) - min(loads) <= 5


def test_more_choices_find_the_least_loaded_host_almost_always(make_hosts: MakeHosts) -> None:
    first, idle, last = hosts = make_hosts(1, 1, 1)
    first.active_requests = last.active_requests = 5
    balancer = LeastRequest(8, random.Random(5))
    counts = Counter(balancer.pick(hosts) for _ in range(PICKS))
    # Missed only when all eight draws avoid it: (2/3)^8, about 4%.
    assert counts[idle] > 0.93 * PICKS


def test_load_is_compared_per_unit_of_weight(make_hosts: MakeHosts) -> None:
    light, heavy = hosts = make_hosts(1, 3)
    light.active_requests, heavy.active_requests = 2, 4  # per weight: 3/1 against 5/3
    balancer = LeastRequest(2, random.Random(13))
    counts = Counter(balancer.pick(hosts) for _ in range(PICKS))
    # Comparing raw counts would prefer ``light`` (2 < 4) three times out of four.
    assert counts[heavy] > 0.70 * PICKS


def test_single_host_and_no_host(make_hosts: MakeHosts) -> None:
    (only,) = make_hosts(1)
    balancer = LeastRequest(2, random.Random(1))
    assert balancer.pick((only,)) is only
    assert balancer.pick(()) is None
