"""Ring hash: stable key to host mapping, weight shares, minimal remapping, walking past
unusable hosts, and building the ring once per host list."""

from __future__ import annotations

import random
import subprocess
import sys
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from proxy.upstream import lb
from proxy.upstream.hosts import Host, HostSet
from proxy.upstream.lb import RingHash

MakeHosts = Callable[..., tuple[Host, ...]]
KEYS = [f"10.1.{i // 256}.{i % 256}".encode() for i in range(10_000)]
REPO = Path(__file__).resolve().parents[4]


def ring_hash(ring_size: int = 1024) -> RingHash:
    return RingHash(ring_size, random.Random(0))


def mapping(balancer: RingHash, hosts: Sequence[Host]) -> list[Host | None]:
    return [balancer.pick(hosts, key) for key in KEYS]


def test_same_key_same_host(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    first = mapping(ring_hash(), hosts)
    assert mapping(ring_hash(), hosts) == first
    assert len(set(first)) == 3


def test_mapping_does_not_depend_on_the_process(make_hosts: MakeHosts) -> None:
    # Python salts hash() per process; every sidecar must map a key to the same host.
    script = (
        "import ipaddress, random\n"
        "from proxy.config.model import Endpoint\n"
        "from proxy.upstream.hosts import Host\n"
        "from proxy.upstream.lb import RingHash\n"
        "hosts = tuple(Host(Endpoint(ipaddress.ip_address(f'10.0.0.{i}')), 8080)"
        " for i in (1, 2, 3))\n"
        "ring = RingHash(1024, random.Random(0))\n"
        "keys = [f'10.1.0.{i}'.encode() for i in range(200)]\n"
        "print(' '.join(str(hosts.index(ring.pick(hosts, k))) for k in keys))\n"
    )
    hosts = make_hosts(1, 1, 1)
    balancer = ring_hash()
    here = " ".join(
        str(hosts.index(balancer.pick(hosts, f"10.1.0.{i}".encode()))) for i in range(200)
    )
    for seed in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        )
        assert run.stdout.strip() == here


def test_keys_spread_in_proportion_to_weight(make_hosts: MakeHosts) -> None:
    weights = (1, 2, 3)
    hosts = make_hosts(*weights)
    counts = Counter(mapping(ring_hash(), hosts))
    for host, weight in zip(hosts, weights, strict=True):
        assert counts[host] / len(KEYS) == pytest.approx(weight / sum(weights), abs=0.03)


def test_ring_has_at_least_ring_size_points_shared_by_weight(make_hosts: MakeHosts) -> None:
    light, heavy = hosts = make_hosts(1, 3)
    balancer = ring_hash(ring_size=100)
    balancer.pick(hosts, b"k")
    owners = Counter(balancer.ring.owners)
    assert len(balancer.ring) >= 100
    assert owners[heavy] == 3 * owners[light]


def test_big_rings_are_thinned_but_keep_their_minimum(make_hosts: MakeHosts) -> None:
    hosts = tuple(make_hosts(*[1] * 10))  # 10 x 1024 points before thinning
    ring = lb.build_ring(hosts, 1024, max_points=4096)
    assert 1024 <= len(ring) <= 4096
    assert set(Counter(ring.owners).values()) == {len(ring) // 10}


def test_the_balancers_rings_are_thinned_at_the_default_limit(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(*[1] * 80)  # 80 x 1024 points before thinning: over 65,536
    balancer = ring_hash()
    balancer.pick(hosts, b"k")
    assert 1024 <= len(balancer.ring) <= lb.MAX_RING_POINTS


def test_adding_a_fourth_host_moves_about_a_quarter_of_keys_all_to_it(
    make_hosts: MakeHosts,
) -> None:
    hosts = make_hosts(1, 1, 1, 1)
    before = mapping(ring_hash(), hosts[:3])
    after = mapping(ring_hash(), hosts)
    moved = [new for old, new in zip(before, after, strict=True) if old is not new]
    assert 0.15 * len(KEYS) <= len(moved) <= 0.35 * len(KEYS)
    assert set(moved) == {hosts[3]}


def test_removing_a_host_moves_only_its_keys(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 2, 1, 1)
    gone = hosts[1]
    before = mapping(ring_hash(), hosts)
    after = mapping(ring_hash(), [h for h in hosts if h is not gone])
    for old, new in zip(before, after, strict=True):
        if old is gone:
            assert new is not gone
        else:
            assert new is old


def test_keys_of_an_unusable_host_go_to_the_next_host_on_the_ring(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1, 1)
    balancer = ring_hash()
    before = mapping(balancer, hosts)
    down = hosts[2]
    down.healthy = False
    ring = balancer.ring
    for key, old in zip(KEYS, before, strict=True):
        new = balancer.pick(hosts, key)
        if old is not down:
            assert new is old
            continue
        index = bisect_left(ring.points, lb.key_point(key)) % len(ring)
        while ring.owners[index] is down:
            index = (index + 1) % len(ring)
        assert new is ring.owners[index]
    down.healthy = True
    assert mapping(balancer, hosts) == before


def test_keys_stay_on_their_host_when_no_host_is_usable(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    balancer = ring_hash()
    before = mapping(balancer, hosts)
    for host in hosts:
        host.ejected_until = 60.0
    assert mapping(balancer, hosts) == before


def test_ejections_do_not_rebuild_the_ring(make_hosts: MakeHosts) -> None:
    """The ring object stays the same one until the host list changes (the balancer is
    compiled: a replaced ``build_ring`` would not see its calls)."""
    a, b, c, d = make_hosts(1, 1, 1, 1)
    host_set, balancer = HostSet((a, b, c)), ring_hash()
    for key in KEYS[:100]:
        host_set.pick(balancer, key)
    built = balancer.ring
    b.ejected_until = 30.0
    picked = {host_set.pick(balancer, key) for key in KEYS[:300]}
    assert picked == {a, c}
    assert balancer.pick([a, b, c], b"k") is not None  # an equal list is not a change
    assert balancer.ring is built
    HostSet((a, b, c, d)).pick(balancer, b"k")
    assert balancer.ring is not built


def test_without_a_key_the_pick_is_random(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    balancer = ring_hash()
    assert {balancer.pick(hosts, None) for _ in range(100)} == set(hosts)


def test_no_host() -> None:
    assert ring_hash().pick((), b"k") is None
