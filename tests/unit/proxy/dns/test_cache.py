"""TtlCache: answers expire after their TTL, the LRU entry goes when full, counters add up.

Time is a fake clock the tests move by hand, so expiry is exact and nothing sleeps.
"""

from __future__ import annotations

import pytest

from proxy.dns.cache import TtlCache

A, AAAA, IN = 1, 28, 1


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(name: str, qtype: int = A) -> tuple[str, int, int]:
    return (name, qtype, IN)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_get_returns_the_value_and_zero_elapsed_right_after_put(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=30)
    assert cache.get(key("example.com")) == (b"answer", 0)
    assert len(cache) == 1


def test_elapsed_is_whole_seconds_since_put(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=30)
    clock.advance(0.75)  # binary fractions: the fake clock's sums are exact
    assert cache.get(key("example.com")) == (b"answer", 0)
    clock.advance(0.25)
    assert cache.get(key("example.com")) == (b"answer", 1)
    clock.advance(11.5)
    assert cache.get(key("example.com")) == (b"answer", 12)


def test_entry_expires_exactly_at_its_ttl_and_is_removed(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=30)
    clock.advance(29.875)
    assert cache.get(key("example.com")) == (b"answer", 29)  # a caller still serves TTL 1
    clock.advance(0.125)
    assert cache.get(key("example.com")) is None
    assert len(cache) == 0
    assert (cache.expirations, cache.misses, cache.hits) == (1, 1, 1)


def test_elapsed_never_reaches_the_ttl(clock: FakeClock) -> None:
    """So ttl - elapsed, the TTL a caller serves from cache, is always at least 1."""
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=5)
    served = []
    while (hit := cache.get(key("example.com"))) is not None:
        served.append(5 - hit[1])
        clock.advance(0.25)
    assert min(served) == 1
    assert max(served) == 5


def test_expired_entry_stays_until_asked_for(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=1)
    clock.advance(10)
    assert len(cache) == 1  # lazy: nothing runs in the background
    assert key("example.com") in cache
    assert cache.get(key("example.com")) is None
    assert len(cache) == 0


@pytest.mark.parametrize("ttl", [0, -1, -3600])
def test_non_positive_ttl_is_not_stored(clock: FakeClock, ttl: int) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"answer", ttl=ttl)
    assert len(cache) == 0
    assert cache.get(key("example.com")) is None
    assert cache.misses == 1


def test_non_positive_ttl_drops_an_older_entry_for_the_key(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"old", ttl=300)
    cache.put(key("example.com"), b"new", ttl=0)
    assert cache.get(key("example.com")) is None


def test_put_replaces_and_restarts_the_ttl(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("example.com"), b"old", ttl=10)
    clock.advance(8)
    cache.put(key("example.com"), b"new", ttl=10)
    clock.advance(5)
    assert cache.get(key("example.com")) == (b"new", 5)
    assert len(cache) == 1


def test_each_entry_has_its_own_ttl(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("short.example"), b"s", ttl=5)
    cache.put(key("long.example"), b"l", ttl=60)
    clock.advance(10)
    assert cache.get(key("short.example")) is None
    assert cache.get(key("long.example")) == (b"l", 10)


def test_name_qtype_and_qclass_are_all_part_of_the_key(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(("example.com", A, IN), b"v4", ttl=30)
    cache.put(("example.com", AAAA, IN), b"v6", ttl=30)
    cache.put(("example.com", A, 3), b"chaos", ttl=30)
    assert cache.get(("example.com", A, IN)) == (b"v4", 0)
    assert cache.get(("example.com", AAAA, IN)) == (b"v6", 0)
    assert cache.get(("example.com", A, 3)) == (b"chaos", 0)
    assert cache.get(("example.org", A, IN)) is None


def test_the_least_recently_put_entry_is_evicted_when_full(clock: FakeClock) -> None:
    cache = TtlCache(max_entries=3, clock=clock)
    for name in ("a", "b", "c", "d"):
        cache.put(key(name), name.encode(), ttl=60)
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.get(key("a")) is None
    assert [cache.get(key(n)) for n in ("b", "c", "d")] == [(b"b", 0), (b"c", 0), (b"d", 0)]


def test_a_hit_makes_an_entry_most_recently_used(clock: FakeClock) -> None:
    cache = TtlCache(max_entries=3, clock=clock)
    for name in ("a", "b", "c"):
        cache.put(key(name), name.encode(), ttl=60)
    assert cache.get(key("a")) is not None  # order now b, c, a
    cache.put(key("d"), b"d", ttl=60)  # evicts b
    cache.put(key("e"), b"e", ttl=60)  # evicts c
    assert key("b") not in cache
    assert key("c") not in cache
    assert [k[0] for k in (key("a"), key("d"), key("e")) if k in cache] == ["a", "d", "e"]
    assert cache.evictions == 2


def test_replacing_an_entry_makes_it_most_recently_used_without_evicting(
    clock: FakeClock,
) -> None:
    cache = TtlCache(max_entries=2, clock=clock)
    cache.put(key("a"), b"a1", ttl=60)
    cache.put(key("b"), b"b", ttl=60)
    cache.put(key("a"), b"a2", ttl=60)  # full, but a replacement: nothing goes
    assert cache.evictions == 0
    cache.put(key("c"), b"c", ttl=60)  # evicts b, the least recently used
    assert key("b") not in cache
    assert cache.get(key("a")) == (b"a2", 0)


def test_a_miss_does_not_change_the_eviction_order(clock: FakeClock) -> None:
    cache = TtlCache(max_entries=2, clock=clock)
    cache.put(key("a"), b"a", ttl=60)
    cache.put(key("b"), b"b", ttl=60)
    assert cache.get(key("zzz")) is None
    cache.put(key("c"), b"c", ttl=60)
    assert key("a") not in cache
    assert key("b") in cache


def test_max_entries_one(clock: FakeClock) -> None:
    cache = TtlCache(max_entries=1, clock=clock)
    cache.put(key("a"), b"a", ttl=60)
    cache.put(key("b"), b"b", ttl=60)
    assert len(cache) == 1
    assert cache.get(key("b")) == (b"b", 0)
    assert cache.evictions == 1


@pytest.mark.parametrize("size", [0, -1])
def test_max_entries_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError):
        TtlCache(max_entries=size)


def test_counters(clock: FakeClock) -> None:
    cache = TtlCache(max_entries=2, clock=clock)
    cache.put(key("a"), b"a", ttl=5)
    cache.put(key("b"), b"b", ttl=60)
    cache.get(key("a"))  # hit
    cache.get(key("b"))  # hit
    cache.get(key("x"))  # miss
    clock.advance(5)
    cache.get(key("a"))  # expired: expiration + miss
    cache.put(key("c"), b"c", ttl=60)
    cache.put(key("d"), b"d", ttl=60)  # evicts b
    assert (cache.hits, cache.misses, cache.expirations, cache.evictions) == (2, 2, 1, 1)


def test_clock_going_backwards_never_yields_negative_elapsed(clock: FakeClock) -> None:
    cache = TtlCache(clock=clock)
    cache.put(key("a"), b"a", ttl=60)
    clock.advance(-3)
    assert cache.get(key("a")) == (b"a", 0)


def test_default_clock_is_monotonic_time() -> None:
    cache = TtlCache()
    cache.put(key("a"), b"a", ttl=60)
    assert cache.get(key("a")) == (b"a", 0)
