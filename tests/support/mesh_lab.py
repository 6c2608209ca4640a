"""The mesh lab: pods (a network namespace + a cgroup v2 each) on a shared bridge.

Each pod gets interception and a sidecar running as uid 1337; apps run as another uid and know
nothing of the mesh. Interception is one of INTERCEPTIONS:

- "iptables": ``detour-init apply`` captures inbound and outbound (and DNS when asked).
- "ebpf": the hybrid mode of interceptor/README.md. ``detour-ebpf attach --sockmap on`` on the
  pod's cgroup captures outbound TCP and DNS, with the sockmap short-circuit (opt-in for users;
  on here so every outbound test's data crosses it — the lab's apps never block in recv()
  without a timeout); ``detour-init apply --outbound-ports ''`` (init's existing
  "outbound-disabled" variant) keeps inbound capture on iptables.

Names are unique per test process and everything is removed at teardown, even when the test
failed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.ebpf import DETOUR_EBPF, ebpf, require_ebpf
from support.lab import DETOUR_INIT, PEERS, SYSTEM_PYTHON, VENV_BIN, Netns, wait_until

HTTP_PEERS = PEERS.parent / "http_peers.py"

PROXY_UID = 1337
CLUSTER_DNS_ZONE = "outside.test"  # the names the lab's cluster DNS knows (none of the mesh)
CLUSTER_DNS_ANSWER = "10.88.0.30"
APP_UID = 1000
SUBNET_V4 = "10.88.0"
SUBNET_V6 = "fd88::"
GATEWAY_V4 = f"{SUBNET_V4}.1"
GATEWAY_V6 = f"{SUBNET_V6}1"
DETOUR_PROXY = str(VENV_BIN / "detour-proxy")
DETOUR_CA = str(VENV_BIN / "detour-ca")
RESOLV_CONF = (
    f"nameserver {GATEWAY_V4}\n"
    "search default.svc.cluster.local svc.cluster.local cluster.local\n"
    "options ndots:5\n"
)
INTERCEPTIONS = ("iptables", "ebpf")
_SHARED_FLAGS = ("--proxy-uid", "--proxy-gid", "--ipv6", "--log-format")
_ids = itertools.count(1)


def cgroup2_root() -> Path:
    """Where cgroup v2 is mounted on this machine (found, never assumed)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] == "cgroup2":
            return Path(parts[1])
    raise RuntimeError("no cgroup2 mount in /proc/mounts")


