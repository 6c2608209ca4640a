"""The benchmark's namespaces and processes: one origin pod and one client pod per row on a
MeshLab bridge (tests/support/mesh_lab.py, imported, not changed), each client pod with
detour-init's REDIRECT capture excluding its own proxy's uid, and that proxy on 15001.

Pinning: load generators on core 0, origin and proxies on core 1 (``taskset`` at exec, so
every thread and worker process is born there; checked after start). Every process gets a
high RLIMIT_NOFILE (``prlimit`` before dropping to its uid) for the 10,000-connection step.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support.lab import VENV_BIN
from support.mesh_lab import APP_UID, DETOUR_PROXY, MeshLab, Pod

from bench import measure, origin
from bench.peers import VenvPaths, detour
from bench.peers.registry import launch_for
from bench.scenarios import Row

SYSTEM_PYTHON = "/usr/bin/python3"
DETOUR_EBPF = str(VENV_BIN / "detour-ebpf")
BENCH = Path(__file__).resolve().parent
LOAD_CPU = 0
SERVER_CPU = 1
VIP = "10.96.0.10"
# Every process gets the hard RLIMIT_NOFILE as its soft limit. Only raising the hard limit
# needs CAP_SYS_RESOURCE, which this sandbox's root lacks (its hard limit is 20,000).
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
ORIGIN_HOST = 20
FIRST_CLIENT_HOST = 30


@dataclass
class Client:
    """A row's pod and its proxy process (None for direct, or when the row was skipped)."""

    row: Row
    pod: Pod
    target: str
    proc: subprocess.Popen | None = None
    log: Path | None = None
    skipped: str | None = None
    ebpf_attached: bool = False
    processes: int = 0
    rss_start_kb: int | None = None


