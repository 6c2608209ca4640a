"""The HTTP/2 pool: concurrent requests share one connect and one connection; a failed or
cancelled connect fails every waiter; a full or going-away connection gets a sibling."""

from __future__ import annotations

import asyncio

import pytest

from proxy.http2.client import Http2Upstream
from proxy.upstream.http2_pool import Http2Pool


class _Connects:
    """A connect function that counts its calls and finishes when the test says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls = 0
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> Http2Upstream:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return Http2Upstream(self.loop)


def test_a_burst_shares_one_connect_and_one_connection() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool, connects = Http2Pool(loop, 60), _Connects(loop)
        burst = [asyncio.create_task(pool.connection("host", connects)) for _ in range(10)]
        await asyncio.sleep(0)
        connects.gate.set()
        results = await asyncio.gather(*burst)
        assert connects.calls == 1
        assert len({id(upstream) for upstream, _ in results}) == 1
        assert [new for _, new in results].count(True) == 1
        assert pool.connection_count() == 1

    asyncio.run(scenario())


def test_a_failed_connect_fails_every_waiter_and_the_next_request_connects_again() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool, connects = Http2Pool(loop, 60), _Connects(loop)
        connects.fail = OSError("refused")
        burst = [asyncio.create_task(pool.connection("host", connects)) for _ in range(3)]
        await asyncio.sleep(0)
        connects.gate.set()
        outcomes = await asyncio.gather(*burst, return_exceptions=True)
        assert all(isinstance(o, OSError) for o in outcomes)
        assert connects.calls == 1
        connects.fail = None
        _, new = await pool.connection("host", connects)
        assert new and connects.calls == 2

    asyncio.run(scenario())


def test_a_cancelled_connect_is_a_connection_error_for_its_waiters() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool, connects = Http2Pool(loop, 60), _Connects(loop)
        first = asyncio.create_task(pool.connection("host", connects))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(pool.connection("host", connects))
        await asyncio.sleep(0)
        first.cancel()  # the connecting try hit its timeout
        with pytest.raises(ConnectionError):
            await waiter

    asyncio.run(scenario())


def test_a_connection_going_away_gets_a_sibling() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool, connects = Http2Pool(loop, 60), _Connects(loop)
        connects.gate.set()
        upstream, _ = await pool.connection("host", connects)
        assert (await pool.connection("host", connects))[0] is upstream  # reused
        upstream.goaway = True
        sibling, new = await pool.connection("host", connects)
        assert new and sibling is not upstream

    asyncio.run(scenario())
