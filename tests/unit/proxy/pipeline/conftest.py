"""A virtual-time loop for every pipeline test: timeouts, back-off and delays are exact and
instant, and code waiting on nothing fails with ``Stuck`` instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from support.virtual_time import VirtualTimeLoop


@pytest.fixture
def loop() -> Iterator[VirtualTimeLoop]:
    loop = VirtualTimeLoop()
    yield loop
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()
    assert not pending, f"tasks left running after the test: {pending}"
