"""make_balancer: one balancer per configured policy."""

from __future__ import annotations

import random

import pytest

from proxy.config.model import LB_POLICIES, LoadBalancer
from proxy.upstream.lb import LeastRequest, RandomBalancer, RingHash, RoundRobin, make_balancer

EXPECTED = {
    "round_robin": RoundRobin,
    "least_request": LeastRequest,
    "random": RandomBalancer,
    "ring_hash": RingHash,
}


@pytest.mark.parametrize("policy", LB_POLICIES)
def test_each_policy_builds_its_balancer(policy: str) -> None:
    balancer = make_balancer(LoadBalancer(policy=policy), random.Random(0))  # type: ignore[arg-type]
    assert type(balancer) is EXPECTED[policy]
    assert balancer.skips_unusable is (policy == "ring_hash")


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="maglev"):
        make_balancer(LoadBalancer(policy="maglev"), random.Random(0))  # type: ignore[arg-type]
