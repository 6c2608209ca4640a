"""Host state and HostSet: the cached usable hosts, panic mode, and what balancers are given."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from proxy.config.model import Endpoint
from proxy.upstream.hosts import Host, HostSet

MakeHosts = Callable[..., tuple[Host, ...]]


class RecordingBalancer:
    """Returns the first host it is offered and remembers what it was offered."""

    def __init__(self, skips_unusable: bool) -> None:
        self.skips_unusable = skips_unusable
        self.offered: Sequence[Host] = ()

    def pick(self, hosts: Sequence[Host], hash_key: bytes | None = None) -> Host | None:
        self.offered = hosts
        return hosts[0] if hosts else None


def test_host_copies_the_endpoint_and_starts_usable() -> None:
    host = Host(Endpoint(ipaddress.ip_address("10.0.0.7"), weight=3), 9090)
    assert (host.address, host.port, host.weight, host.key) == (
        "10.0.0.7",
        9090,
        3,
        "10.0.0.7:9090",
    )
    assert host.healthy and not host.ejected and host.usable
    assert (host.active_requests, host.connections_total, host.connect_failures_total) == (0, 0, 0)


def test_ipv6_key_is_bracketed_and_weight_zero_counts_as_one() -> None:
    host = Host(Endpoint(ipaddress.ip_address("fd00::1"), weight=0), 80)
    assert host.key == "[fd00::1]:80"
    assert host.weight == 1


def test_usable_excludes_unhealthy_and_ejected_hosts(make_hosts: MakeHosts) -> None:
    a, b, c = make_hosts(1, 1, 1)
    host_set = HostSet((a, b, c))
    b.healthy = False
    c.ejected_until = 30.0
    assert host_set.usable() == (a,)
    assert not b.usable and not c.usable


def test_usable_is_the_same_object_until_a_host_changes(make_hosts: MakeHosts) -> None:
    a, b = make_hosts(1, 1)
    host_set = HostSet((a, b))
    first = host_set.usable()
    a.healthy = True  # not a change: the cache must survive it
    assert host_set.usable() is first
    a.healthy = False
    assert host_set.usable() == (b,)
    a.healthy = True
    assert host_set.usable() == (a, b)


def test_readmitted_host_is_usable_again(make_hosts: MakeHosts) -> None:
    a, b = make_hosts(1, 1)
    host_set = HostSet((a, b))
    a.ejected_until = 10.0
    assert host_set.usable() == (b,)
    a.ejected_until = None
    assert host_set.usable() == (a, b)


def test_panic_when_no_host_is_usable_offers_every_host(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(1, 1, 1)
    host_set = HostSet(hosts)
    for host in hosts:
        host.healthy = False
    assert host_set.panic
    assert host_set.usable() == ()
    assert host_set.candidates() == hosts
    assert host_set.pick(RecordingBalancer(skips_unusable=False)) is hosts[0]


def test_one_usable_host_is_enough_to_stay_out_of_panic(make_hosts: MakeHosts) -> None:
    a, b, c = make_hosts(1, 1, 1)
    host_set = HostSet((a, b, c))
    a.healthy = False
    b.ejected_until = 5.0
    assert not host_set.panic
    assert host_set.candidates() == (c,)


def test_empty_set_picks_nothing_and_is_not_in_panic() -> None:
    host_set = HostSet(())
    assert not host_set.panic
    assert host_set.pick(RecordingBalancer(skips_unusable=False)) is None
    assert host_set.pick(RecordingBalancer(skips_unusable=True)) is None


def test_balancers_get_candidates_unless_they_skip_unusable_hosts(make_hosts: MakeHosts) -> None:
    a, b = make_hosts(1, 1)
    host_set = HostSet((a, b))
    a.healthy = False
    plain, walking = RecordingBalancer(False), RecordingBalancer(True)
    assert host_set.pick(plain, b"k") is b
    assert plain.offered == (b,)
    host_set.pick(walking, b"k")
    assert walking.offered == (a, b)


def test_newest_host_set_is_the_one_told_about_changes(make_hosts: MakeHosts) -> None:
    a, b = make_hosts(1, 1)
    old = HostSet((a, b))
    new = HostSet((a, b))
    assert old.usable() == new.usable() == (a, b)
    a.healthy = False
    assert new.usable() == (b,)
