"""Hosts from weights, shared by the upstream tests."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from proxy.config.model import Endpoint
from proxy.upstream.hosts import Host


@pytest.fixture
def make_hosts() -> Callable[..., tuple[Host, ...]]:
    """``make_hosts(1, 2, 3)``: hosts 10.0.0.1, 10.0.0.2, ... with those weights."""

    def make(*weights: int, port: int = 8080) -> tuple[Host, ...]:
        return tuple(
            Host(Endpoint(ipaddress.ip_address(f"10.0.{i // 250}.{i % 250 + 1}"), weight), port)
            for i, weight in enumerate(weights)
        )

    return make
