"""Detour's first benchmark: the same client and origin, direct and through the sidecar.

    sudo .venv/bin/python bench/run.py [--runs N] [--duration S] [--json out.json]

Scenarios, each a client pod on one MeshLab bridge calling one origin pod:
  direct       (a) no interception
  passthrough  (b) detour-init + detour-proxy without config: ALLOW_ANY to the origin's IP
  mesh         (c) detour-init + detour-proxy with a service whose VIP has the origin as endpoint

Metrics: new connections/s (wrk, ``Connection: close``), keep-alive requests/s (wrk), and
single-stream bulk MiB/s both ways. Load generators run on core 0 as uid 1000 in the client
pod; origin and sidecar run on core 1. Scenarios are interleaved (a, b, c, a, b, c, ...) and
each is measured ``--runs`` times. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import yaml  # noqa: E402
from support.mesh_lab import APP_UID, DETOUR_PROXY, PROXY_UID, MeshLab, Pod  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
WRK_SCRIPT = BENCH / "wrk_report.lua"
HTTP_PORT = 8080
BULK_PORT = 9000
VIP = "10.96.0.10"
LOAD_CPU = "0"
SERVER_CPU = "1"
SCENARIOS = ("direct", "passthrough", "mesh")
LABELS = {"direct": "direct (a)", "passthrough": "passthrough (b)", "mesh": "mesh VIP (c)"}
METRICS = {
    "newconn_rps": "new conn/s (Connection: close)",
    "keepalive_rps": "keep-alive req/s (c=16)",
    "upload_mibps": "bulk upload MiB/s",
    "download_mibps": "bulk download MiB/s",
}
UNITS = {
    "newconn_rps": "conn",
    "keepalive_rps": "req",
    "upload_mibps": "MiB",
    "download_mibps": "MiB",
}
EXIT_BUSY = 3
FOREIGN_CPU_LIMIT = 0.15  # cores used outside the lab during a sample: flagged as disturbed
STEAL_LIMIT = 0.3  # cores taken by the hypervisor during a sample: flagged too
# Access-log lines: ... "TCP outbound" FLAGS bytes_in bytes_out ms "peer" "dst" cluster host
ACCESS = re.compile(r'"TCP (?:outbound|inbound)" (\S+) ')


class Interrupted(Exception):
    """SIGTERM, turned into an exception so teardown runs as it does for Ctrl-C."""


@dataclass
class Client:
    scenario: str
    pod: Pod
    target: str  # the address the load generators dial
    sidecar: subprocess.Popen | None = None
    sidecar_log: Path | None = None


@dataclass
class Bench:
    args: argparse.Namespace
    logdir: Path
    lab: MeshLab | None = None
    origin: Pod | None = None
    origin_http: subprocess.Popen | None = None
    origin_bulk: subprocess.Popen | None = None
    clients: dict[str, Client] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    sidecar_reports: dict[str, dict] = field(default_factory=dict)
    origin_kind: str = ""

    # --- processes ------------------------------------------------------------------------

    def spawn(self, pod: Pod, *argv: str, uid: int | None, out=subprocess.PIPE, err=None):
        """A long-lived process in ``pod``, in its own session (Ctrl-C reaches only us)."""
        proc = subprocess.Popen(
            pod.command(*argv, uid=uid),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err if err is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        pod.ns._procs.append(proc)  # Netns.delete kills whatever is still running
        return proc

    def run_in(self, pod: Pod, *argv: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            pod.command(*argv, uid=APP_UID),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    # --- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        self.lab = lab = MeshLab.create()
        self.origin = lab.add_pod("origin", 20)
        pods = {name: lab.add_pod(f"c{name[:4]}", 10 + i) for i, name in enumerate(SCENARIOS)}
        for pod in [self.origin, *pods.values()]:
            tune(pod)
        self.start_origin()
        self.clients["direct"] = Client("direct", pods["direct"], self.origin.ip)
        self.clients["passthrough"] = Client("passthrough", pods["passthrough"], self.origin.ip)
        self.clients["mesh"] = Client("mesh", pods["mesh"], VIP)
        config = lab.write_config("mesh.yaml", yaml.safe_dump(mesh_config(self.origin.ip)))
        for name, config_path in (("passthrough", None), ("mesh", config)):
            client = self.clients[name]
            lab.intercept(client.pod)
            self.start_sidecar(client, config_path)

    def start_origin(self) -> None:
        origin = self.origin
        kind = self.args.origin
        if kind == "auto":
            kind = "nginx" if shutil.which("nginx") else "python"
        self.origin_kind = kind
        pin = ["taskset", "-c", SERVER_CPU]
        if kind == "nginx":
            workdir = self.logdir / "nginx"
            workdir.mkdir()
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_conf(workdir))
            os.chown(workdir, APP_UID, APP_UID)
            self.origin_http = self.spawn(
                origin,
                *pin,
                "nginx",
                "-p",
                str(workdir),
                "-c",
                str(conf),
                "-e",
                str(workdir / "error.log"),
                uid=APP_UID,
            )
        else:
            self.origin_http = self.spawn(
                origin,
                *pin,
                VENV_PYTHON,
                str(BENCH / "origin_http.py"),
                str(HTTP_PORT),
                uid=APP_UID,
            )
            expect_ready(self.origin_http, "the python HTTP origin")
        self.origin_bulk = self.spawn(
            origin,
            *pin,
            SYSTEM_PYTHON,
            str(BENCH / "bulk.py"),
            "serve",
            str(BULK_PORT),
            uid=APP_UID,
        )
        expect_ready(self.origin_bulk, "the bulk origin")
        wait_for(
            lambda: self.http_ok(origin, origin.ip),  # from the origin pod: no client yet
            10,
            f"the {kind} origin on :{HTTP_PORT}",
            self.origin_http,
        )

    def http_ok(self, pod: Pod, host: str) -> bool:
        done = self.run_in(
            pod,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "--max-time",
            "2",
            f"http://{host}:{HTTP_PORT}/",
            timeout=10,
        )
        return done.stdout.strip() == "200 1024"

    def start_sidecar(self, client: Client, config: Path | None) -> None:
        argv = [DETOUR_PROXY, "--drain-timeout", "5", "--access-log", self.args.access_log]
        if config is not None:
            argv += ["--config", str(config)]
        argv += self.args.sidecar_arg
        client.sidecar_log = self.logdir / f"sidecar-{client.scenario}.log"
        # Started under taskset so that every process it starts (worker processes) is on the
        # server core from birth; a later "taskset -p" would only move the one pid.
        pin = ["taskset", "-c", SERVER_CPU]
        with client.sidecar_log.open("wb") as log:  # a file, not a pipe nobody reads
            client.sidecar = self.spawn(client.pod, *pin, *argv, uid=PROXY_UID, out=log, err=log)
        wait_for(
            lambda: sidecar_ready(client.pod), 15, f"the {client.scenario} sidecar", client.sidecar
        )
        pid = client.sidecar.pid
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if not any(arg.endswith(b"detour-proxy") for arg in args[:2]):
            raise RuntimeError(f"pid {pid} is not the sidecar: {args!r}")
        tree = [pid, *descendants(pid)]
        for member in tree:  # belt and braces: every thread of every process on core 1
            subprocess.run(
                ["taskset", "-a", "-p", "-c", SERVER_CPU, str(member)], capture_output=True
            )
        affinities = {member: sorted(os.sched_getaffinity(member)) for member in tree}
        if any(cpus != [int(SERVER_CPU)] for cpus in affinities.values()):
            raise RuntimeError(f"the {client.scenario} sidecar is not pinned: {affinities}")
        self.sidecar_reports.setdefault(client.scenario, {})["processes"] = len(tree)
        if not self.http_ok(client.pod, client.target):
            raise RuntimeError(f"{client.scenario}: no answer from the origin through the sidecar")

    # --- measurements ---------------------------------------------------------------------

    def wrk(self, client: Client, duration: int, close: bool) -> dict:
        argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t", "1", "-c", str(self.args.connections)]
        argv += ["-d", f"{duration}s", "-s", str(WRK_SCRIPT)]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{client.target}:{HTTP_PORT}/")
        done = self.run_in(client.pod, *argv, timeout=duration + 30)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        raw = json.loads(line.removeprefix("WRK_JSON "))
        socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
        return {  # "requests" counts complete responses, non-2xx/3xx ("status") included
            "value": (raw["requests"] - raw["status"]) / (raw["duration_us"] / 1e6),
            "errors": socket_errors + raw["status"],
            "attempts": raw["requests"] + socket_errors,
            "raw": raw,
        }

    def bulk(self, client: Client, mode: str, size: int) -> dict:
        argv = ["taskset", "-c", LOAD_CPU, SYSTEM_PYTHON, str(BENCH / "bulk.py"), mode]
        argv += [client.target, str(BULK_PORT), str(size)]
        done = self.run_in(client.pod, *argv, timeout=300)
        try:
            raw = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raw = None
        if raw is None:
            return {"value": None, "errors": 1, "attempts": 1, "raw": {"stderr": done.stderr}}
        ok = raw["bytes"] == size
        return {
            "value": raw["bytes"] / 2**20 / raw["seconds"] if ok else None,
            "errors": 0 if ok else 1,
            "attempts": 1,
            "raw": raw,
        }

    def measure(self, metric: str, client: Client, run: int | None) -> dict:
        procs = {"origin": self.origin_bulk if "mibps" in metric else self.origin_http}
        if client.sidecar is not None:
            procs["sidecar"] = client.sidecar
        before = {name: tree_cpu_seconds(p.pid) for name, p in procs.items()}
        lab_before = cgroup_seconds(self.lab.cgroup_parent)
        busy_before, steal_before = machine_seconds()
        started = time.monotonic()
        duration = self.args.duration if run is not None else self.args.warmup
        size = self.args.bulk_mib * 2**20 if run is not None else 64 * 2**20
        if metric == "newconn_rps":
            result = self.wrk(client, duration, close=True)
        elif metric == "keepalive_rps":
            result = self.wrk(client, duration, close=False)
        else:
            result = self.bulk(client, metric.split("_")[0], size)
        wall = time.monotonic() - started
        # CPU the machine spent outside this lab (other users' work, and kernel threads such as
        # ksoftirqd that no cgroup is charged for): a sign of a disturbed sample. Steal too.
        ours = cgroup_seconds(self.lab.cgroup_parent) - lab_before
        busy, steal = machine_seconds()
        result["foreign_cpu"] = round(max(0.0, busy - busy_before - ours) / wall, 3)
        result["steal_cpu"] = round((steal - steal_before) / wall, 3)
        for name, proc in procs.items():
            used = tree_cpu_seconds(proc.pid) - before[name]
            result[f"{name}_cpu"] = round(used / wall, 3) if wall > 0 else None
        if client.sidecar is not None and client.sidecar.poll() is not None:
            raise RuntimeError(
                f"the {client.scenario} sidecar exited ({client.sidecar.returncode})"
            )
        result.update(metric=metric, scenario=client.scenario, run=run)
        time.sleep(self.args.settle)
        return result

    def run_all(self) -> None:
        metrics = list(METRICS)
        if self.args.warmup > 0:
            print(f"warm-up: {self.args.warmup:g}s of each load per scenario", flush=True)
            for metric in metrics:
                for name in SCENARIOS:
                    self.measure(metric, self.clients[name], None)
        for run in range(1, self.args.runs + 1):
            for metric in metrics:
                for name in SCENARIOS:
                    sample = self.measure(metric, self.clients[name], run)
                    self.samples.append(sample)
                    value = "FAILED" if sample["value"] is None else f"{sample['value']:,.0f}"
                    extra = f", {sample['errors']} errors" if sample["errors"] else ""
                    print(f"  run {run} {metric:<14} {name:<12} {value}{extra}", flush=True)

    # --- teardown -------------------------------------------------------------------------

    def collect_sidecar_stats(self) -> None:
        for client in self.clients.values():
            if client.sidecar is None or client.sidecar.poll() is not None:
                continue
            code, body = client.pod.admin("/stats")
            if code == 200:
                self.sidecar_reports.setdefault(client.scenario, {})["stats"] = interesting_stats(
                    body
                )

    def stop_sidecars(self) -> None:
        for client in self.clients.values():
            proc = client.sidecar
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            report = self.sidecar_reports.setdefault(client.scenario, {})
            report["exit_code"] = proc.returncode
            report.update(summarize_log(client.sidecar_log))

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_sidecars()
        if self.lab is not None:
            self.lab.destroy()  # kills every process left in the pods, removes everything


# --- helpers ------------------------------------------------------------------------------


def mesh_config(endpoint: str) -> dict:
    """Like tests/e2e/proxy/test_mesh_routing.service_config, with the bulk port added."""
    return {
        "workload": {"name": "client", "namespace": "default"},
        "services": [
            {
                "name": "backend",
                "vip": [VIP],
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "protocol": "tcp"},
                    {"name": "bulk", "port": BULK_PORT, "protocol": "tcp"},
                ],
                "endpoints": [{"address": endpoint}],
                "traffic_policy": {"load_balancer": "round_robin", "connect_timeout": "1s"},
            }
        ],
    }


def nginx_conf(workdir: Path) -> str:
    body = "x" * 1024
    temps = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# One process, no master, on the core taskset gives it; 1 KiB per answer.
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    worker_connections 8192;
    multi_accept on;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
        listen {HTTP_PORT} backlog=4096;
        location / {{
            default_type application/octet-stream;
            return 200 "{body}";
        }}
    }}
}}
"""


