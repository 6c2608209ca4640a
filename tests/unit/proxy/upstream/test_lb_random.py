"""Weighted random: shares follow weights, and a seeded source makes it reproducible."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from proxy.upstream.hosts import Host
from proxy.upstream.lb import RandomBalancer

MakeHosts = Callable[..., tuple[Host, ...]]
PICKS = 60_000


@pytest.mark.parametrize("weights", [(1, 2, 3), (1, 1, 1, 1), (10, 1)])
def test_shares_follow_weights(make_hosts: MakeHosts, weights: tuple[int, ...]) -> None:
    hosts = make_hosts(*weights)
    balancer = RandomBalancer(random.Random(42))
    counts = Counter(balancer.pick(hosts) for _ in range(PICKS))
    for host, weight in zip(hosts, weights, strict=True):
        assert counts[host] / PICKS == pytest.approx(weight / sum(weights), abs=0.01)


def test_same_seed_same_picks(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 2, 3)
    first, second = RandomBalancer(random.Random(9)), RandomBalancer(random.Random(9))
    assert [first.pick(hosts) for _ in range(100)] == [second.pick(hosts) for _ in range(100)]


def test_shares_follow_a_changed_list(make_hosts: MakeHosts) -> None:
    a, b, c = make_hosts(1, 1, 2)
    balancer = RandomBalancer(random.Random(4))
    for _ in range(100):
        balancer.pick((a, b))
    counts = Counter(balancer.pick((b, c)) for _ in range(PICKS))
    assert counts[a] == 0
    assert counts[c] / PICKS == pytest.approx(2 / 3, abs=0.01)


def test_no_host(make_hosts: MakeHosts) -> None:
    balancer = RandomBalancer(random.Random(1))
    balancer.pick(make_hosts(1))
    assert balancer.pick(()) is None
