"""Translations kept from one mesh build to the next, so an update costs what it changed.

A control plane's update usually changes a few resources of thousands (one endpoint moved:
one ClusterLoadAssignment). The ADS state keeps every unchanged resource as the very same
Python object from one response to the next (Delta sends only what changed; State of the
World's unchanged resources are recognised by their bytes), so a translation of that object
can be reused as long as the object is the one it was made from. :class:`TranslationMemo`
is that cache, keyed by the identity of the inputs (plus plain values) and holding the
inputs themselves, so an id is never reused by another object while its entry lives.

It is bounded by one build: what was not used since the last successful build (by the
per-resource checks of the response, or the build itself) is dropped when a build succeeds
(a resource removed is forgotten); a build that fails (a NACK) keeps the previous entries.
Translations are pure, so a hit and a miss give equal results: the memo changes the cost of
a build, never its outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TranslationMemo:
    def __init__(self) -> None:
        self._held: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] = {}
        self._used: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] = {}
        self.hits = 0
        self.misses = 0
        # The last successful build (translate.py's record of it), for the next one to start
        # from when only endpoints changed.
        self.last_build: object | None = None

    def get(
        self,
        kind: str,
        inputs: tuple[object, ...],
        values: tuple[object, ...],
        compute: Callable[[], T],
    ) -> T:
        """``compute()``, or what it gave for the same ``inputs`` objects (compared by
        identity) and equal ``values`` earlier."""
        key = (kind, values, *map(id, inputs))
        entry = self._used.get(key) or self._held.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], inputs, strict=True)):
            self.hits += 1
        else:
            self.misses += 1
            entry = (inputs, compute())
        self._used[key] = entry
        result: T = entry[1]
        return result

    def commit(self) -> None:
        """The build succeeded: keep what it used, drop the rest."""
        self._held, self._used = self._used, {}

    def abandon(self) -> None:
        """The build failed: keep the previous build's entries as they were."""
        self._used = {}

    def __len__(self) -> int:
        return len(self._held)
