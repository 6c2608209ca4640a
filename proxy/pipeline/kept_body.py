"""What every codec's request body shares: the bytes kept for a retry.

Its own module, apart from ``exchange.py``, because the codecs subclass it in Python
(``Http1Body`` is an async generator, which mypyc cannot compile) while ``exchange.py`` is
compiled (proxy/native.py): an interpreted subclass of a compiled class is not supported.
"""

from __future__ import annotations

REPLAY_LIMIT = 64 * 1024  # request body bytes kept for a retry (Envoy buffers up to 1 MiB)


class KeptBody:
    """What every codec's request body shares: the bytes read so far, and the parts kept (up
    to REPLAY_LIMIT) so that a retry can send them again; past the limit nothing is kept and
    the request can no longer be retried."""

    __slots__ = ("_kept", "replayable", "size")

    def __init__(self) -> None:
        self._kept: list[bytes] = []
        self.size = 0
        self.replayable = True

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.replayable:
            if self.size <= REPLAY_LIMIT:
                self._kept.append(data)
            else:
                self.replayable = False
                self._kept.clear()

    def _replay(self) -> list[bytes]:
        """What a new try sends first (a copy: reading on may keep more)."""
        return list(self._kept)