def tune(pod: Pod) -> None:
    """Per-namespace settings so ~5k conn/s for minutes does not run out of client ports."""
    for setting in ("net.ipv4.ip_local_port_range=16000 64999", "net.ipv4.tcp_tw_reuse=1"):
        pod.ns.run("sysctl", "-q", "-w", setting)


def sidecar_ready(pod: Pod) -> bool:
    url = "http://127.0.0.1:15021/healthz/ready"
    done = pod.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url, uid=None)
    return done.stdout == "200"


def expect_ready(proc: subprocess.Popen, what: str) -> None:
    line = proc.stdout.readline().decode(errors="replace").strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"{what} did not start (said {line!r})")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the sidecar's worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every live process below it."""
    return sum(cpu_seconds(member) for member in [pid, *descendants(pid)])


def source_digest() -> str:
    """sha256 over proxy/ and init/ sources: which code these numbers are for."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("proxy/**/*.py"), *REPO.glob("init/**/*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interesting_stats(body: str) -> dict[str, int]:
    """Connection totals and every failure-ish counter the sidecar exposes."""
    keep = re.compile(r"cx_total|fail|overflow|refused|timeout|none_healthy|exceeded|eject")
    out = {}
    for line in body.splitlines():
        name, _, value = line.rpartition(": ")
        if name and keep.search(name) and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def summarize_log(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    flags: dict[str, int] = {}
    access_lines = 0
    other: list[str] = []
    with path.open(errors="replace") as log:
        for line in log:
            match = ACCESS.search(line)
            if match:
                access_lines += 1
                if match.group(1) != "-":
                    flags[match.group(1)] = flags.get(match.group(1), 0) + 1
            else:
                other.append(line.rstrip("\n"))
    return {
        "log": str(path),
        "access_log_lines": access_lines,
        "response_flags": flags,
        "other_lines": len(other),
        "other_lines_tail": other[-40:],
    }


def summarize(samples: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for metric in METRICS:
        out[metric] = {}
        for scenario in SCENARIOS:
            rows = [s for s in samples if s["metric"] == metric and s["scenario"] == scenario]
            values = [s["value"] for s in rows if s["value"] is not None]
            attempts = sum(s["attempts"] for s in rows)
            errors = sum(s["errors"] for s in rows)
            cpu = [s.get("sidecar_cpu") for s in rows if s.get("sidecar_cpu") is not None]
            ocpu = [s.get("origin_cpu") for s in rows if s.get("origin_cpu") is not None]
            fcpu = [s["foreign_cpu"] for s in rows if s.get("foreign_cpu") is not None]
            steal = [s["steal_cpu"] for s in rows if s.get("steal_cpu") is not None]
            cost = [  # sidecar CPU per unit of work: core-seconds per conn/request/MiB, in us
                s["sidecar_cpu"] / s["value"] * 1e6
                for s in rows
                if s.get("sidecar_cpu") is not None and s["value"]
            ]
            out[metric][scenario] = {
                "values": [round(v, 2) for v in values],
                "median": statistics.median(values) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "failed_runs": len(rows) - len(values),
                "errors": errors,
                "error_rate": errors / attempts if attempts else 0.0,
                "sidecar_cpu_median": statistics.median(cpu) if cpu else None,
                "origin_cpu_median": statistics.median(ocpu) if ocpu else None,
                "sidecar_us_per_unit_median": statistics.median(cost) if cost else None,
                "foreign_cpu_median": statistics.median(fcpu) if fcpu else None,
                "foreign_cpu_max": max(fcpu) if fcpu else None,
                "steal_cpu_median": statistics.median(steal) if steal else None,
                "steal_cpu_max": max(steal) if steal else None,
            }
        base = out[metric]["direct"]["median"]
        for scenario in ("passthrough", "mesh"):
            median = out[metric][scenario]["median"]
            out[metric][scenario]["ratio_to_direct"] = (
                median / base if base and median is not None else None
            )
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def table(summary: dict, meta: dict, samples: list[dict]) -> str:
    head = (
        f"{'metric':<31}" + "".join(f"{LABELS[s]:>27}" for s in SCENARIOS) + f"{'b/a':>7}{'c/a':>7}"
    )
    lines = [head, "-" * len(head)]
    for metric, title in METRICS.items():
        row = f"{title:<31}"
        for scenario in SCENARIOS:
            cell = summary[metric][scenario]
            text = fmt(cell["median"])
            if cell["median"] is not None:
                text += f" [{fmt(cell['min'])}-{fmt(cell['max'])}]"
            row += f"{text:>27}"
        for scenario in ("passthrough", "mesh"):
            ratio = summary[metric][scenario]["ratio_to_direct"]
            row += f"{ratio:>7.2f}" if ratio is not None else f"{'-':>7}"
        lines.append(row)
    lines.append("")
    lines.append("errors (wrk socket errors + non-2xx; failed bulk transfers) / attempts:")
    for metric, title in METRICS.items():
        cells = []
        for scenario in SCENARIOS:
            cell = summary[metric][scenario]
            cells.append(f"{scenario} {cell['errors']} ({cell['error_rate']:.2%})")
        lines.append(f"  {title:<31}" + ", ".join(cells))
    lines.append("")
    lines.append(
        "median CPU during the load (1.00 = one core): sidecar / origin; "
        "sidecar CPU per unit of work"
    )
    for metric, title in METRICS.items():
        cells = []
        for scenario in SCENARIOS:
            cell = summary[metric][scenario]
            side, orig = cell["sidecar_cpu_median"], cell["origin_cpu_median"]
            text = f"{scenario} {'-' if side is None else f'{side:.2f}'}/"
            text += "-" if orig is None else f"{orig:.2f}"
            if cell["sidecar_us_per_unit_median"] is not None:
                text += f" = {cell['sidecar_us_per_unit_median']:,.0f} us/{UNITS[metric]}"
            cells.append(text)
        lines.append(f"  {title:<31}" + ", ".join(cells))
    every = [s for s in samples if s.get("foreign_cpu") is not None]
    if every:
        foreign = [s["foreign_cpu"] for s in every]
        steal = [s["steal_cpu"] for s in every]
        lines.append(
            f"  machine noise per sample (cores): outside the lab median "
            f"{statistics.median(foreign):.2f} max {max(foreign):.2f}; hypervisor steal median "
            f"{statistics.median(steal):.2f} max {max(steal):.2f}"
        )
    lines.append("")
    lines.append(
        f"{meta['runs']} runs each, interleaved a,b,c; median [min-max]; ratios are of medians."
    )
    lines.append(
        f"origin: {meta['origin']} on core 1; load: wrk -t1 -c{meta['connections']} "
        f"-d{meta['duration']}s on core 0; bulk: {meta['bulk_mib']} MiB single stream."
    )
    lines.append(
        f"sidecar on core 1: processes {meta['sidecar_processes']}, access log "
        f"{meta['access_log']}, extra args {meta['sidecar_args'] or 'none'}; "
        f"proxy+init source sha256 {meta['source_sha256']}."
    )
    disturbed = [
        f"{s['metric']} {s['scenario']} run {s['run']} ({s['foreign_cpu']:.2f})"
        for s in samples
        if (s.get("foreign_cpu") or 0) > FOREIGN_CPU_LIMIT
    ]
    if disturbed:
        lines.append(
            f"WARNING: {len(disturbed)} of {len(samples)} samples ran while more than "
            f"{FOREIGN_CPU_LIMIT} of a core was used outside the lab: " + "; ".join(disturbed)
        )
    stolen = [
        f"{s['metric']} {s['scenario']} run {s['run']} ({s['steal_cpu']:.2f})"
        for s in samples
        if (s.get("steal_cpu") or 0) > STEAL_LIMIT
    ]
    if stolen:
        lines.append(
            f"WARNING: {len(stolen)} of {len(samples)} samples lost more than {STEAL_LIMIT} of a "
            "core to hypervisor steal: " + "; ".join(stolen)
        )
    if meta["foreign_labs_start"] or meta["foreign_labs_end"]:
        lines.append(
            "WARNING: other lab namespaces existed during the run (another test suite?): "
            f"{len(meta['foreign_labs_start'])} at start, {len(meta['foreign_labs_end'])} at end"
        )
    if meta["busy"]:
        lines.append(
            f"WARNING: the machine was busy at start (1-min loadavg {meta['loadavg_start'][0]})"
        )
    return "\n".join(lines)


def foreign_labs() -> list[str]:
    """Lab namespaces (dt-ROLE-PID-N) of other processes that are still alive: a test suite
    running meanwhile skews the numbers. Namespaces left behind by dead processes are not."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    live = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(r"dt-.+-(\d+)-\d+", name)
        if match and int(match.group(1)) != os.getpid() and Path(f"/proc/{match[1]}").exists():
            live.append(name)
    return live


