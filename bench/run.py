"""Detour against Envoy, HAProxy, pproxy, mitmproxy and no proxy at all, in one run.

    sudo .venv/bin/python bench/run.py [--quick] [--passes N] [--rows a,b] [--allow-busy]

``make bench`` / ``make bench-quick`` install the peers first (bench/install.py) and call this.
Writes bench/results/<timestamp>.{json,md,png}; bench/README.md says what every number means.
Exit codes: 0 done; 1 the harness broke (a peer did not start or died, a scenario produced no
number); 3 refused, the machine is busy; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from support.mesh_lab import DETOUR_PROXY  # noqa: E402

from bench import groups, measure, report, scenarios  # noqa: E402
from bench.lab import LOAD_CPU, NOFILE, BenchLab, max_held  # noqa: E402
from bench.peers import VenvPaths  # noqa: E402

VENV = REPO / "build" / "bench-venv"
RESULTS = BENCH / "results"
EXIT_BUSY = 3
FULL = groups.Settings(hold_steps=(1000, max_held(NOFILE)))
QUICK = groups.Settings(
    passes=1,
    duration=1,
    latency_connections=(16, 4, 64),
    latency_duration=1,
    latency_warmup=0,
    bulk_mib=32,
    hold_steps=(200, 1000),
    settle=0.2,
)
TOOLS = ("wrk", "h2load", "haproxy", "nginx", "taskset", "setpriv", "prlimit", "curl", "ip")


class Interrupted(Exception):
    """SIGTERM, turned into an exception so teardown runs as it does for Ctrl-C."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every scenario once, briefly")
    parser.add_argument("--passes", type=int, help="interleaved passes (default 3, quick 1)")
    parser.add_argument("--rows", help="comma list of rows (direct always runs)")
    parser.add_argument(
        "--groups", help=f"comma list of metric groups (default all: {','.join(scenarios.GROUPS)})"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--log-dir", type=Path, help="peer logs and configs (default: tmpdir)")
    parser.add_argument("--max-load", type=float, default=1.0, help="1-min loadavg limit")
    parser.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S s for it")
    parser.add_argument("--allow-busy", action="store_true", help="run anyway, marked busy")
    parser.add_argument(
        "--sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra detour-proxy argument, repeatable (e.g. --sidecar-arg=--concurrency=2)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.passes is not None:
        if args.passes < 1:
            parser.error("--passes must be at least 1")
        settings = dataclasses.replace(settings, passes=args.passes)
    args.settings = settings
    try:
        args.selected = scenarios.select(args.rows.split(",") if args.rows else None)
    except ValueError as err:
        parser.error(str(err))
    args.groups = tuple(args.groups.split(",")) if args.groups else scenarios.GROUPS
    unknown = sorted(set(args.groups) - set(scenarios.GROUPS))
    if unknown:
        parser.error(f"unknown groups {unknown}; known: {', '.join(scenarios.GROUPS)}")
    return args


def preflight(args: argparse.Namespace) -> tuple[bool, list[float]]:
    """Refuse what cannot work; refuse (or, with --allow-busy, mark) a busy machine."""
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (network namespaces, iptables, cgroups)")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    missing += [p for p in (DETOUR_PROXY, str(VENV / "bin" / "python")) if not Path(p).exists()]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (make setup; make bench installs the peers)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: load on core 0, origin and proxy on core 1")
    deadline = time.monotonic() + args.wait_idle
    load = measure.loadavg()
    while load[0] > args.max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = measure.loadavg()
    busy = load[0] > args.max_load
    if busy and not args.allow_busy:
        print(
            f"refusing to start: 1-minute loadavg is {load[0]:.2f} (> {args.max_load}); wait "
            "(--wait-idle 300) or pass --allow-busy to run with the results marked busy",
            file=sys.stderr,
        )
        sys.exit(EXIT_BUSY)
    return busy, load


def foreign_labs() -> list[str]:
    """Lab namespaces (dt-ROLE-PID-N) of other live processes: another test run meanwhile."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    live = []
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"dt-.+-(\d+)-\d+", line.split()[0] if line.strip() else "")
        if match and int(match[1]) != os.getpid() and Path(f"/proc/{match[1]}").exists():
            live.append(match[0])
    return live


def version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def versions(venv: VenvPaths) -> dict[str, str]:
    envoy = version([venv.envoy, "--version"])
    return {
        "detour": f"source sha256 {source_digest()}",
        "envoy": envoy.rsplit("version: ", 1)[-1].split("/")[1] if "/" in envoy else envoy,
        "haproxy": version(["haproxy", "-v"]).split(" - ")[0],
        "pproxy": version([venv.pproxy, "--version"]),
        "mitmproxy": version([venv.mitmdump, "--version"]),
        "nginx (origin)": version(["nginx", "-v"]),
        "wrk": version(["wrk", "--version"]).split(" [")[0],
        "h2load": version(["h2load", "--version"]),
        "python (detour)": platform.python_version(),
    }


def source_digest() -> str:
    """sha256 over proxy/ and init/ sources: which Detour these numbers are for."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("proxy/**/*.py"), *REPO.glob("init/**/*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def start_rows(lab: BenchLab, rows, failures: list[str]) -> dict[str, str]:
    """Start every row's pod and proxy; a proxy that does not start is a failure of the run
    (recorded, the other rows go on); returns the rows skipped on purpose, with the reason."""
    skipped = {}
    for index, row in enumerate(rows):
        print(f"  starting {row.name} ...", flush=True)
        try:
            client = lab.add_row(row, index)
        except (RuntimeError, AssertionError, OSError) as err:
            failures.append(f"{row.name} did not start: {err}")
            print(f"  FAILED: {failures[-1]}", flush=True)
            client = lab.clients.get(row.name)
            if client is not None:
                lab.stop_proxy(client)
                client.skipped = "did not start"
            continue
        if client.skipped:
            skipped[row.name] = client.skipped
            print(f"  skipped {row.name}: {client.skipped}", flush=True)
    return skipped


def measure_all(lab: BenchLab, args, failures: list[str]) -> list[dict]:
    settings = args.settings
    live = tuple(r for r in args.selected if not lab.clients[r.name].skipped)
    if not args.quick:
        print("warm-up: 1 s of keep-alive load per row (not recorded)", flush=True)
        warm = dataclasses.replace(settings, duration=1)
        for row in live:
            groups.run(lab, lab.clients[row.name], "keepalive", warm, 0)
    samples: list[dict] = []
    dead: set[str] = set()
    for number, group, row in scenarios.schedule(live, settings.passes, args.groups):
        client = lab.clients[row.name]
        if row.name in dead:
            continue
        try:
            sample = groups.run(lab, client, group, settings, number)
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as err:
            failures.append(f"{row.name} {group} pass {number}: {err}")
            print(f"  FAILED: {failures[-1]}", flush=True)
            continue
        samples.append(sample)
        shown = ", ".join(f"{k} {report.fmt(v, 3)}" for k, v in list(sample["values"].items())[:4])
        print(f"  pass {number} {group:<9} {row.name:<13} {shown}", flush=True)
        died = client.dead()
        if died:
            failures.append(f"{row.name}: {died} during {group}")
            dead.add(row.name)
    return samples


def write_results(out: Path, doc: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(doc["meta"]["started_epoch"]))
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report.markdown(doc["summary"], doc["meta"], doc["samples"]))
    chart = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "bench.chart",
            str(stem.with_suffix(".json")),
            str(stem.with_suffix(".png")),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if chart.returncode != 0:
        raise RuntimeError(f"the chart failed: {chart.stderr[-2000:]}")
    return stem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    busy, load = preflight(args)
    logdir = args.log_dir or Path(tempfile.mkdtemp(prefix="detour-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    logdir.chmod(0o755)
    os.sched_setaffinity(0, {LOAD_CPU})  # this script and its helpers stay off the server core

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    venv = VenvPaths(VENV)
    lab = BenchLab(logdir, venv, tuple(args.sidecar_arg))
    started = time.time()
    others_start = foreign_labs()
    if others_start:
        print(f"WARNING: other lab namespaces exist (tests running?): {others_start}")
    interrupted = False
    failures: list[str] = []
    samples: list[dict] = []
    skipped: dict[str, str] = {}
    ends: dict[str, dict] = {}
    try:
        print(f"setting up the lab (logs and configs in {logdir}) ...", flush=True)
        lab.create()
        skipped = start_rows(lab, args.selected, failures)
        samples = measure_all(lab, args, failures)
    except (KeyboardInterrupt, Interrupted) as err:
        print(f"\ninterrupted ({type(err).__name__}); tearing down", file=sys.stderr)
        interrupted = True
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as err:
        failures.append(f"{type(err).__name__}: {err}")
        print(f"\nFAILED: {failures[-1]}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop teardown
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ends = lab.destroy()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return 130

    ran = {
        r.name: tuple(g for g in r.groups if g in args.groups)
        for r in args.selected
        if r.name in lab.clients and not lab.clients[r.name].skipped
    }
    failures += [f"no number: {m}" for m in report.missing_numbers(samples, ran)]
    summary = report.summarize(samples)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "started_epoch": started,
        "elapsed_s": round(time.time() - started, 1),
        "quick": args.quick,
        "passes": args.settings.passes,
        "settings": dataclasses.asdict(args.settings),
        "rows": [r.name for r in args.selected],
        "groups": list(args.groups),
        "skipped": skipped,
        "failures": failures,
        "busy": busy,
        "loadavg_start": load,
        "loadavg_end": measure.loadavg(),
        "other_labs_start": others_start,
        "other_labs_end": foreign_labs(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "versions": versions(venv),
        "pinning": {"load": "core 0", "origin and proxy": "core 1"},
        "processes": {n: c.processes for n, c in lab.clients.items() if c.processes},
        "rss_start_kb": {n: c.rss_start_kb for n, c in lab.clients.items() if c.rss_start_kb},
        # An mTLS row's server-side proxy (its CPU and memory are in the row's numbers).
        "server_processes": {
            n: c.server_processes for n, c in lab.clients.items() if c.server_processes
        },
        "server_rss_start_kb": {
            n: c.server_rss_start_kb for n, c in lab.clients.items() if c.server_rss_start_kb
        },
        "detour_args": args.sidecar_arg,
        "log_dir": str(logdir),
    }
    doc = {
        "meta": meta,
        "summary": summary,
        "ratios": report.ratios(summary),
        "targets": report.targets(summary),
        "samples": samples,
        "peers": ends,
    }
    stem = write_results(args.out, doc)
    print()
    print(stem.with_suffix(".md").read_text())
    print(f"results: {stem}.json, .md, .png")
    if failures:
        print("\nHARNESS FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
