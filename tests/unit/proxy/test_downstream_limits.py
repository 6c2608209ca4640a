"""The sidecar's downstream limits: each worker's share of the connection limit, never more
than its descriptors can serve, its share of the memory limit and when its guard refuses, and
bad values refused naming the flag."""

from __future__ import annotations

import pytest

from proxy.cli import main
from proxy.downstream_limits import MIB, RESERVED_DESCRIPTORS, DownstreamLimits, MemoryGuard


@pytest.mark.parametrize(
    ("max_connections", "workers", "descriptors", "expected"),
    [
        (0, 1, 1024, (1024 - RESERVED_DESCRIPTORS) // 2),  # auto: what the descriptors serve
        (0, 4, 65536, (65536 - RESERVED_DESCRIPTORS) // 2),  # per process, so per worker
        (100, 1, 65536, 100),
        (100, 3, 65536, 34),  # rounded up: the sidecar holds at least what was asked
        (2, 4, 65536, 1),  # never zero
        (100_000, 1, 1024, (1024 - RESERVED_DESCRIPTORS) // 2),  # capped by descriptors
        (5, 1, 10, 1),  # a tiny descriptor limit still accepts one
    ],
)
def test_a_workers_share_of_the_connection_limit(
    max_connections: int, workers: int, descriptors: int, expected: int
) -> None:
    limits = DownstreamLimits(max_connections=max_connections)
    assert limits.per_worker(workers, descriptors) == expected


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--max-connections", "-1"], "--max-connections=-1"),
        (["--request-headers-timeout", "-0.5"], "--request-headers-timeout=-0.5"),
        (["--request-headers-timeout", "7200"], "--request-headers-timeout=7200"),
        (["--memory-limit-mib", "-1"], "--memory-limit-mib=-1"),
    ],
)
def test_bad_limits_are_refused_naming_the_flag(
    argv: list[str], named: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert named in capfd.readouterr().err


@pytest.mark.parametrize(
    ("limit_mib", "workers", "mark"),
    [(0, 2, 0), (512, 1, 512 * MIB), (512, 2, 256 * MIB), (100, 3, 100 * MIB // 3)],
)
def test_a_workers_share_of_the_memory_limit(limit_mib: int, workers: int, mark: int) -> None:
    assert DownstreamLimits(memory_limit_mib=limit_mib).memory_mark(workers) == mark


def test_the_memory_guard_holds_what_the_worker_held_at_its_mark() -> None:
    """Below the mark: no limit. At the mark: what the worker holds then. Memory that stays
    high while connections close keeps that limit (the allocators reuse what they freed), so
    the worker takes connections again up to it; memory below 95% of the mark lifts it."""
    guard = MemoryGuard(100 * MIB)
    readings = [
        (50, 10),
        (99.9, 900),
        (100, 1000),  # at the mark: 1,000 is what this memory serves
        (100.5, 1200),  # accepted before the reading, between two checks: no new limit
        (100.5, 0),  # all closed, memory kept by the allocators: still 1,000
        (97, 400),  # between 95% and the mark: still on
        (94.9, 400),  # below 95%: off
        (99, 1500),
    ]
    seen = []
    for mib, connections in readings:
        changed = guard.observe(int(mib * MIB), connections)
        seen.append((guard.active, guard.limit if guard.active else None, changed))
    assert seen == [
        (False, None, False),
        (False, None, False),
        (True, 1000, True),
        (True, 1000, False),
        (True, 1000, False),
        (True, 1000, False),
        (False, None, True),
        (False, None, False),
    ]


def test_memory_that_climbs_on_above_the_mark_lowers_the_limit_to_what_is_held() -> None:
    guard = MemoryGuard(100 * MIB)
    guard.observe(100 * MIB, 1000)
    assert not guard.observe(int(104.9 * MIB), 800)  # less than 5% of the mark higher
    assert guard.observe(105 * MIB, 800) and guard.limit == 800  # heavier connections
    assert not guard.observe(int(109.9 * MIB), 900)
    assert not guard.observe(110 * MIB, 950) and guard.limit == 800  # never raised while on
    assert not guard.observe(110 * MIB, 0)


def test_without_a_mark_the_memory_guard_never_limits() -> None:
    guard = MemoryGuard(0)
    assert not guard.observe(1 << 40, 10) and not guard.active