def machine_seconds() -> tuple[float, float]:
    """(busy, steal) CPU time of the whole machine, all cores, from /proc/stat. Busy counts
    user, system, irq and softirq time (idle, iowait and steal not); steal is time the
    hypervisor gave to someone else while this machine wanted to run."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def cgroup_seconds(cgroup: Path) -> float:
    """CPU time of every process that ran in ``cgroup`` and below (cgroup v2 cpu.stat)."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    return 0.0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per scenario (>=3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk load")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up (0: none)")
    parser.add_argument("--connections", type=int, default=16, help="wrk concurrent connections")
    parser.add_argument("--bulk-mib", type=int, default=512, help="MiB per bulk transfer")
    parser.add_argument("--settle", type=float, default=0.5, help="pause after each load, s")
    parser.add_argument("--origin", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument(
        "--access-log",
        choices=("text", "json", "off"),
        default="text",
        help="the sidecar's --access-log (its default is text)",
    )
    parser.add_argument(
        "--sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra detour-proxy argument, repeatable (e.g. --sidecar-arg=--concurrency=1)",
    )
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    parser.add_argument("--log-dir", type=Path, help="sidecar and origin logs (default: a tmpdir)")
    parser.add_argument("--max-load", type=float, default=1.0, help="1-min loadavg limit at start")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="wait up to S seconds for the load to drop"
    )
    parser.add_argument(
        "--allow-busy", action="store_true", help="run anyway above --max-load, marked as busy"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def preflight(args: argparse.Namespace) -> tuple[bool, list[float]]:
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (network namespaces, iptables, cgroups)")
    missing = [t for t in ("wrk", "taskset", "setpriv", "curl", "ip") if not shutil.which(t)]
    if args.origin == "nginx" and not shutil.which("nginx"):
        missing.append("nginx")
    if not Path(DETOUR_PROXY).exists():
        missing.append(DETOUR_PROXY)
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")
    if os.cpu_count() < 2:
        sys.exit("needs at least 2 cores (load on core 0, origin and sidecar on core 1)")
    deadline = time.monotonic() + args.wait_idle
    load = loadavg()
    while load[0] > args.max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = loadavg()
    busy = load[0] > args.max_load
    if busy and not args.allow_busy:
        print(
            f"refusing to start: 1-minute loadavg is {load[0]:.2f} (> {args.max_load}). "
            "Wait for the machine to be idle (--wait-idle 120), or pass --allow-busy to run "
            "anyway with the results marked as busy.",
            file=sys.stderr,
        )
        sys.exit(EXIT_BUSY)
    return busy, load


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    busy, load = preflight(args)
    logdir = args.log_dir or Path(tempfile.mkdtemp(prefix="detour-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    logdir.chmod(0o755)
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script and its helpers stay off core 1

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args, logdir)
    foreign_start = foreign_labs()
    if foreign_start:
        print(f"WARNING: other lab namespaces exist (tests running?): {foreign_start}")
    started = time.time()
    interrupted = None
    failure = None
    try:
        print(f"setting up the lab (logs in {logdir}) ...", flush=True)
        bench.setup()
        bench.run_all()
        bench.collect_sidecar_stats()
    except (KeyboardInterrupt, Interrupted) as err:
        interrupted = err
        print(f"\ninterrupted ({type(err).__name__}); tearing down", file=sys.stderr)
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as err:
        failure = f"{type(err).__name__}: {err}"
        print(f"\nFAILED: {failure}\ntearing down", file=sys.stderr)
        with contextlib.suppress(Exception):
            bench.collect_sidecar_stats()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop teardown
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.teardown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted is not None:
        return 130

    meta = {
        "failed": failure,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "runs": args.runs,
        "duration": args.duration,
        "warmup": args.warmup,
        "connections": args.connections,
        "bulk_mib": args.bulk_mib,
        "access_log": args.access_log,
        "sidecar_args": args.sidecar_arg,
        "sidecar_processes": {k: v.get("processes") for k, v in bench.sidecar_reports.items()},
        "source_sha256": source_digest(),
        "origin": bench.origin_kind
        + (f" ({tool_version(['nginx', '-v'])})" if bench.origin_kind == "nginx" else ""),
        "wrk": tool_version(["wrk", "--version"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "unknown",
        ),
        "python": platform.python_version(),
        "loadavg_start": load,
        "loadavg_end": loadavg(),
        "busy": busy,
        "foreign_labs_start": foreign_start,
        "foreign_labs_end": foreign_labs(),
        "max_load": args.max_load,
        "log_dir": str(logdir),
        "pinning": {"load": LOAD_CPU, "origin": SERVER_CPU, "sidecar": SERVER_CPU},
    }
    summary = summarize(bench.samples)
    print()
    print(table(summary, meta, bench.samples))
    for scenario, report in bench.sidecar_reports.items():
        flags = report.get("response_flags") or {}
        print(
            f"sidecar {scenario}: exit {report.get('exit_code')}, "
            f"{report.get('access_log_lines', 0)} access-log lines, "
            f"response flags {flags or 'none'}, {report.get('other_lines', 0)} other log lines"
        )
        failures = {k: v for k, v in report.get("stats", {}).items() if v and "cx_total" not in k}
        if failures:
            print(f"  failure counters: {failures}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "summary": summary,
                    "samples": bench.samples,
                    "sidecars": bench.sidecar_reports,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"JSON written to {args.json}")
    if failure:
        print(f"\nFAILED: {failure}")
        for scenario, report in bench.sidecar_reports.items():
            tail = "\n    ".join(report.get("other_lines_tail", []))
            print(f"  sidecar {scenario} log ({report.get('log')}), last lines:\n    {tail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
