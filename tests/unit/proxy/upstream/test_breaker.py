"""Circuit breaker: limits, overflow counting, and refusals that leave counts alone."""

from __future__ import annotations

import pytest

from proxy.config.model import CircuitBreaker as CircuitBreakerConfig
from proxy.upstream.breaker import CircuitBreaker


def test_connections_are_limited_and_overflow_counted() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_connections=2, max_pending=10))
    assert [breaker.try_open_connection() for _ in range(4)] == [True, True, False, False]
    assert breaker.connections == 2
    assert breaker.connection_overflow_total == 2
    assert breaker.overflow_total == 2
    breaker.connection_closed()
    assert breaker.connections == 1
    assert breaker.try_open_connection()
    assert breaker.connections == 2


def test_pending_connects_are_limited_and_overflow_counted() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_connections=10, max_pending=1))
    assert [breaker.try_start_pending() for _ in range(3)] == [True, False, False]
    assert breaker.pending == 1
    assert breaker.pending_overflow_total == 2
    breaker.pending_done()
    assert breaker.pending == 0
    assert breaker.try_start_pending()


def test_limits_are_independent() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_connections=1, max_pending=1))
    assert breaker.try_open_connection()
    assert breaker.try_start_pending()
    assert not breaker.try_open_connection()
    assert not breaker.try_start_pending()
    assert (breaker.connections, breaker.pending) == (1, 1)
    assert (breaker.connection_overflow_total, breaker.pending_overflow_total) == (1, 1)
    assert breaker.overflow_total == 2


def test_zero_limit_refuses_everything() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_connections=0, max_pending=0))
    assert not breaker.try_open_connection()
    assert not breaker.try_start_pending()
    assert (breaker.connections, breaker.pending, breaker.overflow_total) == (0, 0, 2)


def test_unmatched_release_is_an_error_not_a_negative_count() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig())
    with pytest.raises(RuntimeError):
        breaker.connection_closed()
    with pytest.raises(RuntimeError):
        breaker.pending_done()
    assert (breaker.connections, breaker.pending) == (0, 0)


def test_defaults_are_envoys() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig())
    assert all(breaker.try_open_connection() for _ in range(1024))
    assert not breaker.try_open_connection()