@dataclass
class BenchLab:
    logdir: Path
    venv: VenvPaths
    detour_extra: tuple[str, ...] = ()
    # A command the proxy runs under (bench/instructions.py: callgrind), and the start and
    # stop allowances it needs (an emulated start takes tens of seconds).
    proxy_wrapper: tuple[str, ...] = ()
    start_timeout: float = 60.0
    stop_timeout: float = 10.0
    mesh: MeshLab | None = None
    origin_pod: Pod | None = None
    origin_http: subprocess.Popen | None = None
    origin_bulk: subprocess.Popen | None = None
    clients: dict[str, Client] = field(default_factory=dict)

    # --- processes ------------------------------------------------------------------------

    def command(self, pod: Pod, argv: list[str], uid: int | None) -> list[str]:
        return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", *pod.command(*argv, uid=uid)]

    def spawn(
        self, pod: Pod, argv: list[str], uid: int | None, out=subprocess.PIPE, err=None, stdin=None
    ) -> subprocess.Popen:
        """A long-lived process in ``pod``, in its own session (Ctrl-C reaches only us)."""
        proc = subprocess.Popen(
            self.command(pod, argv, uid),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err if err is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        pod.ns._procs.append(proc)  # Netns.delete kills whatever is still running
        return proc

    def run_load(self, pod: Pod, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A load generator as the app uid on the load core."""
        return subprocess.run(
            self.command(pod, ["taskset", "-c", str(LOAD_CPU), *argv], APP_UID),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def http_ok(self, pod: Pod, host: str) -> bool:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
        argv += ["--max-time", "2", f"http://{host}:{origin.HTTP_PORT}/"]
        done = subprocess.run(
            self.command(pod, argv, APP_UID), capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() == f"200 {origin.BODY_BYTES}"

    # --- setup ----------------------------------------------------------------------------

    def create(self) -> None:
        self.mesh = MeshLab.create()
        self.origin_pod = self.mesh.add_pod("origin", ORIGIN_HOST)
        tune(self.origin_pod)
        self.start_origin()

    def start_origin(self) -> None:
        pod = self.origin_pod
        workdir = self.logdir / "nginx"
        workdir.mkdir(exist_ok=True)
        os.chown(workdir, APP_UID, APP_UID)
        conf = workdir / "nginx.conf"
        conf.write_text(origin.nginx_conf(workdir, NOFILE))
        pin = ["taskset", "-c", str(SERVER_CPU)]
        argv = [
            *pin,
            "nginx",
            "-p",
            str(workdir),
            "-c",
            str(conf),
            "-e",
            str(workdir / "error.log"),
        ]
        self.origin_http = self.spawn(pod, argv, APP_UID)
        bulk = [*pin, SYSTEM_PYTHON, str(BENCH / "bulk.py"), "serve", str(origin.BULK_PORT)]
        self.origin_bulk = self.spawn(pod, bulk, APP_UID)
        said = self.origin_bulk.stdout.readline().decode(errors="replace").strip()
        if said != "ready":
            raise RuntimeError(f"the bulk origin did not start (said {said!r})")
        wait_for(lambda: self.http_ok(pod, pod.ip), 10, "nginx on the origin", self.origin_http)

    def add_row(self, row: Row, index: int) -> Client:
        """The row's pod, its capture and its proxy; raises when the proxy does not carry an
        HTTP request to the origin within its start-up time."""
        pod = self.mesh.add_pod(row.name[:12], FIRST_CLIENT_HOST + index)
        tune(pod)
        target = VIP if row.via_vip else self.origin_pod.ip
        client = Client(row, pod, target)
        self.clients[row.name] = client
        if not row.has_proxy:
            return client
        if row.capture == "ebpf":
            self.attach_ebpf(client)
        else:
            uids = ",".join(sorted({str(detour.PROXY_UID), str(row.uid)}))
            self.mesh.intercept(pod, "--proxy-uid", uids, "--proxy-gid", uids)
        self.start_proxy(client)
        if row.name == "detour-http":
            reason = detour_http_unsupported(self, client)
            if reason:
                self.stop_proxy(client)
                client.skipped = reason
        return client

    def attach_ebpf(self, client: Client) -> None:
        """detour-ebpf's cgroup hooks on the pod's cgroup instead of iptables: connect4 sends
        the pod's connections to 15001 (not the proxy uid's), getsockopt answers
        SO_ORIGINAL_DST (with ``--sockmap on`` for a sockmap row: the app's and the proxy's
        sockets exchange bytes without the loopback stack). Pinned under
        /sys/fs/bpf/detour/<this lab's cgroup>, detached at the end."""
        argv = [DETOUR_EBPF, "attach", "--cgroup", str(client.pod.cgroup)]
        argv += ["--proxy-uid", str(client.row.uid)]
        if client.row.sockmap:
            argv += ["--sockmap", "on"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"detour-ebpf attach failed: {done.stderr.strip()[-1000:]}")
        client.ebpf_attached = True

    def detach_ebpf(self, client: Client) -> None:
        if client.ebpf_attached:
            argv = [DETOUR_EBPF, "detach", "--cgroup", str(client.pod.cgroup)]
            subprocess.run(argv, capture_output=True, text=True, timeout=60)
            client.ebpf_attached = False

    def start_proxy(self, client: Client) -> None:
        row = client.row
        workdir = self.logdir / row.name
        workdir.mkdir(exist_ok=True)
        os.chown(workdir, row.uid, row.uid)
        meshes = {
            mode: detour.render_mesh(
                VIP,
                self.origin_pod.ip,
                {"http": origin.HTTP_PORT, "bulk": origin.BULK_PORT},
                "http" if mode == "http" else "tcp",
            )
            for mode in ("mesh", "http")
        }
        launch = launch_for(row, self.venv, DETOUR_PROXY, meshes, self.detour_extra, NOFILE)
        if launch.config is not None:
            path = workdir / launch.config_name
            path.write_text(launch.config.replace("{workdir}", str(workdir)))
            path.chmod(0o644)
        argv = ["env", f"HOME={workdir}", "taskset", "-c", str(SERVER_CPU), *self.proxy_wrapper]
        argv += launch.resolved_argv(workdir)
        client.log = self.logdir / f"{row.name}.log"
        with client.log.open("wb") as log:  # a file, never a pipe nobody reads during a load
            client.proc = self.spawn(client.pod, argv, launch.uid, out=log, err=log)
        wait_for(
            lambda: self.http_ok(client.pod, client.target),
            self.start_timeout,
            f"{row.name} to carry a request to the origin",
            client.proc,
        )
        members = measure.tree(client.proc.pid)
        for pid in members:  # every thread of every process on the server core
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(SERVER_CPU), str(pid)], capture_output=True
            )
        stray = {pid: os.sched_getaffinity(pid) for pid in members}
        stray = {pid: cpus for pid, cpus in stray.items() if cpus != {SERVER_CPU}}
        if stray:
            raise RuntimeError(f"{row.name} is not pinned to core {SERVER_CPU}: {stray}")
        client.processes = len(members)
        time.sleep(0.3)
        client.rss_start_kb = measure.tree_rss_kb(client.proc.pid)

    def restart_proxy(self, client: Client) -> None:
        """A fresh process: allocators keep what earlier held connections used, so memory is
        only meaningful from a proxy that has held nothing yet."""
        self.stop_proxy(client)
        self.start_proxy(client)

    # --- teardown -------------------------------------------------------------------------

    def stop_proxy(self, client: Client) -> int | None:
        proc = client.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def destroy(self) -> dict[str, dict]:
        """Stop every proxy (recording how each ended) and remove the lab."""
        ends: dict[str, dict] = {}
        for name, client in self.clients.items():
            with contextlib.suppress(Exception):
                code = self.stop_proxy(client)
                ends[name] = {"exit_code": code, "log": str(client.log), "tail": tail(client.log)}
            with contextlib.suppress(Exception):
                self.detach_ebpf(client)  # before the cgroup goes: its pins would outlive it
        if self.mesh is not None:
            self.mesh.destroy(show_logs=False)
        return ends


