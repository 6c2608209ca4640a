"""Issue 19, case 12: a worker process killed (SIGKILL) under load costs exactly the
connections it held. The supervisor starts a new one on the same sockets; the other worker's
connections go on as if nothing happened.

A client pod (init + sidecar with two workers) holds 40 connections to an echo service; the
kernel spreads them over both workers (SO_REUSEPORT).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from support.echo_lab import CLIENTS, ECHO_PORT, VIP, bring_up, run_client
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

from .conftest import Figure

CONNECTIONS = 40


def workers(pod: Pod) -> list[int]:
    pid = pod.sidecar_pid()
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def downstream_sockets(pod: Pod, pid: int) -> int:
    """Connections accepted on the outbound listener that process ``pid`` holds."""
    done = pod.run("ss", "-Htnp", "state", "established", "( sport = :15001 )", uid=None)
    return sum(f"pid={pid}," in line for line in done.stdout.splitlines())


def test_12_a_killed_worker_costs_only_the_connections_it_held(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: the connections that fail are exactly as many as the killed worker held, every
    other one still echoes, the worker is replaced, and new connections are served."""
    client, _server = bring_up(mesh_lab, sidecar_args=("--concurrency", "2"))
    first, second = workers(client)
    holder = client.spawn_piped(
        SYSTEM_PYTHON, str(CLIENTS), "echoes", VIP, str(ECHO_PORT), str(CONNECTIONS)
    )
    assert json.loads(holder.stdout.readline()) == {"opened": CONNECTIONS}
    held = downstream_sockets(client, first)
    assert held + downstream_sockets(client, second) == CONNECTIONS
    assert 0 < held < CONNECTIONS, "the kernel put every connection on one worker"
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: stat(client, "worker_restarts_total") == 1, 10, "a worker restart")
    holder.stdin.write("check\n")
    holder.stdin.flush()
    seen = json.loads(holder.stdout.readline())
    assert seen == {"alive": CONNECTIONS - held, "dead": held}, (seen, held)
    holder.wait(10)
    assert run_client(client, "burst", VIP, ECHO_PORT, 50, 5)["ok"] == 50
    figure("connections failed", seen["dead"], f"of {CONNECTIONS}", f"== held by it ({held})")
