"""The benchmark's namespaces and processes: one origin pod and one client pod per row on a
MeshLab bridge (tests/support/mesh_lab.py, imported, not changed), each client pod with
detour-init's REDIRECT capture excluding its own proxy's uid, and that proxy on 15001.

Pinning: load generators on core 0, origin and proxies on core 1 (``taskset`` at exec, so
every thread and worker process is born there; checked after start). Every process gets a
high RLIMIT_NOFILE (``prlimit`` before dropping to its uid) for the 10,000-connection step.

A mesh mTLS row also gets a server pod (its own nginx, the same 1 KiB answer; detour-init's
inbound and outbound capture excluding the server proxy's uid; the server proxy on the inbound
port 15006, terminating the mesh TLS), on core 1 like every origin and proxy. The lab's CA
(``detour-ca init``) issues the client and the backend identities once; each proxy gets its
own copy of the very same files, owned by its uid (the key 0600).
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
from support.mesh_lab import APP_UID, DETOUR_CA, DETOUR_PROXY, MeshLab, Pod

from bench import load, measure, origin
from bench.peers import Launch, VenvPaths, detour, envoy, mtls
from bench.peers.registry import launch_for, server_launch_for
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
FIRST_SERVER_HOST = 100  # an mTLS row's server pod: 100 + the row's index
# Descriptors a row's proxies may hold after a load beyond those at start: their upstream
# pools (at most one connection per connection in flight: 64 at c=64, 128 in the memory
# step's opening, on each side of an mTLS pair). More is connections the load closed that the
# proxy kept (run.py restarts it and records that).
LEAK_MARGIN = 1000


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
    # An mTLS row's server side: its pod, nginx, proxy and what both ends are told.
    plan: mtls.MtlsPlan | None = None
    server_pod: Pod | None = None
    server_origin: subprocess.Popen | None = None
    server_proc: subprocess.Popen | None = None
    server_log: Path | None = None
    server_processes: int = 0
    server_rss_start_kb: int | None = None
    server_exit: int | None = None
    fds_start: int = 0  # descriptors the row's proxies hold once started and probed
    restarts: int = 0  # restarted because they kept connections a load had closed

    def proxy_pids(self) -> tuple[int, ...]:
        """The proxies whose CPU and memory are this row's: the client pod's, and for an mTLS
        row the server pod's too (client first)."""
        return tuple(p.pid for p in (self.proc, self.server_proc) if p is not None)

    def dead(self) -> str | None:
        """Which of the row's proxies exited, with its code; None while both run."""
        for side, proc in (("proxy", self.proc), ("server proxy", self.server_proc)):
            if proc is not None and proc.poll() is not None:
                return f"{side} exited ({proc.returncode})"
        return None


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
        self.origin_http = self.start_nginx(pod, self.logdir / "nginx")
        pin = ["taskset", "-c", str(SERVER_CPU)]
        bulk = [*pin, SYSTEM_PYTHON, str(BENCH / "bulk.py"), "serve", str(origin.BULK_PORT)]
        self.origin_bulk = self.spawn(pod, bulk, APP_UID)
        said = self.origin_bulk.stdout.readline().decode(errors="replace").strip()
        if said != "ready":
            raise RuntimeError(f"the bulk origin did not start (said {said!r})")

    def start_nginx(self, pod: Pod, workdir: Path) -> subprocess.Popen:
        """nginx answering 1 KiB in ``pod`` on the server core, checked from the pod itself."""
        workdir.mkdir(exist_ok=True)
        os.chown(workdir, APP_UID, APP_UID)
        conf = workdir / "nginx.conf"
        conf.write_text(origin.nginx_conf(workdir, NOFILE))
        argv = ["taskset", "-c", str(SERVER_CPU), "nginx", "-p", str(workdir), "-c", str(conf)]
        argv += ["-e", str(workdir / "error.log")]
        proc = self.spawn(pod, argv, APP_UID)
        wait_for(lambda: self.http_ok(pod, pod.ip), 10, f"nginx in {pod.name}", proc)
        return proc

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
        if row.mtls:
            self.add_server(client, index)
        if row.capture == "ebpf":
            self.attach_ebpf(client)
        else:
            uids = ",".join(sorted({str(detour.PROXY_UID), str(row.uid)}))
            self.mesh.intercept(pod, "--proxy-uid", uids, "--proxy-gid", uids)
        self.start_proxy(client)
        if row.peer == "detour" and row.mode == "http":
            reason = detour_http_unsupported(self, client)
            if reason:
                self.stop_proxy(client)
                client.skipped = reason
        return client

    # --- mesh mTLS: certificates and the server side ----------------------------------------

    def identities(self) -> Path:
        """The lab's CA and the two identities, issued once (as root) under logdir/certs."""
        base = self.logdir / "certs"
        if not (base / mtls.SERVER_ACCOUNT / "key.pem").exists():
            base.mkdir(exist_ok=True)
            _run_ca("init", "--dir", str(base / "ca"), "--trust-domain", mtls.TRUST_DOMAIN)
            for account in (mtls.CLIENT_ACCOUNT, mtls.SERVER_ACCOUNT):
                _run_ca(
                    "issue", "--dir", str(base / "ca"), "--namespace", mtls.NAMESPACE,
                    "--service-account", account, "--out", str(base / account),
                )  # fmt: skip
        return base

    def copy_identity(self, account: str, workdir: Path, uid: int) -> mtls.TlsFiles:
        """``account``'s files in ``workdir/certs``, readable by ``uid`` only where it matters
        (the key 0600), as a sidecar's mounted secret is."""
        source = self.identities() / account
        target = workdir / "certs"
        target.mkdir(exist_ok=True)
        os.chown(target, uid, uid)
        target.chmod(0o755)
        for name in mtls.FILE_NAMES:
            path = target / name
            path.write_bytes((source / name).read_bytes())
            os.chown(path, uid, uid)
            path.chmod(0o600 if name == "key.pem" else 0o644)
        return mtls.TlsFiles.in_dir(target)

    def workdir(self, name: str, uid: int) -> Path:
        path = self.logdir / name
        path.mkdir(exist_ok=True)
        os.chown(path, uid, uid)
        return path

    def add_server(self, client: Client, index: int) -> None:
        """An mTLS row's server pod: nginx (checked before any capture), init's capture
        excluding the server proxy's uid, both proxies' certificates; the server proxy itself
        starts with the client's (``start_proxy``)."""
        row = client.row
        pod = self.mesh.add_pod(f"srv{index}-{row.name}"[:12], FIRST_SERVER_HOST + index)
        tune(pod)
        client.server_pod = pod
        client.server_origin = self.start_nginx(pod, self.logdir / f"nginx-{row.name}")
        uids = ",".join(sorted({str(detour.PROXY_UID), str(row.server_uid)}))
        self.mesh.intercept(pod, "--proxy-uid", uids, "--proxy-gid", uids)
        client_dir = self.workdir(row.name, row.uid)
        server_dir = self.workdir(f"{row.name}-server", row.server_uid)
        client.plan = mtls.MtlsPlan(
            inner=row.mtls,
            vip=VIP,
            server_ip=pod.ip,
            port=origin.HTTP_PORT,
            client_tls=self.copy_identity(mtls.CLIENT_ACCOUNT, client_dir, row.uid),
            server_tls=self.copy_identity(mtls.SERVER_ACCOUNT, server_dir, row.server_uid),
        )

    def start_server_proxy(self, client: Client) -> None:
        row = client.row
        workdir = self.workdir(f"{row.name}-server", row.server_uid)
        launch = server_launch_for(row, self.venv, DETOUR_PROXY, client.plan, self.detour_extra)
        client.server_log = self.logdir / f"{row.name}-server.log"
        client.server_proc = self.spawn_peer(client.server_pod, launch, workdir, client.server_log)
        wait_for(
            lambda: listening(client.server_pod, mtls.INBOUND_PORT),
            self.start_timeout,
            f"{row.name}'s server proxy to listen on {mtls.INBOUND_PORT}",
            client.server_proc,
        )
        client.server_processes = self.pin(f"{row.name} (server)", client.server_proc)

    def handshakes(self, client: Client) -> dict[str, int]:
        """An mTLS row's handshake counters from both proxies' admin ports: mTLS connections
        the client made, those the server terminated, and sessions resumed (both ends'
        counts summed)."""
        peer = envoy if client.row.peer == "envoy" else detour
        client_stats = self.admin_stats(client.pod)
        server_stats = self.admin_stats(client.server_pod)
        got = {
            "client": load.stat_sum(client_stats, peer.CLIENT_HANDSHAKES),
            "server": load.stat_sum(server_stats, peer.SERVER_HANDSHAKES),
            "resumed": load.stat_sum(client_stats + server_stats, peer.RESUMED),
        }
        return got

    def admin_stats(self, pod: Pod) -> str:
        argv = ["curl", "-s", "--max-time", "3", "http://127.0.0.1:15000/stats"]
        done = subprocess.run(
            self.command(pod, argv, None), capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise RuntimeError(f"no stats from the admin port in {pod.name}: {done.stderr}")
        return done.stdout

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
        """The row's proxy (an mTLS row's server proxy first), started, carrying a request,
        pinned."""
        row = client.row
        if row.mtls:
            self.start_server_proxy(client)
        workdir = self.workdir(row.name, row.uid)
        meshes = {
            mode: detour.render_mesh(
                VIP,
                self.origin_pod.ip,
                {"http": origin.HTTP_PORT, "bulk": origin.BULK_PORT},
                "http" if mode == "http" else "tcp",
            )
            for mode in ("mesh", "http")
        }
        launch = launch_for(
            row, self.venv, DETOUR_PROXY, meshes, self.detour_extra, NOFILE, client.plan
        )
        client.log = self.logdir / f"{row.name}.log"
        client.proc = self.spawn_peer(client.pod, launch, workdir, client.log)
        wait_for(
            lambda: self.http_ok(client.pod, client.target),
            self.start_timeout,
            f"{row.name} to carry a request to the origin",
            client.proc,
        )
        client.processes = self.pin(row.name, client.proc)
        time.sleep(0.3)
        client.rss_start_kb = measure.tree_rss_kb(client.proc.pid)
        if client.server_proc is not None:
            client.server_rss_start_kb = measure.tree_rss_kb(client.server_proc.pid)
        client.fds_start = measure.open_fds(client.proxy_pids())

    def leftover_fds(self, client: Client, timeout: float) -> int:
        """Descriptors the row's proxies still hold beyond their start, after a load ended:
        waits up to ``timeout`` for closes in flight to finish (returns early once the count
        is within ``LEAK_MARGIN`` of the start)."""
        pids = client.proxy_pids()
        deadline = time.monotonic() + timeout
        while True:
            left = measure.open_fds(pids) - client.fds_start
            if left <= LEAK_MARGIN or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def spawn_peer(
        self, pod: Pod, launch: Launch, workdir: Path, log_path: Path
    ) -> subprocess.Popen:
        """Write the peer's config into ``workdir`` and start it in ``pod`` on the server core,
        its output to ``log_path``."""
        if launch.config is not None:
            path = workdir / launch.config_name
            path.write_text(launch.config.replace("{workdir}", str(workdir)))
            path.chmod(0o644)
        env = [f"{name}={value}" for name, value in launch.env]
        argv = [
            "env",
            f"HOME={workdir}",
            *env,
            "taskset",
            "-c",
            str(SERVER_CPU),
            *self.proxy_wrapper,
        ]
        argv += launch.resolved_argv(workdir)
        with log_path.open("wb") as log:  # a file, never a pipe nobody reads during a load
            return self.spawn(pod, argv, launch.uid, out=log, err=log)

    def pin(self, name: str, proc: subprocess.Popen) -> int:
        """Every thread of every process of ``proc``'s tree on the server core (checked);
        how many processes the tree has."""
        members = measure.tree(proc.pid)
        for pid in members:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(SERVER_CPU), str(pid)], capture_output=True
            )
        stray = {pid: os.sched_getaffinity(pid) for pid in members}
        stray = {pid: cpus for pid, cpus in stray.items() if cpus != {SERVER_CPU}}
        if stray:
            raise RuntimeError(f"{name} is not pinned to core {SERVER_CPU}: {stray}")
        return len(members)

    def restart_proxy(self, client: Client) -> None:
        """A fresh process: allocators keep what earlier held connections used, so memory is
        only meaningful from a proxy that has held nothing yet."""
        self.stop_proxy(client)
        self.start_proxy(client)

    # --- teardown -------------------------------------------------------------------------

    def stop_proxy(self, client: Client) -> int | None:
        """Stop the row's proxy (and an mTLS row's server proxy, its code kept in
        ``server_exit``); the client proxy's exit code."""
        if client.server_proc is not None:
            client.server_exit = self._stop(client.server_proc)
        return self._stop(client.proc)

    def _stop(self, proc: subprocess.Popen | None) -> int | None:
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
                if client.server_log is not None:
                    ends[f"{name} (server)"] = {
                        "exit_code": client.server_exit,
                        "log": str(client.server_log),
                        "tail": tail(client.server_log),
                    }
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


def listening(pod: Pod, port: int) -> bool:
    """Something in ``pod`` listens on TCP ``port`` (``ss`` in its namespace)."""
    done = pod.ns.run("ss", "-Hltn", f"sport = :{port}", check=False)
    return done.returncode == 0 and bool(done.stdout.strip())


def _run_ca(*argv: str) -> None:
    done = subprocess.run([DETOUR_CA, *argv], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"detour-ca {argv[0]} failed: {done.stderr.strip()}")


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
