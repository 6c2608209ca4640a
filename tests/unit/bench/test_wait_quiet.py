"""measure.wait_quiet tells a busy process from an idle one by the CPU time it uses."""

from __future__ import annotations

import subprocess
import sys
import time

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


def test_several_trees_are_quiet_only_together(child):
    idle = child("import time; time.sleep(30)")
    busy = child("while True: pass")
    assert measure.wait_quiet([idle], timeout=10)
    assert not measure.wait_quiet([idle, busy], timeout=1)


def test_a_window_splits_the_cpu_of_several_proxies(child, tmp_path):
    idle = child("import time; time.sleep(30)")
    busy = child("while True: pass")
    (tmp_path / "cpu.stat").write_text("usage_usec 0\n")
    window = measure.Window((busy, idle), idle, tmp_path)
    window.start(0.0)

    time.sleep(0.5)
    got = window.stop(0.5)
    client, server = got["proxy_cpu_split_s"]
    assert client > 0.2 and server < 0.05
    assert got["proxy_cpu_s"] == pytest.approx(client + server)
    assert measure.Window((), idle, tmp_path).stop(1.0)["proxy_cpu_s"] is None
