"""Weighted round robin: exact shares per cycle, smooth interleaving, and list changes."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from proxy.upstream.hosts import Host
from proxy.upstream.lb import RoundRobin

MakeHosts = Callable[..., tuple[Host, ...]]


def picks(balancer: RoundRobin, hosts: Sequence[Host], count: int) -> list[Host]:
    return [balancer.pick(hosts) for _ in range(count)]


def windows(sequence: list[Host], size: int) -> list[list[Host]]:
    """Every run of ``size`` consecutive picks (sliding, not only aligned cycles)."""
    return [sequence[i : i + size] for i in range(len(sequence) - size + 1)]


def longest_run(sequence: list[Host]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(sequence))


def test_equal_weights_pick_every_host_once_per_cycle(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    sequence = picks(RoundRobin(), hosts, 30)
    assert all(set(window) == set(hosts) for window in windows(sequence, 3))


def test_weights_1_2_3_are_exact_in_every_cycle(make_hosts: MakeHosts) -> None:
    a, b, c = hosts = make_hosts(1, 2, 3)
    sequence = picks(RoundRobin(), hosts, 120)
    for window in windows(sequence, 6):
        assert Counter(window) == {a: 1, b: 2, c: 3}


def test_unusual_weights_are_exact_too(make_hosts: MakeHosts) -> None:
    a, b, c = hosts = make_hosts(7, 3, 5)
    sequence = picks(RoundRobin(), hosts, 15 * 20)
    for window in windows(sequence, 15):
        assert Counter(window) == {a: 7, b: 3, c: 5}


def test_equal_weights_never_pick_the_same_host_twice_in_a_row(make_hosts: MakeHosts) -> None:
    sequence = picks(RoundRobin(), make_hosts(1, 1, 1, 1), 200)
    assert longest_run(sequence) == 1


@pytest.mark.parametrize("weights", [(1, 2, 3), (3, 1, 1, 1), (4, 3, 2, 1)])
def test_weighted_picks_interleave_instead_of_bursting(
    make_hosts: MakeHosts, weights: tuple[int, ...]
) -> None:
    # A naive weighted round robin sends the weight-3 host three connections in a row.
    sequence = picks(RoundRobin(), make_hosts(*weights), 20 * sum(weights))
    assert longest_run(sequence) <= 2


def test_same_hosts_give_the_same_sequence(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(2, 1, 4)
    assert picks(RoundRobin(), hosts, 50) == picks(RoundRobin(), hosts, 50)


def test_removing_a_waiting_host_keeps_the_rotation(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    balancer = RoundRobin()
    picked = picks(balancer, hosts, 2)
    remaining = tuple(picked)  # the host still waiting for its turn is removed
    after = picks(balancer, remaining, 20)
    assert after[0] is not picked[-1]
    assert all(set(window) == set(remaining) for window in windows(after, 2))


def test_removing_the_host_just_picked_gives_the_waiting_host_its_turn(
    make_hosts: MakeHosts,
) -> None:
    hosts = make_hosts(1, 1, 1)
    balancer = RoundRobin()
    first, second = picks(balancer, hosts, 2)
    (waiting,) = set(hosts) - {first, second}
    remaining = tuple(h for h in hosts if h is not second)
    after = picks(balancer, remaining, 20)
    # Restarting the cycle would give ``first`` a second turn before ``waiting`` had one.
    assert after[0] is waiting
    assert all(set(window) == set(remaining) for window in windows(after, 2))


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (3, 1, 1, 1), (1, 2, 3, 6)])
def test_removal_continues_the_same_schedule_without_the_host(
    make_hosts: MakeHosts, weights: tuple[int, ...]
) -> None:
    hosts = make_hosts(*weights)
    gone = hosts[1]  # its weight divides the others' common multiple: the period is unchanged
    reference, balancer = RoundRobin(), RoundRobin()
    expected = [h for h in picks(reference, hosts, 7 + 5 * sum(weights))[7:] if h is not gone]
    picks(balancer, hosts, 7)
    remaining = tuple(h for h in hosts if h is not gone)
    assert picks(balancer, remaining, len(expected)) == expected


def test_weights_stay_exact_after_a_host_is_removed_mid_cycle(make_hosts: MakeHosts) -> None:
    a, b, c = hosts = make_hosts(1, 2, 3)
    balancer = RoundRobin()
    picks(balancer, hosts, 4)
    after = picks(balancer, (a, b), 60)
    assert c not in after
    assert Counter(after[:3]) == {a: 1, b: 2}
    for window in windows(after, 3):
        assert Counter(window) == {a: 1, b: 2}


def test_added_host_joins_within_a_cycle(make_hosts: MakeHosts) -> None:
    a, b, c = make_hosts(1, 1, 1)
    balancer = RoundRobin()
    picks(balancer, (a, b), 3)
    after = picks(balancer, (a, b, c), 30)
    assert c in after[:3]
    assert all(set(window) == {a, b, c} for window in windows(after, 3))


def test_shrinking_to_one_host_and_to_none_and_back(make_hosts: MakeHosts) -> None:
    a, b = hosts = make_hosts(1, 1)
    balancer = RoundRobin()
    picks(balancer, hosts, 3)
    assert picks(balancer, (a,), 3) == [a, a, a]
    assert balancer.pick(()) is None
    assert set(picks(balancer, hosts, 2)) == {a, b}


def test_an_equal_list_in_a_new_object_keeps_the_position(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    balancer = RoundRobin()
    sequence = [balancer.pick(list(hosts)) for _ in range(30)]
    assert all(set(window) == set(hosts) for window in windows(sequence, 3))
