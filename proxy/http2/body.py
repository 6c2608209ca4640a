"""An HTTP/2 request body, read from the downstream stream as the upstream takes it and kept (up
to a replay limit, the HTTP/1.1 manager's REPLAY_LIMIT) so that a retry can send it again.

Backpressure: each chunk is acknowledged to the client (its window reopened) by ``consumed``,
which the sender calls once the chunk was written upstream, never on arrival.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .endpoint import H2Stream, Headers


class StreamBody:
    def __init__(self, stream: H2Stream, replay_limit: int) -> None:
        self._stream = stream
        self._replay_limit = replay_limit
        self._kept: list[bytes] = []
        self.size = 0
        self.replayable = True
        self.complete = stream.ended and not stream._chunks
        self.trailers: Headers = list(stream.trailers)

    @property
    def empty(self) -> bool:
        """No body at all (END_STREAM came with the head): nothing to send, nothing to wait
        for."""
        return self.complete and self.size == 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body from its start: what was kept, then the rest as it arrives."""
        for chunk in list(self._kept):
            yield chunk
        stream = self._stream
        while not self.complete:
            data = await stream.read()
            if data is None:
                self.complete = True
                self.trailers = list(stream.trailers)
                return
            self.size += len(data)
            if self.replayable:
                if self.size <= self._replay_limit:
                    self._kept.append(data)
                else:
                    self.replayable = False
                    self._kept.clear()
            if data:
                yield data

    def consumed(self) -> None:
        self._stream.consumed()

    async def discard(self) -> None:
        """Read the rest without forwarding it (a local reply was sent): the window stays open
        for the client, nothing is kept."""
        self.replayable = False
        self._kept.clear()
        async for _chunk in self.chunks():
            self.consumed()
