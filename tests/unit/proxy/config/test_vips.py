"""vips.allocate_vips / allocate_in_range: stable, unique, in range, explicit VIPs respected.

Stability is the point of the module: a service's VIP must not move because another service
was added or removed. The forced-collision tests use a tiny range so two keys share a home.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict

import pytest

from proxy.config.model import DEFAULT_VIP_RANGE_V4, DEFAULT_VIP_RANGE_V6
from proxy.config.vips import VipRangeExhaustedError, allocate_in_range, allocate_vips

ip = ipaddress.ip_address
net = ipaddress.ip_network
TINY = net("10.0.0.0/29")  # usable: 10.0.0.1 .. 10.0.0.6
TINY_USABLE = [ip(f"10.0.0.{n}") for n in range(1, 7)]
KEYS = [f"svc-{n}.default" for n in range(40)]


def solo(key: str, network=TINY):
    """The address a key gets when it is alone: its home."""
    return allocate_in_range([key], network)[key]


def colliding_pair() -> tuple[str, str]:
    """Two keys (sorted) with the same home in TINY; found by search, deterministic."""
    by_home = defaultdict(list)
    for n in range(100):
        key = f"k{n}.default"
        by_home[solo(key)].append(key)
        if len(by_home[solo(key)]) == 2:
            first, second = sorted(by_home[solo(key)])
            return first, second
    raise AssertionError("no collision among 100 keys in 6 slots")


def next_usable(address):
    """The probe order in TINY: the next usable address, wrapping from .6 to .1."""
    index = TINY_USABLE.index(address)
    return TINY_USABLE[(index + 1) % len(TINY_USABLE)]


# --- stability --------------------------------------------------------------------------------


def test_the_chosen_keys_do_not_collide_in_the_default_ranges() -> None:
    """A precondition of the stability tests below (deterministic: sha256 of fixed names)."""
    homes = allocate_vips(KEYS)
    assert all(homes[k] == allocate_vips([k])[k] for k in KEYS)


def test_vip_depends_only_on_the_key() -> None:
    everything = allocate_vips(KEYS)
    for key in KEYS:
        assert allocate_vips([key])[key] == everything[key]


def test_adding_and_removing_services_does_not_move_others() -> None:
    before = allocate_vips(KEYS[:20])
    after = allocate_vips([*KEYS[10:], "new.default", "another.prod"])
    for key in KEYS[10:20]:
        assert after[key] == before[key]


def test_input_order_does_not_matter() -> None:
    assert allocate_vips(KEYS) == allocate_vips(list(reversed(KEYS)))


def test_same_result_on_every_call() -> None:
    assert allocate_vips(["backend.default"]) == allocate_vips(["backend.default"])


def test_duplicate_keys_are_one_service() -> None:
    assert allocate_vips(["a.default", "a.default"]) == allocate_vips(["a.default"])


def test_namespace_is_part_of_the_key() -> None:
    result = allocate_vips(["backend.default", "backend.prod"])
    assert result["backend.default"] != result["backend.prod"]


# --- uniqueness and ranges --------------------------------------------------------------------


def test_many_services_get_unique_addresses_inside_the_ranges() -> None:
    keys = [f"svc-{n}.ns-{n % 7}" for n in range(3000)]  # enough for collisions to happen
    result = allocate_vips(keys)
    v4 = [pair[0] for pair in result.values()]
    v6 = [pair[1] for pair in result.values()]
    assert len(set(v4)) == len(v4) == len(keys)
    assert len(set(v6)) == len(v6) == len(keys)
    for net_range, addresses in ((DEFAULT_VIP_RANGE_V4, v4), (DEFAULT_VIP_RANGE_V6, v6)):
        assert all(a in net_range for a in addresses)
        assert net_range.network_address not in addresses
        assert net_range.broadcast_address not in addresses


def test_each_service_gets_one_address_per_family() -> None:
    v4, v6 = allocate_vips(["backend.default"])["backend.default"]
    assert (v4.version, v6.version) == (4, 6)


def test_first_and_last_addresses_are_never_used() -> None:
    result = allocate_in_range([f"k{n}.x" for n in range(6)], TINY)
    assert sorted(result.values()) == TINY_USABLE


def test_ranges_are_parameters() -> None:
    v4_range, v6_range = net("10.250.0.0/24"), net("fd00:1::/120")
    v4, v6 = allocate_vips(["a.b"], range_v4=v4_range, range_v6=v6_range)["a.b"]
    assert v4 in v4_range
    assert v6 in v6_range


# --- explicit VIPs ----------------------------------------------------------------------------


def test_explicit_vips_are_never_handed_out() -> None:
    home_v4, home_v6 = allocate_vips(["backend.default"])["backend.default"]
    v4, v6 = allocate_vips(["backend.default"], [home_v4, home_v6])["backend.default"]
    assert v4 != home_v4
    assert v6 != home_v6


def test_explicit_vips_never_reused_even_when_the_range_is_nearly_full() -> None:
    taken = TINY_USABLE[:3]
    result = allocate_in_range(["a.x", "b.x", "c.x"], TINY, taken)
    assert sorted(result.values()) == TINY_USABLE[3:]


def test_explicit_vips_outside_the_range_or_family_change_nothing() -> None:
    alone = allocate_in_range(KEYS[:4], TINY)
    other = [ip("192.168.1.1"), ip("fd00::1"), TINY.network_address, TINY.broadcast_address]
    assert allocate_in_range(KEYS[:4], TINY, other) == alone


# --- collisions -------------------------------------------------------------------------------


def test_forced_collision_the_first_key_keeps_its_home() -> None:
    first, second = colliding_pair()
    home = solo(first)
    result = allocate_in_range([second, first], TINY)
    assert result[first] == home
    assert result[second] == next_usable(home)


def test_forced_collision_is_deterministic_whatever_the_order() -> None:
    first, second = colliding_pair()
    assert allocate_in_range([first, second], TINY) == allocate_in_range([second, first], TINY)


def test_a_displaced_key_never_pushes_another_off_its_home() -> None:
    first, second = colliding_pair()
    probed = next_usable(solo(first))
    owner = next(f"o{n}.default" for n in range(1000) if solo(f"o{n}.default") == probed)
    result = allocate_in_range([first, second, owner], TINY)
    assert result[first] == solo(first)
    assert result[owner] == probed  # its home, although the displaced key probes through it
    assert result[second] == next_usable(probed)


def test_displaced_key_skips_explicit_vips_while_probing() -> None:
    first, second = colliding_pair()
    home = solo(first)
    result = allocate_in_range([first, second], TINY, [next_usable(home)])
    assert result[second] == next_usable(next_usable(home))


# --- limits -----------------------------------------------------------------------------------


def test_exhausted_range_is_refused() -> None:
    with pytest.raises(
        VipRangeExhaustedError, match=re.escape("7 services need a VIP in 10.0.0.0/29")
    ):
        allocate_in_range([f"k{n}.x" for n in range(7)], TINY)


def test_explicit_vips_count_against_the_range() -> None:
    with pytest.raises(VipRangeExhaustedError, match="only 1 addresses are free"):
        allocate_in_range(["a.x", "b.x"], TINY, TINY_USABLE[:5])


@pytest.mark.parametrize("too_small", ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127"])
def test_a_range_needs_three_addresses(too_small: str) -> None:
    with pytest.raises(ValueError, match="too small"):
        allocate_in_range(["a.x"], net(too_small))


def test_no_keys_no_vips() -> None:
    assert allocate_vips([]) == {}
