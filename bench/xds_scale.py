"""xDS at scale: one control plane, N sidecars, 1,000 services / 10,000 endpoints; Detour and
Envoy 1.40 fed the same snapshots, in one run. (Not bench/xds.py: run as a script, that name
would shadow xds-protos' ``xds`` package.)

    sudo .venv/bin/python bench/xds_scale.py [--quick] [--sidecars 10,50,100] [--envoy-sidecars 10]
        [--services 1000] [--endpoints 10] [--curve 100,300,1000] [--variants sotw,delta]

``make bench`` runs it after bench/run.py (``make bench-xds`` alone); ``make bench-quick``
runs ``--quick`` (2 sidecars, 50 services) so CI knows the harness works. Every sidecar is
its own process (``--concurrency 1`` for both proxies) in its own lab pod on one bridge; the
control plane is the tests' (tests/support/xds_control_plane.py) in the bench's process, on
the bridge. Per proxy, ADS variant and N, in this order:

1. the base snapshot (passthrough only) is served, the N sidecars start and ACK it: RSS base;
2. the full snapshot is published: publish→ACK of every type per sidecar (the spread over
   sidecars is p50/p99), CPU each sidecar spent, RSS after (the growth per 1,000 endpoints);
3. full updates (every endpoint moved): publish→ACK and CPU per update;
4. one-endpoint updates (only endpoints re-versioned, as istiod pushes a rescheduled pod):
   publish→ACK and CPU. State of the World resends every ClusterLoadAssignment named (the
   protocol says so); Delta sends the one that changed.

CPU is the pod cgroup's, less the sidecar's idle rate over the same time (timers, Envoy's
stats flush), so a one-endpoint update is not drowned by doing nothing. The curve: one Delta
fleet of the smallest N, the snapshot grown through ``--curve`` service counts, a full and a
one-endpoint update's CPU at each: the second must stay flat while the first grows.
Writes bench/results/xds-<timestamp>.{json,md}. Exit 1 when the harness breaks (a sidecar
does not start or never ACKs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from support.lab import wait_until  # noqa: E402
from support.mesh_lab import GATEWAY_V4, PROXY_UID, MeshLab, Pod  # noqa: E402
from support.xds_control_plane import XdsTestControlPlane  # noqa: E402
from support.xds_snapshots import bootstrap  # noqa: E402

from bench import measure  # noqa: E402
from bench.peers import VenvPaths  # noqa: E402
from bench.xds_mesh import (  # noqa: E402
    Scale,
    Spread,
    base_snapshot,
    full_snapshot,
    median,
    move_one_endpoint,
    net_cpu,
)
from proxy.xds.resources import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE  # noqa: E402

ALL_TYPES = (TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE)
BASE_TYPES = (TYPE_CLUSTER, TYPE_LISTENER)
API_TYPES = {"sotw": "GRPC", "delta": "DELTA_GRPC"}
RESULTS = BENCH / "results"
ENVOY = VenvPaths(REPO / "build" / "bench-venv").envoy
FIRST_HOST = 20
ACK_TIMEOUT = 900.0  # 100 sidecars applying 10,000 endpoints on two cores: minutes
IDLE_WINDOW = 2.0


@dataclasses.dataclass(frozen=True)
class Plan:
    scale: Scale
    sidecars: tuple[int, ...]
    envoy_sidecars: tuple[int, ...]
    variants: tuple[str, ...]
    curve: tuple[int, ...]
    full_updates: int
    one_endpoint_updates: int
    ack_timeout: float = ACK_TIMEOUT


@dataclasses.dataclass
class Update:
    """One publish as every sidecar of a fleet saw it."""

    seconds_to_ack: list[float]  # per sidecar: publish → its last type's ACK
    cpu_seconds: list[float]  # per sidecar, net of idle


@dataclasses.dataclass
class FleetResult:
    proxy: str
    variant: str
    sidecars: int
    services: int
    endpoints: int
    rss_base_kib: float  # median per sidecar
    rss_loaded_kib: float
    first: Update
    full: list[Update]
    one_endpoint: list[Update]

    def row(self) -> dict:
        """The table's figures: spreads over every sidecar of every publish of a kind."""

        def spread(updates: list[Update]) -> Spread:
            return Spread.of([s for u in updates for s in u.seconds_to_ack])

        def cpu(updates: list[Update]) -> float:
            return median([c for u in updates for c in u.cpu_seconds])

        per_thousand = (self.rss_loaded_kib - self.rss_base_kib) / (
            self.services * self.endpoints / 1000
        )
        return {
            "proxy": self.proxy,
            "variant": self.variant,
            "sidecars": self.sidecars,
            "first_ack": dataclasses.asdict(spread([self.first])),
            "full_ack": dataclasses.asdict(spread(self.full)),
            "one_ack": dataclasses.asdict(spread(self.one_endpoint)),
            "rss_base_mib": self.rss_base_kib / 1024,
            "rss_loaded_mib": self.rss_loaded_kib / 1024,
            "rss_kib_per_1000_endpoints": per_thousand,
            "cpu_first_s": cpu([self.first]),
            "cpu_full_s": cpu(self.full),
            "cpu_one_ms": cpu(self.one_endpoint) * 1000,
        }


