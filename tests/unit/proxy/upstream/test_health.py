"""Active health check thresholds: consecutive outcomes flip the host."""

from __future__ import annotations

from collections.abc import Callable

from proxy.config.model import HealthCheck
from proxy.upstream.health import HealthState
from proxy.upstream.hosts import Host, HostSet

MakeHosts = Callable[..., tuple[Host, ...]]


def record(state: HealthState, *outcomes: bool) -> list[bool]:
    return [state.record(ok) for ok in outcomes]


def test_unhealthy_after_the_threshold_of_failures(make_hosts: MakeHosts) -> None:
    (host,) = make_hosts(1)
    state = HealthState(HealthCheck(unhealthy_threshold=2, healthy_threshold=1), host)
    assert record(state, False) == [False]
    assert host.healthy
    assert record(state, False, False) == [True, False]
    assert not host.healthy and not state.healthy


def test_healthy_again_after_the_threshold_of_successes(make_hosts: MakeHosts) -> None:
    (host,) = make_hosts(1)
    state = HealthState(HealthCheck(unhealthy_threshold=1, healthy_threshold=3), host)
    assert record(state, False) == [True]
    assert record(state, True, True) == [False, False]
    assert not host.healthy
    assert record(state, True, True) == [True, False]
    assert host.healthy


def test_an_outcome_against_the_trend_restarts_the_count(make_hosts: MakeHosts) -> None:
    (host,) = make_hosts(1)
    state = HealthState(HealthCheck(unhealthy_threshold=2, healthy_threshold=2), host)
    assert record(state, False, True, False, True, False) == [False] * 5
    assert host.healthy
    assert record(state, False) == [True]
    assert record(state, True, False, True, False, True) == [False] * 5
    assert not host.healthy


def test_the_host_set_follows_the_verdict(make_hosts: MakeHosts) -> None:
    a, b = make_hosts(1, 1)
    host_set = HostSet((a, b))
    state = HealthState(HealthCheck(unhealthy_threshold=1, healthy_threshold=1), a)
    state.record(False)
    assert host_set.usable() == (b,)
    state.record(True)
    assert host_set.usable() == (a, b)


def test_starts_from_the_hosts_flag_and_works_without_a_host(make_hosts: MakeHosts) -> None:
    (host,) = make_hosts(1)
    host.healthy = False
    assert not HealthState(HealthCheck(), host).healthy
    detached = HealthState(HealthCheck(unhealthy_threshold=1))
    assert detached.healthy
    assert detached.record(False)
    assert not detached.healthy
