"""A lab of network namespaces: create, wire, run commands inside, observe, tear down.

Everything a test does to netfilter or routing happens inside namespaces it made; the
host's own namespace is never touched.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from init.state import fingerprint as table_fingerprint

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
DETOUR_INIT = str(VENV_BIN / "detour-init")
# Helpers that run as other uids use Debian's interpreter and stdlib only.
SYSTEM_PYTHON = "/usr/bin/python3"
PEERS = Path(__file__).resolve().parent / "peers.py"
_counter = itertools.count()


@dataclass
class Netns:
    """One network namespace, named uniquely for this test process."""

    name: str
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, role: str) -> Netns:
        name = f"dt-{role}-{os.getpid()}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        ns = cls(name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def command(self, *argv: str, uid: int | None = None, caps: tuple[str, ...] = ()) -> list[str]:
        """``argv`` in this namespace, as ``uid`` keeping the capabilities ``caps`` (ambient,
        as a Kubernetes securityContext grants them to a non-root container)."""
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            if caps:
                wanted = ",".join(f"+{cap}" for cap in caps)
                prefix += [f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]
        return [*prefix, *argv]

    def run(
        self,
        *argv: str,
        uid: int | None = None,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.command(*argv, uid=uid), capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed in {self.name} ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def spawn(self, *argv: str, uid: int | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            self.command(*argv, uid=uid), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._procs.append(proc)
        return proc

    def peer(self, *args: str, uid: int | None = None) -> subprocess.Popen:
        """Start a test peer (see peers.py) and wait until it says it is listening."""
        proc = self.spawn(SYSTEM_PYTHON, str(PEERS), *args, uid=uid)
        line = proc.stdout.readline()  # the peer prints "ready" after bind, or dies
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"peer {args} did not start: {line}{proc.stderr.read()}")
        return proc

    def detour_init(
        self, *args: str, check: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        return self.run(DETOUR_INIT, *args, check=check, env=full_env)

    def delete(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@contextmanager
def namespaces() -> Iterator[Callable[[str], Netns]]:
    """A factory of namespaces, all deleted when the block ends."""
    made: list[Netns] = []

    def make(role: str) -> Netns:
        ns = Netns.create(role)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()


def veth(a: Netns, a_addrs: list[str], b: Netns, b_addrs: list[str]) -> tuple[str, str]:
    """Connect two namespaces with a veth pair and address both ends; returns the names."""
    n = next(_counter)
    a_if, b_if = f"va{n}", f"vb{n}"
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            a_if,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name,
        ],
        check=True,
    )
    for ns, iface, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.run("ip", "addr", "add", addr, "dev", iface, *extra)
        ns.run("ip", "link", "set", iface, "up")
    return a_if, b_if


def fingerprint(ns: Netns, backend: str) -> str:
    """Everything init may touch in ``ns``: both families' tables and the routing policy."""
    parts = []
    for tool in (f"iptables-{backend}-save", f"ip6tables-{backend}-save"):
        parts.append(f"## {tool}\n" + table_fingerprint(ns.run(tool).stdout))
    for argv in (
        ["ip", "rule"],
        ["ip", "-6", "rule"],
        ["ip", "route", "show", "table", "all"],
        ["ip", "-6", "route", "show", "table", "all"],
        ["ip", "addr", "show", "dev", "lo"],
    ):
        parts.append(f"## {' '.join(argv)}\n" + ns.run(*argv).stdout)
    return "\n".join(parts)


def _slowdown() -> float:
    """DETOUR_LAB_SLOWDOWN multiplies every lab deadline: a VM under software emulation (TCG)
    starts a Python process several times slower than this machine, and the deadlines are
    sized for real hardware. Set by the Vagrantfile's provisioners, 1 everywhere else."""
    raw = os.environ.get("DETOUR_LAB_SLOWDOWN", "1")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 100:
        raise SystemExit(f"DETOUR_LAB_SLOWDOWN={raw!r}: expected a number in (0, 100]")
    return value


SLOWDOWN = _slowdown()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes (the deadline
    is ``timeout`` x DETOUR_LAB_SLOWDOWN)."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
