"""measure.wait_quiet tells a busy process from an idle one by the CPU time it uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import measure


@pytest.fixture
def child():
    procs = []

    def start(code: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", code])
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_idle_process_is_quiet_at_once(child):
    assert measure.wait_quiet(child("import time; time.sleep(30)"), timeout=10)


def test_a_busy_process_is_not_quiet_by_the_deadline(child):
    assert not measure.wait_quiet(child("while True: pass"), timeout=1)
