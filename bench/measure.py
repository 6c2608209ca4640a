"""What the kernel says a process tree and the machine used: CPU time from /proc/PID/stat,
resident memory from /proc/PID/status, machine-wide busy and steal time from /proc/stat, a
cgroup's CPU from cpu.stat. Sampling /proc costs the proxy nothing, which in-process counters
would not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and every live process below it (a sidecar's worker processes)."""
    children = children_map()
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def parse_stat_cpu(stat_text: str) -> float:
    """utime + stime in seconds from a /proc/PID/stat line (all threads of the process). The
    command name may hold spaces and parentheses, so split after the last ')'."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float:
    try:
        return parse_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


def parse_status_rss_kb(status_text: str) -> int:
    """VmRSS in KiB from /proc/PID/status (0 for a kernel thread or a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    try:
        return parse_status_rss_kb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(member) for member in tree(pid))


def trees_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU of several process trees together (an mTLS row's client and server proxies)."""
    return sum(tree_cpu_seconds(pid) for pid in pids)


def wait_quiet(
    pid: int | Sequence[int], timeout: float, busy_share: float = 0.02, window: float = 0.5
) -> bool:
    """Wait until the process tree (or trees, together) uses less than ``busy_share`` of a
    core over ``window`` seconds; False when it is still busy at ``timeout``. A proxy tearing
    down thousands of connections (mitmproxy after the memory step: minutes) would otherwise
    load the server core under the next rows' samples."""
    pids = [pid] if isinstance(pid, int) else list(pid)
    deadline = time.monotonic() + timeout
    while True:
        before = trees_cpu_seconds(pids)
        time.sleep(window)
        if (trees_cpu_seconds(pids) - before) / window < busy_share:
            return True
        if time.monotonic() > deadline:
            return False


def tree_rss_kb(pid: int) -> int:
    """RSS summed over the tree: for a multi-process proxy shared pages count once per process,
    the same upper bound ``ps`` shows an operator."""
    return sum(rss_kb(member) for member in tree(pid))


def open_fds(pids: Sequence[int]) -> int:
    """Descriptors open in several process trees together (sockets, mostly): what a proxy
    still holds once a load has closed its connections."""
    total = 0
    for pid in pids:
        for member in tree(pid):
            try:
                total += len(os.listdir(f"/proc/{member}/fd"))
            except OSError:
                continue
    return total


def trees_rss_kb(pids: Sequence[int]) -> int:
    """RSS of several process trees together (an mTLS row's two proxies)."""
    return sum(tree_rss_kb(pid) for pid in pids)


def machine_seconds() -> tuple[float, float]:
    """(busy, steal) seconds of all cores from /proc/stat: busy is user+nice+system+irq+softirq,
    steal is time the hypervisor ran someone else while this machine wanted to run."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def cgroup_seconds(cgroup: Path) -> float:
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    return 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@dataclass
class Window:
    """CPU used during one load: by the proxy's tree (an mTLS row: the client's and the
    server's proxies, together and each), by the origin, and by the machine outside the lab
    (other users' work, kernel threads no cgroup is charged for) — the last one marks a
    disturbed sample."""

    proxy_pids: tuple[int, ...]
    origin_pid: int
    lab_cgroup: Path
    started: float = 0.0
    proxy_cpus: tuple[float, ...] = ()
    origin_cpu: float = 0.0
    lab_cpu: float = 0.0
    busy: float = 0.0
    steal: float = 0.0

    def start(self, now: float) -> None:
        self.started = now
        self.proxy_cpus = tuple(tree_cpu_seconds(pid) for pid in self.proxy_pids)
        self.origin_cpu = tree_cpu_seconds(self.origin_pid)
        self.lab_cpu = cgroup_seconds(self.lab_cgroup)
        self.busy, self.steal = machine_seconds()

    def stop(self, now: float) -> dict:
        """Seconds of CPU (not shares) used since ``start``, and the wall time;
        ``proxy_cpu_split_s`` is each proxy's share (client first)."""
        wall = now - self.started
        lab = cgroup_seconds(self.lab_cgroup) - self.lab_cpu
        busy, steal = machine_seconds()
        split = [
            tree_cpu_seconds(pid) - before
            for pid, before in zip(self.proxy_pids, self.proxy_cpus, strict=True)
        ]
        proxy = sum(split) if split else None
        return {
            "wall_s": wall,
            "proxy_cpu_s": proxy,
            "proxy_cpu_split_s": split,
            "origin_cpu_s": tree_cpu_seconds(self.origin_pid) - self.origin_cpu,
            "foreign_cores": max(0.0, busy - self.busy - lab) / wall if wall > 0 else 0.0,
            "steal_cores": (steal - self.steal) / wall if wall > 0 else 0.0,
        }