class Fleet:
    """N sidecars of one proxy, each in its own pod, driven by one control plane."""

    def __init__(
        self, lab: MeshLab, pods: Sequence[Pod], proxy: str, variant: str, ack_timeout: float
    ) -> None:
        self.lab, self.pods, self.proxy, self.variant = lab, list(pods), proxy, variant
        self.ack_timeout = ack_timeout
        self.plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=lab.bridge_ns.name)
        self.nodes = [f"sidecar~{p.ip}~{p.name}-0.default~default.svc.cluster.local" for p in pods]
        self._idle_rates: list[float] = []

    def start(self) -> None:
        self.plane.start()
        self.plane.set_snapshot("base", base_snapshot())  # no endpoints, no routes to ask for
        for pod, node in zip(self.pods, self.nodes, strict=True):
            config = self.lab.write_config(
                f"{pod.name}.{self.proxy}.{self.variant}.json",
                json.dumps(bootstrap(node, self.plane.address, API_TYPES[self.variant])),
            )
            if self.proxy == "detour":
                self.lab.start_sidecar(pod, None, "--bootstrap", str(config))
            else:
                self._start_envoy(pod, config)
        for node in self.nodes:
            self.plane.wait_acked("base", BASE_TYPES, node_id=node, timeout=self.ack_timeout)

    def _start_envoy(self, pod: Pod, config: Path) -> None:
        pod.sidecar_log = self.lab.workdir / f"{pod.name}.envoy.log"
        argv = [ENVOY, "-c", str(config), "--concurrency", "1", "--disable-hot-restart"]
        argv += ["-l", "warning"]
        with pod.sidecar_log.open("w") as log:
            pod.sidecar = subprocess.Popen(
                pod.command(*argv, uid=PROXY_UID), stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(lambda: pod.admin("/ready")[0] == 200, 30, f"Envoy in {pod.name} ready")

    def stop(self) -> None:
        for pod in self.pods:
            if pod.sidecar is not None and pod.sidecar.poll() is None:
                pod.sidecar.terminate()
                pod.sidecar.wait(30)
            pod.sidecar = None
        self.plane.stop()

    # --- what the kernel says -------------------------------------------------------------

    def cpu(self) -> list[float]:
        return [measure.cgroup_seconds(p.cgroup) for p in self.pods]

    def rss_kib(self) -> float:
        return median([measure.tree_rss_kb(self._pid(p)) for p in self.pods])

    def _pid(self, pod: Pod) -> int:
        assert pod.sidecar is not None
        return pod.sidecar.pid

    def settle(self) -> None:
        """Wait until the fleet is idle, then take each sidecar's idle CPU rate."""
        measure.wait_quiet([self._pid(p) for p in self.pods], timeout=120, busy_share=0.05)
        before, start = self.cpu(), time.monotonic()
        time.sleep(IDLE_WINDOW)
        elapsed = time.monotonic() - start
        self._idle_rates = [(b - a) / elapsed for a, b in zip(before, self.cpu(), strict=True)]

    # --- one publish ----------------------------------------------------------------------

    def publish(self, versions: dict[str, str], resources: dict[str, list]) -> Update:
        """Publish, wait for every sidecar to ACK every type named in ``versions``, wait
        for the fleet to go quiet again: what it cost."""
        self.settle()
        before, start = self.cpu(), time.monotonic()
        published = self.plane.set_snapshot(versions, resources)
        acked = []
        for node in self.nodes:
            for type_url, version in versions.items():
                self.plane.wait_acked(version, [type_url], node_id=node, timeout=self.ack_timeout)
            acked.append(self._ack_seconds(node, versions) - published)
        measure.wait_quiet([self._pid(p) for p in self.pods], timeout=120, busy_share=0.05)
        elapsed = time.monotonic() - start
        used = [b - a for a, b in zip(before, self.cpu(), strict=True)]
        cpu = [net_cpu(u, r, elapsed) for u, r in zip(used, self._idle_rates, strict=True)]
        return Update(acked, cpu)

    def _ack_seconds(self, node: str, versions: dict[str, str]) -> float:
        last = 0.0
        for type_url, version in versions.items():
            ats = [
                r.at
                for r in self.plane.replies(node)
                if r.type_url == type_url and r.version == version and r.acked
            ]
            last = max(last, min(ats))
        return last


def everything(version: str) -> dict[str, str]:
    return dict.fromkeys(ALL_TYPES, version)


def run_fleet(
    lab: MeshLab, pods: Sequence[Pod], proxy: str, variant: str, plan: Plan
) -> FleetResult:
    fleet = Fleet(lab, pods, proxy, variant, plan.ack_timeout)
    say(f"{proxy} {variant} x{len(pods)}: starting")
    fleet.start()
    try:
        fleet.settle()
        rss_base = fleet.rss_kib()
        resources = full_snapshot(plan.scale, generation=0)
        first = fleet.publish(everything("full-0"), resources)
        rss_loaded = fleet.rss_kib()
        say(f"  first snapshot: ACKed in {max(first.seconds_to_ack):.2f}s at most")
        full = []
        for g in range(1, plan.full_updates + 1):
            resources = full_snapshot(plan.scale, generation=g)
            full.append(fleet.publish(everything(f"full-{g}"), resources))
        one = []
        for k in range(plan.one_endpoint_updates):
            resources = move_one_endpoint(resources, generation=100 + k)
            one.append(fleet.publish({TYPE_ENDPOINT: f"one-{k}"}, resources))
        result = FleetResult(
            proxy,
            variant,
            len(pods),
            plan.scale.services,
            plan.scale.endpoints,
            rss_base,
            rss_loaded,
            first,
            full,
            one,
        )
        say(f"  {result.row()}")
        return result
    finally:
        fleet.stop()


def run_curve(lab: MeshLab, pods: Sequence[Pod], proxy: str, plan: Plan) -> list[dict]:
    """One Delta fleet, the snapshot grown through plan.curve: full vs one-endpoint CPU."""
    fleet = Fleet(lab, pods, proxy, "delta", plan.ack_timeout)
    say(f"{proxy} delta x{len(pods)}: the curve over {plan.curve} services")
    fleet.start()
    points = []
    try:
        for n, services in enumerate(plan.curve):
            scale = Scale(services, plan.scale.endpoints)
            fleet.publish(everything(f"grow-{services}"), full_snapshot(scale, 2 * n))
            resources = full_snapshot(scale, generation=2 * n + 1)
            full = fleet.publish(everything(f"full-{services}"), resources)
            ones = []
            for k in range(plan.one_endpoint_updates):
                resources = move_one_endpoint(resources, generation=100 + k)
                ones.append(fleet.publish({TYPE_ENDPOINT: f"one-{services}-{k}"}, resources))
            points.append(
                {
                    "proxy": proxy,
                    "services": services,
                    "endpoints": scale.total_endpoints,
                    "cpu_full_ms": median(full.cpu_seconds) * 1000,
                    "cpu_one_ms": median([c for u in ones for c in u.cpu_seconds]) * 1000,
                }
            )
            say(f"  {points[-1]}")
        return points
    finally:
        fleet.stop()


def say(text: str) -> None:
    print(f"xds bench: {text}", flush=True)


@contextmanager
def lab_with_pods(count: int) -> Iterator[tuple[MeshLab, list[Pod]]]:
    lab = MeshLab.create()
    try:
        pods = [lab.add_pod(f"x{i}", FIRST_HOST + i) for i in range(count)]
        yield lab, pods
    finally:
        lab.destroy(show_logs=False)


def run(plan: Plan) -> dict:
    fleets = [("detour", n) for n in plan.sidecars] + [("envoy", n) for n in plan.envoy_sidecars]
    results: list[dict] = []
    curve: list[dict] = []
    with lab_with_pods(max(n for _, n in fleets)) as (lab, pods):
        for variant in plan.variants:
            for proxy, n in fleets:
                results.append(run_fleet(lab, pods[:n], proxy, variant, plan).row())
        smallest = pods[: min(plan.sidecars)]
        if plan.curve:
            curve += run_curve(lab, smallest, "detour", plan)
            if plan.envoy_sidecars:
                curve += run_curve(lab, pods[: min(plan.envoy_sidecars)], "envoy", plan)
    return {"plan": dataclasses.asdict(plan), "fleets": results, "curve": curve}


def markdown(report: dict) -> str:
    plan = report["plan"]
    lines = [
        f"# xDS scale: {plan['scale']['services']} services, "
        f"{plan['scale']['services'] * plan['scale']['endpoints']} endpoints",
        "",
        "publish→ACK p50/p99 in seconds over every sidecar of every publish; CPU per sidecar "
        "(median), net of idle; RSS median per sidecar.",
        "",
        "| proxy | variant | N | first ACK p50/p99 | full update ACK p50/p99 | one endpoint ACK "
        "p50/p99 | RSS base MiB | RSS loaded MiB | KiB per 1,000 endpoints | CPU first s | "
        "CPU full s | CPU one endpoint ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["fleets"]:
        lines.append(
            f"| {r['proxy']} | {r['variant']} | {r['sidecars']} | "
            f"{r['first_ack']['p50']:.2f} / {r['first_ack']['p99']:.2f} | "
            f"{r['full_ack']['p50']:.2f} / {r['full_ack']['p99']:.2f} | "
            f"{r['one_ack']['p50']:.3f} / {r['one_ack']['p99']:.3f} | "
            f"{r['rss_base_mib']:.1f} | {r['rss_loaded_mib']:.1f} | "
            f"{r['rss_kib_per_1000_endpoints']:.0f} | {r['cpu_first_s']:.3f} | "
            f"{r['cpu_full_s']:.3f} | {r['cpu_one_ms']:.1f} |"
        )
    if report["curve"]:
        lines += [
            "",
            "One Delta fleet, the snapshot grown: CPU per sidecar of a full update and of a "
            "one-endpoint update.",
            "",
            "| proxy | services | endpoints | CPU full ms | CPU one endpoint ms |",
            "|---|---|---|---|---|",
        ]
        for p in report["curve"]:
            lines.append(
                f"| {p['proxy']} | {p['services']} | {p['endpoints']} | "
                f"{p['cpu_full_ms']:.1f} | {p['cpu_one_ms']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def parse_args(argv: list[str] | None) -> tuple[Plan, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 sidecars, 50 services, 1 pass")
    parser.add_argument("--sidecars", type=csv_ints, default=(10, 50, 100))
    parser.add_argument("--envoy-sidecars", type=csv_ints, default=(10,))
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--curve", type=csv_ints, default=(100, 300, 1000))
    parser.add_argument("--variants", default="sotw,delta")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in API_TYPES]
    if unknown or not variants:
        parser.error(f"--variants={args.variants}: each must be one of {sorted(API_TYPES)}")
    try:
        scale = Scale(args.services, args.endpoints)
    except ValueError as err:
        parser.error(str(err))
    if args.quick:
        return Plan(Scale(50, 4), (2,), (1,), variants, (20,), 1, 2, ack_timeout=60), args.out
    return Plan(scale, args.sidecars, args.envoy_sidecars, variants, args.curve, 2, 3), args.out


def main(argv: list[str] | None = None) -> int:
    plan, out = parse_args(argv)
    if not Path(ENVOY).exists() and plan.envoy_sidecars:
        print(f"xds bench: no Envoy at {ENVOY} (make bench-peers installs it)", file=sys.stderr)
        return 1
    try:
        report = run(plan)
    except (AssertionError, TimeoutError) as err:  # a sidecar that never started or ACKed
        print(f"xds bench: the harness broke: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"xds-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / f"xds-{stamp}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
