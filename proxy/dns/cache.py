"""A small TTL + LRU cache for upstream DNS answers.

Why: every pod process resolving an external name would otherwise cost an upstream round trip
through the sidecar. The cache stores the answer as opaque bytes with the TTL the caller chose
(normally the smallest TTL in the answer, or the negative TTL from the SOA), and hands back how
long it has been stored so the caller can lower the TTLs it serves; nothing here parses DNS.

Bounded (LRU eviction) because the key space is chosen by the workload: a process looking up
random names must not grow the sidecar's memory. The clock is injectable so expiry is testable
without sleeping; it must be monotonic, since wall-clock steps would expire or revive entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

CacheKey = tuple[str, int, int]  # (lower-cased name without root dot, qtype, qclass)


class TtlCache:
    """Answers keyed by (name, qtype, qclass), each valid for its own TTL.

    An entry stored with ``ttl`` seconds is served while fewer than ``ttl`` seconds have passed,
    so the elapsed whole seconds ``get`` returns are always at most ``ttl - 1``: a caller that
    subtracts them from the stored TTLs never serves a TTL of 0 or less from the cache.

    Counters (``hits``, ``misses``, ``evictions``, ``expirations``) are plain ints for the stats
    endpoint; an expired entry found by ``get`` counts as both an expiration and a miss.
    """

    def __init__(self, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        # key -> (value, stored_at, expires_at); order is least recently used first.
        self._entries: OrderedDict[CacheKey, tuple[bytes, float, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def put(self, key: CacheKey, value: bytes, ttl: int) -> None:
        """Store ``value`` for ``ttl`` seconds, replacing any entry for ``key``.

        ``ttl <= 0`` means the answer must not be cached (RFC 1035: TTL 0 is for this
        transaction only); any older entry for the key is dropped too, since it is superseded
        by an answer that says not to reuse it.
        """
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        now = self._clock()
        if key in self._entries:
            self._entries.move_to_end(key)
        elif len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[key] = (value, now, now + ttl)

    def get(self, key: CacheKey) -> tuple[bytes, int] | None:
        """The stored value and whole seconds since it was stored, or None if absent or expired.

        A hit makes the entry most recently used; an expired entry is removed here, so expiry
        costs nothing until the key is asked for again (or LRU pushes it out).
        """
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        value, stored_at, expires_at = entry
        now = self._clock()
        if now >= expires_at:
            del self._entries[key]
            self.expirations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value, max(0, int(now - stored_at))

    def __len__(self) -> int:
        """Entries held, expired ones not yet looked up included."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Presence without touching LRU order or counters (expired entries included)."""
        return key in self._entries
