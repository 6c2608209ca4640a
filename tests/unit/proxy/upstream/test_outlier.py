"""Consecutive-failure outlier detection, driven by a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy.config.model import OutlierDetection
from proxy.upstream.hosts import Host, HostSet
from proxy.upstream.lb import RoundRobin
from proxy.upstream.outlier import MAX_EJECTION_TIME, OutlierDetector

MakeHosts = Callable[..., tuple[Host, ...]]


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def detector(
    hosts: tuple[Host, ...],
    clock: FakeClock,
    failures: int = 3,
    base: float = 30.0,
    percent: int = 100,
    gateway: int = 0,
) -> OutlierDetector:
    config = OutlierDetection(
        consecutive_5xx_errors=failures,
        consecutive_gateway_errors=gateway,
        base_ejection_time=base,
        max_ejection_percent=percent,
    )
    return OutlierDetector(config, clock, hosts)


def fail(outliers: OutlierDetector, host: Host, times: int) -> list[bool]:
    """Whether each of ``times`` failures of our own making ejected ``host``."""
    return [outliers.on_failure(host) is not None for _ in range(times)]


def answer(outliers: OutlierDetector, host: Host, *statuses: int) -> list[str | None]:
    """The ejection (its kind) each response status made, in order."""
    return [outliers.on_response(host, status) for status in statuses]


def test_ejects_after_the_configured_run_of_failures(make_hosts: MakeHosts) -> None:
    a, b = hosts = make_hosts(1, 1)
    host_set = HostSet(hosts)
    outliers = detector(hosts, FakeClock())
    assert fail(outliers, a, 3) == [False, False, True]
    assert a.ejected and not a.usable
    assert outliers.is_ejected(a, 0.0)
    assert host_set.usable() == (b,)
    assert (outliers.ejections_active, outliers.ejections_total) == (1, 1)


def test_a_success_resets_the_run(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    outliers = detector(hosts, FakeClock())
    fail(outliers, a, 2)
    outliers.on_success(a)
    assert fail(outliers, a, 2) == [False, False]
    assert not a.ejected
    assert outliers.on_failure(a)


@pytest.mark.parametrize(
    ("statuses", "ejections"),
    [
        ((500, 503, 599), [None, None, "consecutive_5xx"]),
        ((500, 200, 500, 500), [None, None, None, None]),  # any answer below 500 ends the run
        ((500, 404, 502, 501, 500), [None, None, None, None, "consecutive_5xx"]),
        ((503, 503, 503, 503), [None, None, "consecutive_5xx", None]),  # ejected: no repeat
    ],
)
def test_5xx_responses_eject_after_the_run(
    make_hosts: MakeHosts, statuses: tuple[int, ...], ejections: list[str | None]
) -> None:
    a, _ = hosts = make_hosts(1, 1)
    outliers = detector(hosts, FakeClock())
    assert answer(outliers, a, *statuses) == ejections


@pytest.mark.parametrize(
    ("statuses", "ejections"),
    [
        ((502, 503, 504), [None, "consecutive_gateway_failure", None]),
        ((502, 500, 503, 504), [None, None, None, "consecutive_gateway_failure"]),  # 500 ends it
        ((504, 200, 504), [None, None, None]),
    ],
)
def test_gateway_errors_have_their_own_run(
    make_hosts: MakeHosts, statuses: tuple[int, ...], ejections: list[str | None]
) -> None:
    a, _ = hosts = make_hosts(1, 1)
    outliers = detector(hosts, FakeClock(), failures=5, gateway=2)
    assert answer(outliers, a, *statuses) == ejections


def test_our_own_failures_count_as_gateway_errors_and_a_threshold_of_zero_is_off(
    make_hosts: MakeHosts,
) -> None:
    a, b = hosts = make_hosts(1, 1)
    outliers = detector(hosts, FakeClock(), failures=0, gateway=2)
    assert answer(outliers, a, 500, 500, 500, 500, 500, 500) == [None] * 6  # 5xx run off
    assert outliers.on_response(a, 503) is None
    assert outliers.on_failure(a) == "consecutive_gateway_failure"  # a reset after a 503
    assert answer(outliers, b, 502) == [None]
    outliers.on_success(b)  # a TCP connect, or a 2xx: the run starts again
    assert answer(outliers, b, 502) == [None]


def test_ejection_ends_after_the_base_time(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    clock = FakeClock()
    outliers = detector(hosts, clock)
    clock.now = 100.0
    fail(outliers, a, 3)
    assert a.ejected_until == 130.0
    assert outliers.sweep(129.9) == ()
    assert outliers.is_ejected(a, 129.9)
    assert not outliers.is_ejected(a, 130.0)
    assert list(outliers.sweep(130.0)) == [a]
    assert a.usable and outliers.ejections_active == 0
    assert outliers.sweep(500.0) == ()


def test_readmitted_host_needs_a_full_new_run(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    outliers = detector(hosts, FakeClock())
    fail(outliers, a, 5)  # two failures more while ejected
    outliers.sweep(30.0)
    assert a.consecutive_5xx == 0
    assert fail(outliers, a, 3) == [False, False, True]


def test_second_ejection_lasts_twice_as_long(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    clock = FakeClock()
    outliers = detector(hosts, clock)
    fail(outliers, a, 3)
    clock.now = 30.0
    outliers.sweep(30.0)
    fail(outliers, a, 3)
    assert a.ejected_until == 90.0
    assert outliers.sweep(89.0) == ()
    assert list(outliers.sweep(90.0)) == [a]
    assert outliers.ejections_total == 2


def test_ejection_time_is_capped(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    clock = FakeClock()
    outliers = detector(hosts, clock, base=70.0)
    durations = []
    for _ in range(6):
        fail(outliers, a, 3)
        assert a.ejected_until is not None
        durations.append(a.ejected_until - clock.now)
        clock.now = a.ejected_until
        outliers.sweep(clock.now)
    assert durations == [70.0, 140.0, 210.0, 280.0, MAX_EJECTION_TIME, MAX_EJECTION_TIME]
    # The multiplier stopped at the cap (5 x 70 s), so two base times back in service bring
    # the next ejection down to 4 x 70 s however many capped ejections came before.
    clock.now += 140.0
    fail(outliers, a, 3)
    assert a.ejected_until == clock.now + 280.0


def test_time_back_in_service_shrinks_the_next_ejection(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    clock = FakeClock()
    outliers = detector(hosts, clock)
    for _ in range(3):  # ejected for 30, 60, 90 s in a row
        fail(outliers, a, 3)
        clock.now = a.ejected_until or 0.0
        outliers.sweep(clock.now)
    clock.now += 60.0  # two base times back in service: the multiplier drops from 3 to 1,
    # so this ejection counts as the second in a row (60 s), not the fourth (120 s)
    fail(outliers, a, 3)
    assert a.ejected_until == clock.now + 60.0


def test_failures_of_an_ejected_host_do_not_extend_its_ejection(make_hosts: MakeHosts) -> None:
    a, _ = hosts = make_hosts(1, 1)
    clock = FakeClock()
    outliers = detector(hosts, clock)
    fail(outliers, a, 3)
    clock.now = 10.0
    assert fail(outliers, a, 3) == [False, False, False]
    assert a.ejected_until == 30.0
    assert outliers.ejections_total == 1


def test_max_ejection_percent_is_respected(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(*[1] * 10)
    clock = FakeClock()
    outliers = detector(hosts, clock, percent=20)
    assert [fail(outliers, host, 3)[-1] for host in hosts[:3]] == [True, True, False]
    assert outliers.ejections_active == 2
    assert outliers.ejections_overflow_total == 1
    assert not hosts[2].ejected
    clock.now = 30.0
    outliers.sweep(30.0)
    assert outliers.on_failure(hosts[2])  # its run was kept: ejected as soon as there is room


def test_at_least_one_host_may_be_ejected(make_hosts: MakeHosts) -> None:
    a, b, c = hosts = make_hosts(1, 1, 1)
    outliers = detector(hosts, FakeClock(), percent=10)  # 10% of 3 rounds down to 0
    assert fail(outliers, a, 3)[-1]
    assert not fail(outliers, b, 3)[-1]
    assert not fail(outliers, c, 3)[-1]
    assert outliers.ejections_active == 1


@pytest.mark.parametrize(("count", "percent"), [(1, 50), (5, 0)])
def test_no_ejection_when_the_rule_allows_none(
    make_hosts: MakeHosts, count: int, percent: int
) -> None:
    hosts = make_hosts(*[1] * count)
    outliers = detector(hosts, FakeClock(), percent=percent)
    assert not any(fail(outliers, hosts[0], 10))
    assert outliers.ejections_active == 0


def test_all_hosts_ejected_means_panic_mode(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    host_set = HostSet(hosts)
    outliers = detector(hosts, FakeClock(), percent=100)
    for host in hosts:
        fail(outliers, host, 3)
    assert outliers.ejections_active == 3
    assert host_set.panic
    balancer = RoundRobin()
    assert {host_set.pick(balancer) for _ in range(3)} == set(hosts)


def test_removed_hosts_stop_counting_against_the_percentage(make_hosts: MakeHosts) -> None:
    a, b, c, d = hosts = make_hosts(1, 1, 1, 1)
    outliers = detector(hosts, FakeClock(), percent=25)
    fail(outliers, a, 3)
    assert not fail(outliers, b, 3)[-1]
    outliers.set_hosts((b, c, d, *make_hosts(1, 1, 1, 1, port=9090)))
    assert outliers.ejections_active == 0
    assert not a.ejected
    assert outliers.on_failure(b)