@dataclass
class Pod:
    name: str
    ns: Netns
    ip: str
    ip6: str
    cgroup: Path
    sidecar: subprocess.Popen | None = None
    sidecar_log: Path | None = None  # the sidecar's stderr, written as it runs
    ebpf_attached: bool = False

    def read_sidecar_log(self) -> str:
        if self.sidecar_log is not None:
            return self.sidecar_log.read_text()
        stream = self.sidecar.stderr if self.sidecar is not None else None
        return stream.read() if stream else ""

    def command(self, *argv: str, uid: int | None = None, caps: tuple[str, ...] = ()) -> list[str]:
        """Run ``argv`` inside the pod's namespace and cgroup, optionally as ``uid``."""
        # Join the cgroup first: "ip netns exec" mounts a fresh /sys without the cgroup tree.
        enter_cgroup = ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh"]
        return [*enter_cgroup, *self.ns.command(*argv, uid=uid, caps=caps)]

    def run(
        self, *argv: str, uid: int | None = APP_UID, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            self.command(*argv, uid=uid), capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} failed in {self.name}: {done.stderr}")
        return done

    def curl(self, url: str, *extra: str, uid: int = APP_UID, timeout: float = 5) -> str:
        done = self.run(
            "curl",
            "-sS",
            "-g",
            "--max-time",
            str(timeout),
            *extra,
            url,
            uid=uid,
            timeout=timeout + 5,
        )
        return done.stdout.strip() if done.returncode == 0 else f"ERROR {done.stderr.strip()}"

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        """Call the sidecar's admin port (127.0.0.1:15000) from inside the pod."""
        done = self.run(
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "--max-time",
            "5",
            f"http://127.0.0.1:15000{path}",
            uid=None,
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def spawn(
        self, *argv: str, uid: int | None = APP_UID, caps: tuple[str, ...] = ()
    ) -> subprocess.Popen:
        proc = subprocess.Popen(
            self.command(*argv, uid=uid, caps=caps),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ns._procs.append(proc)
        return proc

    def serve_http(self, port: int, label: str, family: int = 4) -> subprocess.Popen:
        """An app: the lab's HTTP peer answering "<label> original=..."."""
        proc = self.spawn(
            SYSTEM_PYTHON, str(PEERS), "http", str(port), label, "--family", str(family)
        )
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"app {label} did not start: {proc.stderr.read()}"
        return proc

    def serve_http11(self, port: int, label: str, family: int = 4) -> subprocess.Popen:
        """An app: Python's http.server with keep-alive (tests/support/http_peers.py)."""
        proc = self.spawn(
            SYSTEM_PYTHON, str(HTTP_PEERS), "serve", str(port), label, "--family", str(family)
        )
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"app {label} did not start: {proc.stderr.read()}"
        return proc

    def http_client(self, url: str, count: int, *extra: str, timeout: float = 60) -> list[dict]:
        """``count`` GETs with Python's http.client on keep-alive connections, as uid 1000;
        one {"status", "label"} per request."""
        done = self.run(
            SYSTEM_PYTHON, str(HTTP_PEERS), "client", url, str(count), *extra, timeout=timeout
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def serve_peer(self, *args: str, uid: int | None = APP_UID) -> subprocess.Popen:
        """An app: any peers.py subcommand (``"echo", "7000"``), returned once it is ready."""
        proc = self.spawn(SYSTEM_PYTHON, str(PEERS), *args, uid=uid)
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"peer {args} did not start: {proc.stderr.read()}"
        return proc

    def spawn_piped(self, *argv: str, uid: int | None = APP_UID) -> subprocess.Popen:
        """Like ``spawn``, with a pipe to the process's stdin, so a test can say when to go on
        (write a line) or stop (close it)."""
        proc = subprocess.Popen(
            self.command(*argv, uid=uid),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ns._procs.append(proc)
        return proc

    def ready_code(self, timeout: float = 2) -> int:
        """The HTTP status of the sidecar's readiness probe (0 when nothing answered)."""
        done = self.run(
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            str(timeout),
            "http://127.0.0.1:15021/healthz/ready",
            uid=None,
        )
        return int(done.stdout or 0)

    def sidecar_pid(self) -> int:
        """The pid of the detour-proxy process itself, checked in /proc (the Popen's pid, since
        sh, ip netns exec and setpriv each exec the next)."""
        assert self.sidecar is not None
        pid = self.sidecar.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(arg.endswith(b"detour-proxy") for arg in cmdline), cmdline
        return pid


def stat(pod: Pod, name: str) -> int:
    """The sum of the sidecar's stats whose name starts with ``name`` (all label sets)."""
    code, body = pod.admin(f"/stats?filter=^{name}")
    assert code == 200, body
    return sum(int(line.rsplit(": ", 1)[1]) for line in body.splitlines() if line)


class Lines:
    """Collects a process's stdout lines in a background thread, so the pipe never fills and a
    test can wait on what has been printed so far."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def finish(self, timeout: float) -> list[str]:
        """Wait for the process to exit (and its output to be read); all its lines."""
        deadline = time.monotonic() + timeout
        self.proc.wait(timeout)
        self._thread.join(max(0.1, deadline - time.monotonic()))
        assert not self._thread.is_alive(), "stdout still open after the process exited"
        return self.snapshot()


@dataclass(frozen=True)
class Node:
    """A "host" of the lab: a bridge in a namespace of its own with a /24 and a /64 of pods.
    The first node is the lab's bridge; others are routed to it over a point-to-point link,
    as two hosts of a cluster are (pods on different nodes reach each other by routing)."""

    ns: Netns
    subnet_v4: str  # the first three octets
    subnet_v6: str  # a prefix to which the host number is appended in hex

    @property
    def gateway_v4(self) -> str:
        return f"{self.subnet_v4}.1"

    @property
    def gateway_v6(self) -> str:
        return f"{self.subnet_v6}1"


@dataclass
class MeshLab:
    """A bridge namespace and the pods attached to it (and more nodes, when a test adds
    them)."""

    bridge_ns: Netns
    workdir: Path
    cgroup_parent: Path
    pods: list[Pod] = field(default_factory=list)
    interception: str = "iptables"  # one of INTERCEPTIONS
    more_nodes: list[Node] = field(default_factory=list)

    @property
    def first_node(self) -> Node:
        return Node(self.bridge_ns, SUBNET_V4, SUBNET_V6)

    def add_node(self) -> Node:
        """Another node: its own bridge, subnet 10.88.N.0/24 (fd88:0:0:N::/64), routed to the
        first node's (where the cluster DNS and a test control plane listen)."""
        n = len(self.more_nodes) + 1
        node = Node(Netns.create(f"node{n + 1}"), f"10.88.{n}", f"fd88:0:0:{n}::")
        node.ns.run("ip", "link", "add", "br0", "type", "bridge")
        node.ns.run("ip", "addr", "add", f"{node.gateway_v4}/24", "dev", "br0")
        node.ns.run("ip", "addr", "add", f"{node.gateway_v6}/64", "dev", "br0", "nodad")
        node.ns.run("ip", "link", "set", "br0", "up")
        near, far = f"tr{n}a", f"tr{n}b"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                near,
                "netns",
                self.bridge_ns.name,
                "type",
                "veth",
                "peer",
                "name",
                far,
                "netns",
                node.ns.name,
            ],
            check=True,
        )
        for ns, link, v4, v6 in (
            (self.bridge_ns, near, f"10.87.{n}.1/30", f"fd87:{n}::1/64"),
            (node.ns, far, f"10.87.{n}.2/30", f"fd87:{n}::2/64"),
        ):
            ns.run("ip", "addr", "add", v4, "dev", link)
            ns.run("ip", "addr", "add", v6, "dev", link, "nodad")
            ns.run("ip", "link", "set", link, "up")
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.bridge_ns.run("ip", "route", "add", f"{node.subnet_v4}.0/24", "via", f"10.87.{n}.2")
        self.bridge_ns.run(
            "ip", "-6", "route", "add", f"{node.subnet_v6}/64", "via", f"fd87:{n}::2"
        )
        node.ns.run("ip", "route", "add", "default", "via", f"10.87.{n}.1")
        node.ns.run("ip", "-6", "route", "add", "default", "via", f"fd87:{n}::1")
        self.more_nodes.append(node)
        return node

    @classmethod
    def create(cls, interception: str = "iptables") -> MeshLab:
        assert interception in INTERCEPTIONS, interception
        if interception == "ebpf":
            require_ebpf()
        bridge_ns = Netns.create("bridge")
        bridge_ns.run("ip", "link", "add", "br0", "type", "bridge")
        bridge_ns.run("ip", "addr", "add", f"{GATEWAY_V4}/24", "dev", "br0")
        bridge_ns.run("ip", "addr", "add", f"{GATEWAY_V6}/64", "dev", "br0", "nodad")
        bridge_ns.run("ip", "link", "set", "br0", "up")
        workdir = Path(tempfile.mkdtemp(prefix="detour-lab-"))
        workdir.chmod(0o755)  # the sidecar (uid 1337) reads its config from here
        cgroup_parent = cgroup2_root() / f"detour-lab-{os.getpid()}-{next(_ids)}"
        cgroup_parent.mkdir()
        return cls(bridge_ns, workdir, cgroup_parent, interception=interception)

    def add_pod(self, role: str, host: int, node: Node | None = None) -> Pod:
        """A pod on ``node`` (the first one by default) at host number ``host``."""
        node = node or self.first_node
        ns = Netns.create(role)
        # "ip netns exec" bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf: the
        # pod's resolvers are the lab's cluster DNS, with Kubernetes' search list.
        netns_etc = Path("/etc/netns") / ns.name
        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "resolv.conf").write_text(RESOLV_CONF)
        # Created under a unique name and renamed to eth0 inside the pod: the host (a VM, say)
        # may have its own eth0, and the name is checked where the link is created.
        n = next(_ids)
        pod_if, bridge_if, staged = "eth0", f"vp{host}x{n}", f"vq{host}x{n}"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                staged,
                "netns",
                ns.name,
                "type",
                "veth",
                "peer",
                "name",
                bridge_if,
                "netns",
                node.ns.name,
            ],
            check=True,
        )
        node.ns.run("ip", "link", "set", bridge_if, "master", "br0", "up")
        ns.run("ip", "link", "set", "dev", staged, "name", pod_if)
        ip, ip6 = f"{node.subnet_v4}.{host}", f"{node.subnet_v6}{host:x}"
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", pod_if)
        ns.run("ip", "addr", "add", f"{ip6}/64", "dev", pod_if, "nodad")
        ns.run("ip", "link", "set", pod_if, "up")
        ns.run("ip", "route", "add", "default", "via", node.gateway_v4)
        ns.run("ip", "-6", "route", "add", "default", "via", node.gateway_v6)
        cgroup = self.cgroup_parent / role
        cgroup.mkdir()
        pod = Pod(role, ns, ip, ip6, cgroup)
        self.pods.append(pod)
        return pod

    def start_cluster_dns(self) -> None:
        """The lab's "cluster DNS" on the bridge (the pods' nameserver): it answers names under
        outside.test and NXDOMAIN for everything else, mesh names included."""
        proc = self.bridge_ns.spawn(
            SYSTEM_PYTHON, str(PEERS), "zone", "53", CLUSTER_DNS_ZONE, CLUSTER_DNS_ANSWER
        )
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

    def write_config(self, name: str, text: str) -> Path:
        """Write (or atomically replace, as a config manager would) a mesh file."""
        path = self.workdir / name
        staged = self.workdir / f".{name}.tmp"
        staged.write_text(text)
        staged.chmod(0o644)
        staged.rename(path)
        return path

    def issue_identity(
        self,
        pod: Pod,
        service_account: str,
        *,
        namespace: str = "default",
        ca: str = "ca",
        ttl: str = "24h",
    ) -> dict:
        """A workload certificate for ``pod`` from the lab's CA named ``ca`` (made on first
        use, as ``detour-ca init`` makes one), its key owned by the sidecar's uid; returns the
        ``workload.tls`` section that points at it."""
        ca_dir = self.workdir / ca
        if not (ca_dir / "ca-key.pem").exists():
            _run_ca("init", "--dir", str(ca_dir))
        out = self.workdir / f"{pod.name}-certs"
        _run_ca(
            "issue", "--dir", str(ca_dir), "--namespace", namespace,
            "--service-account", service_account, "--out", str(out), "--ttl", ttl,
            "--owner", f"{PROXY_UID}:{PROXY_UID}",
        )  # fmt: skip
        out.chmod(0o755)
        return {
            "cert_chain": str(out / "cert-chain.pem"),
            "private_key": str(out / "key.pem"),
            "root_cert": str(out / "root-cert.pem"),
        }

    def intercept(self, pod: Pod, *init_args: str) -> None:
        """Capture the pod's traffic with ``init_args`` (detour-init's options), the way this
        lab's interception mode does it."""
        attaching = None
        if self.interception == "ebpf":
            outbound, inbound = split_options(init_args)
            # Compiling the programs takes a second or two: init runs meanwhile.
            attaching = subprocess.Popen(
                [DETOUR_EBPF, "attach", "--cgroup", str(pod.cgroup), "--sockmap", "on", *outbound],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            pod.ebpf_attached = True
            init_args = ("--outbound-ports", "", *inbound)
        done = pod.ns.run(DETOUR_INIT, "apply", *init_args, check=False)
        if attaching is not None:
            _, errors = attaching.communicate(timeout=120)
            assert attaching.returncode == 0, errors
        assert done.returncode == 0, done.stderr

    def start_sidecar(
        self, pod: Pod, config: Path | None = None, *extra: str, ready: bool = True
    ) -> Pod:
        """Start the sidecar as uid 1337. One worker unless ``extra`` says otherwise: with
        several, each worker balances on its own, and exact-order assertions need one.
        ``ready=False``: return once it is started, without waiting for readiness."""
        workers = [] if "--concurrency" in extra else ["--concurrency", "1"]
        args = [DETOUR_PROXY, "--drain-timeout", "5", *workers, *extra]
        if config is not None:
            args += ["--config", str(config)]
        # TPROXY needs CAP_NET_ADMIN (IP_TRANSPARENT, SO_MARK), as Istio's sidecar gets it.
        caps = ("net_admin",) if "TPROXY" in extra else ()
        # Its log goes to a file, not a pipe: an unread pipe fills up and stalls the sidecar.
        pod.sidecar_log = self.workdir / f"{pod.name}.sidecar.log"
        with pod.sidecar_log.open("w") as log_file:
            pod.sidecar = subprocess.Popen(
                pod.command(*args, uid=PROXY_UID, caps=caps),
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                text=True,
            )
        pod.ns._procs.append(pod.sidecar)
        if ready:
            wait_until(lambda: self._ready(pod), 15, f"the sidecar in {pod.name} to be ready")
        return pod

    def _ready(self, pod: Pod) -> bool:
        if pod.sidecar is not None and pod.sidecar.poll() is not None:
            raise AssertionError(f"sidecar in {pod.name} exited: {pod.read_sidecar_log()}")
        return pod.ready_code() == 200

    def destroy_quietly(self) -> None:
        self.destroy(show_logs=False)

    def destroy(self, show_logs: bool = True) -> None:
        for pod in self.pods:
            if pod.sidecar is not None:
                if pod.sidecar.poll() is None:  # a live sidecar is drained, not waited for
                    pod.sidecar.terminate()
                    pod.sidecar.wait(10)
                if show_logs:  # pytest shows it when a test failed
                    print(f"--- sidecar log of {pod.name} ---\n{pod.read_sidecar_log()}")
            pod.ns.delete()
            if pod.ebpf_attached:
                ebpf("detach", "--cgroup", str(pod.cgroup), check=True)
        for node in self.more_nodes:
            node.ns.delete()
        self.bridge_ns.delete()
        for cgroup in sorted((p for p in self.cgroup_parent.iterdir() if p.is_dir()), reverse=True):
            _rmdir_cgroup(cgroup)
        _rmdir_cgroup(self.cgroup_parent)
        shutil.rmtree(self.workdir, ignore_errors=True)
        for pod in self.pods:
            shutil.rmtree(Path("/etc/netns") / pod.ns.name, ignore_errors=True)


def interception_agnostic(test):
    """Mark a test of an OUTBOUND module whose subject is what the proxy does once a connection
    or query has reached it (outlier ejection, connect timeouts, circuit breakers, health
    checks, the admin port, a DNS table reload): how it was intercepted cannot change the
    outcome, so it runs under iptables only, which keeps the suite's runtime down. Everything
    about reaching the proxy runs in both modes."""
    test.interception_agnostic = True
    return test


def split_options(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """detour-init options split into (detour-ebpf's, the rest for inbound-only init). The
    proxy's ids and the IPv6 and log settings go to both; a flag without a value
    (``--capture-dns``) is a switch."""
    from interceptor.settings import EBPF_OPTIONS

    ebpf_flags = {option.flag for option in EBPF_OPTIONS}
    outbound: list[str] = []
    inbound: list[str] = []
    index = 0
    while index < len(args):
        item = [args[index]]
        if index + 1 < len(args) and not args[index + 1].startswith("--"):
            item.append(args[index + 1])
        index += len(item)
        if item[0] in ebpf_flags:
            outbound += item
        if item[0] not in ebpf_flags or item[0] in _SHARED_FLAGS:
            inbound += item
    return outbound, inbound


def _run_ca(*argv: str) -> None:
    done = subprocess.run([DETOUR_CA, *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def _rmdir_cgroup(path: Path) -> None:
    """Kill whatever is still in the cgroup (a worker orphaned by a killed sidecar, a stray app),
    wait for it to empty, and remove it."""
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    wait_until(
        lambda: (
            not (path / "cgroup.procs").exists() or not (path / "cgroup.procs").read_text().strip()
        ),
        5,
        f"{path} to empty",
    )
    if path.exists():
        path.rmdir()