def detour_http_unsupported(lab: BenchLab, client: Client) -> str | None:
    """Why the Detour HTTP row cannot run yet, or None when it can. The sidecar already accepts
    ``protocol: http`` in its mesh file (proxy/config/model.py), so the test is what it does
    with it: an HTTP router counts requests in ``istio_requests_total``; a TCP relay does not."""
    if not lab.http_ok(client.pod, client.target):
        return "no answer through the sidecar with protocol: http"
    argv = ["curl", "-s", "--max-time", "3", "http://127.0.0.1:15020/stats/prometheus"]
    done = subprocess.run(
        lab.command(client.pod, argv, None), capture_output=True, text=True, timeout=10
    )
    if "istio_requests_total{" in done.stdout:
        return None
    return (
        "the sidecar accepts `protocol: http` but still relays it as opaque TCP (no "
        "istio_requests_total after a request): its HTTP router is not in this tree yet; the "
        "row runs by itself once it is"
    )


def max_held(nofile: int, wanted: int = 10000) -> int:
    """How many idle connections a proxy can hold: two sockets each (downstream, upstream)
    plus ~1,000 descriptors of its own, in whole thousands, at most ``wanted``."""
    if nofile < 0 or nofile >= 2 * wanted + 1024:  # RLIM_INFINITY is -1
        return wanted
    return max(1000, (nofile - 1024) // 2 // 1000 * 1000)


def tune(pod: Pod) -> None:
    """Minutes of connection churn must not run out of client ports (the same in every pod)."""
    for setting in ("net.ipv4.ip_local_port_range=16000 64999", "net.ipv4.tcp_tw_reuse=1"):
        pod.ns.run("sysctl", "-q", "-w", setting)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def tail(path: Path | None, lines: int = 8) -> list[str]:
    if path is None or not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - 8192))
        return log.read().decode(errors="replace").splitlines()[-lines:]
