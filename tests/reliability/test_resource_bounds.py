"""Issue 19, case 15: what idle connections cost the sidecar, and that it holds no more once
they close; and case 5's overload guard: a worker at its memory mark takes no more.

A client pod (init + sidecar) holds up to 10,000 HTTP/1.1 keep-alive connections to a
service on a VIP, each having had one request answered, so each is a real downstream session
of the sidecar's HTTP pipeline waiting for its next request. The sidecar's memory is the
resident set of its whole process tree (supervisor and workers), read from /proc.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from support.echo_lab import CLIENTS, run_client
from support.http_mesh import VIP
from support.lab import SYSTEM_PYTHON, wait_until
from support.mesh_lab import MeshLab, Pod, stat

from .conftest import Figure, soak_seconds
from .test_hostile_clients import bring_up

IDLE = 10_000
MIB = 1 << 20


def sidecar_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (the supervisor and its workers)."""
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            pending += [int(child) for child in (task / "children").read_text().split()]
    return pids


def tree_rss(pid: int) -> int:
    """The resident bytes of ``pid`` and all its descendants."""
    total = 0
    for each in sidecar_pids(pid):
        status = Path(f"/proc/{each}/status").read_text()
        total += next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
        )
    return total


def widen_port_range(client: Pod) -> None:
    """A load generator's tuning: every cycle's 10,000 closed connections sit in TIME_WAIT on
    the client's side for a minute, and three cycles would exhaust the default port range."""
    client.run(
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=20000 65000",
        "net.ipv4.tcp_tw_reuse=1",
        uid=None,
        check=True,
    )


def settled_rss(pod: Pod) -> int:
    """The sidecar's resident bytes once two reads a quarter of a second apart agree within
    1 MiB (a worker may still be freeing what closed connections held)."""
    pid = pod.sidecar_pid()
    readings = [tree_rss(pid)]

    def steady() -> bool:
        time.sleep(0.25)
        readings.append(tree_rss(pid))
        return abs(readings[-1] - readings[-2]) < MIB

    wait_until(steady, 20, "the sidecar's memory to settle")
    return readings[-1]


class IdleClients:
    """The ``idle`` client of tests/support/hostile_clients.py, in the client pod."""

    def __init__(self, pod: Pod, count: int) -> None:
        self.proc = pod.spawn_piped(SYSTEM_PYTHON, str(CLIENTS), "idle", VIP, "8080", str(count))

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the idle client ended: {self.proc.stderr.read()}"
        return json.loads(line)

    def again(self) -> dict:
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        return self.result()

    def close(self) -> dict:
        self.proc.stdin.close()
        closed = self.result()
        self.proc.wait(30)
        return closed


def hold_and_release(client: Pod) -> tuple[int, int]:
    """One cycle: ``IDLE`` connections opened (one request each), all answered again after
    they idled, then closed. Returns the sidecar's resident bytes while they were held and
    once they are gone."""
    idle = IdleClients(client, IDLE)
    opened = idle.result()
    assert opened == {"answered": IDLE, "failed": 0, "errors": []}, opened
    wait_until(lambda: stat(client, "downstream_cx_active") == IDLE, 30, "all to be accounted")
    held = settled_rss(client)
    again = idle.again()
    assert again == {"answered": IDLE, "failed": 0, "errors": []}, again
    assert idle.close() == {"closed": IDLE}
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 30, "all to be closed")
    return held, settled_rss(client)


