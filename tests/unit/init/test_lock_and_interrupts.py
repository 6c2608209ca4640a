"""init.lock (one detour-init per network namespace) and init.interrupts (termination signals
acted on between steps). Real sockets and real signals to this process; each lock test uses
its own abstract name so it never meets a real detour-init's lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from init.interrupts import deferred_termination
from init.lock import LockTimeout, NamespaceLock, holder_pid


def unique_name() -> bytes:
    return b"\0detour-init-test-" + uuid.uuid4().hex.encode()


def test_a_second_lock_waits_then_gives_up_naming_the_holder() -> None:
    name = unique_name()
    told: list[int | None] = []
    with NamespaceLock(name=name):
        assert holder_pid(name) == os.getpid()
        second = NamespaceLock(wait=0.1, name=name, on_wait=told.append)
        holder = rf"another detour-init \(pid {os.getpid()}\)"
        with pytest.raises(LockTimeout, match=holder), second:
            pass
    assert told == [os.getpid()]  # told once, with who holds it
    assert holder_pid(name) is None
    with NamespaceLock(wait=0, name=name):  # released: taken at once
        pass


def test_a_holder_killed_with_sigkill_frees_the_lock() -> None:
    name = unique_name()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\n"
         f"s = socket.socket(socket.AF_UNIX)\ns.bind({name!r})\ns.listen(1)\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert holder_pid(name) == holder.pid
        with pytest.raises(LockTimeout), NamespaceLock(wait=0, name=name):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with NamespaceLock(wait=5, name=name):
        pass


def test_a_signal_during_the_change_is_held_until_asked_for() -> None:
    late: list[str] = []
    with deferred_termination(on_late=late.append) as pending:
        assert pending() is None
        os.kill(os.getpid(), signal.SIGTERM)  # blocked: this process goes on
        assert pending() == "SIGTERM"
        assert pending() is None  # taken: asking again finds nothing
    assert late == []
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_signal_after_the_last_step_is_reported_as_late_not_acted_on() -> None:
    late: list[str] = []
    with deferred_termination(on_late=late.append):
        os.kill(os.getpid(), signal.SIGHUP)
    assert late == ["SIGHUP"]  # and the process is alive to say so
