"""The sidecar's downstream limits: each worker's share of the connection limit, never more
than its descriptors can serve, and bad values refused naming the flag."""

from __future__ import annotations

import pytest

from proxy.cli import main
from proxy.downstream_limits import RESERVED_DESCRIPTORS, DownstreamLimits


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
    ],
)
def test_bad_limits_are_refused_naming_the_flag(
    argv: list[str], named: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert named in capfd.readouterr().err