def test_15_idle_connections_cost_a_bounded_amount_and_hold_no_more_once_closed(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: 10,000 idle keep-alive connections are all held and all answered again after
    idling; each costs the sidecar at most 16 KiB of resident memory; closing them leaves no
    connection accounted; from the third cycle of open-idle-close on (4 cycles in CI, more in
    soak) memory once they closed grows by less than 2% of what 10,000 connections cost (the
    first cycles settle the allocators: measured +1.3 and +0.7 MiB, then +0.35 MiB over the
    next eleven).

    With the default allocator resident memory does not fall back to where it was when they
    close: CPython keeps an arena mapped while any object lives in it (measured after close:
    44 arenas per worker, 12 MB of live objects, 25 MB of empty pools), so what 10,000
    connections used stays with the worker and the next 10,000 reuse it; the growth
    criterion is what catches a leak. --allocator jemalloc gives it back: the next test."""
    client = bring_up(mesh_lab, "--concurrency", "2")
    widen_port_range(client)
    assert run_client(client, "latency", VIP, 8080, 200)["ok"] == 200  # warm: code, pools
    baseline = settled_rss(client)
    held, after = hold_and_release(client)
    cost = held - baseline
    per_connection = cost / IDLE
    assert per_connection <= 16 * 1024, (baseline, held)

    cycles = 4 if not soak_seconds() else max(4, int(soak_seconds() / 7))
    after_each = [after]
    for _ in range(cycles - 1):
        after_each.append(hold_and_release(client)[1])
    growth = after_each[-1] - after_each[2]
    assert growth <= cost * 0.02, (baseline, held, after_each)

    figure("idle connections held", IDLE, "", "all answered again")
    figure("RSS baseline (supervisor + 2 workers)", round(baseline / MIB, 1), "MiB", "")
    figure("RSS with 10,000 idle", round(held / MIB, 1), "MiB", "")
    figure("RSS per idle connection", round(per_connection / 1024, 1), "KiB", "<= 16 KiB")
    figure("RSS after they closed", round(after / MIB, 1), "MiB", "kept by the allocators")
    figure("RSS growth, cycle 1 to 3", round((after_each[2] - after) / MIB, 2), "MiB", "")
    figure(
        f"RSS growth, cycle 3 to {cycles}",
        round(growth / MIB, 2),
        "MiB",
        f"< 2% of what 10,000 cost ({cost * 0.02 / MIB:.1f} MiB)",
    )


def test_15_with_jemalloc_the_memory_closed_connections_used_goes_back_to_the_system(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with --allocator jemalloc, the supervisor and every worker have jemalloc mapped;
    10,000 idle connections cost at most 16 KiB each; once they closed, the sidecar's resident
    memory comes back to within 40% of what they cost above the baseline, within 15 s (the
    default allocator keeps all of it: the test above)."""
    client = bring_up(mesh_lab, "--concurrency", "2", "--allocator", "jemalloc")
    widen_port_range(client)
    pid = client.sidecar_pid()
    processes = sidecar_pids(pid)
    assert len(processes) == 3, processes  # the supervisor and two workers
    for each in processes:
        assert "libjemalloc" in Path(f"/proc/{each}/maps").read_text(), each
    assert run_client(client, "latency", VIP, 8080, 200)["ok"] == 200
    baseline = settled_rss(client)
    held, _ = hold_and_release(client)
    cost = held - baseline
    assert cost / IDLE <= 16 * 1024, (baseline, held)
    wait_until(
        lambda: tree_rss(pid) - baseline <= 0.4 * cost, 15, "memory to go back to the system"
    )
    left = settled_rss(client) - baseline
    figure("jemalloc: RSS per idle connection", round(cost / IDLE / 1024, 1), "KiB", "<= 16 KiB")
    figure("jemalloc: RSS baseline / held", round(baseline / MIB, 1), f"/ {held / MIB:.1f} MiB", "")
    figure("jemalloc: left of their cost once closed", round(100 * left / cost), "%", "<= 40%")


def test_5_at_its_memory_mark_a_worker_takes_no_more_and_serves_what_it_holds(
    mesh_lab: MeshLab, figure: Figure
) -> None:
    """Pass: with --memory-limit-mib 24 MiB above the sidecar's idle memory, of 10,000
    connections opened the sidecar holds some thousands and closes the rest at once, each
    counted in downstream_cx_overload_reject; its memory stays within 25% above the mark; all
    it holds are answered again; once they close, as many as half of them are taken and
    answered again even though the allocators kept the memory."""
    client = bring_up(mesh_lab)
    baseline = settled_rss(client)
    mark_mib = baseline // MIB + 24
    client.sidecar.terminate()
    client.sidecar.wait(30)
    mesh_lab.start_sidecar(
        client, mesh_lab.workdir / "mesh.yaml", "--memory-limit-mib", str(mark_mib)
    )
    assert stat(client, "overload_reject_incoming_connections_active") == 0

    flood = IdleClients(client, IDLE)
    opened = flood.result()
    held, refused = opened["answered"], opened["failed"]
    assert held + refused == IDLE and refused > 0 and held >= 1000, opened
    assert stat(client, "downstream_cx_overload_reject") == refused
    assert stat(client, "overload_reject_incoming_connections_active") == 1
    assert "takes no connection beyond" in client.read_sidecar_log()
    peak = settled_rss(client)
    assert peak <= mark_mib * MIB * 1.25, (peak, mark_mib)
    assert flood.again() == {"answered": held, "failed": 0, "errors": []}
    assert flood.close() == {"closed": held}
    wait_until(lambda: stat(client, "downstream_cx_active") == 0, 30, "all to be closed")

    after = settled_rss(client)
    again = IdleClients(client, held // 2)
    assert again.result() == {"answered": held // 2, "failed": 0, "errors": []}
    assert again.close() == {"closed": held // 2}

    figure("memory mark", mark_mib, "MiB", "idle memory + 24 MiB")
    figure("held at the mark / refused", held, f"/ {refused}", "refused == counted")
    figure("RSS at the mark", round(peak / MIB, 1), "MiB", f"<= {mark_mib * 1.25:g} MiB")
    figure("RSS after they closed", round(after / MIB, 1), "MiB", "")
    figure("taken again after the flood", held // 2, "", "all answered")
