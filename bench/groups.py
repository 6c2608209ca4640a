"""One function per metric group: run the load against one row's client pod, with a CPU
window around it, and return one sample (numbers in ``values``, what the tools printed in
``raw``, the machine's noise in ``noise``). The interleaving lives in scenarios.schedule.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import load, measure, origin
from bench.lab import LEAK_MARGIN, SYSTEM_PYTHON, BenchLab, Client

BULK_SCRIPT = str(Path(__file__).resolve().parent / "bulk.py")
HOLD_SCRIPT = str(Path(__file__).resolve().parent / "hold.py")


@dataclass(frozen=True)
class Settings:
    """How long and how hard each group loads; ``make bench`` and ``bench-quick`` differ only
    here."""

    passes: int = 3
    duration: float = 5.0  # wrk, per load
    connections: int = 16  # wrk
    rate: float = 1000.0  # h2load, requests/s in all
    latency_connections: tuple[int, ...] = (16, 4, 64)
    latency_duration: int = 6  # h2load -D takes whole seconds
    latency_warmup: int = 1
    h2_streams: int = 100
    bulk_mib: int = 256
    hold_steps: tuple[int, ...] = (1000, 10000)
    settle: float = 0.5
    quiet_timeout: float = 60.0  # after the memory step, for the proxy to go idle
    leak_wait: float = 3.0  # after a load, for the proxies' closes in flight to finish


def _window(lab: BenchLab, client: Client) -> measure.Window:
    """The row's proxies (an mTLS row: client and server) and the origin it answers from."""
    server_origin = client.server_origin or lab.origin_http
    return measure.Window(client.proxy_pids(), server_origin.pid, lab.mesh.cgroup_parent)


def _sample(client: Client, group: str, number: int, values: dict, **extra) -> dict:
    return {"row": client.row.name, "group": group, "pass": number, "values": values, **extra}


def _per_unit_us(cpu_s: float | None, units: float) -> float | None:
    return cpu_s / units * 1e6 if cpu_s is not None and units else None


def _url(client: Client) -> str:
    return f"http://{client.target}:{origin.HTTP_PORT}/"


def _split_us(group: str, noise: dict, units: float) -> dict[str, float | None]:
    """An mTLS row's CPU per unit, client side and server side (their sum is the row's)."""
    split = noise.get("proxy_cpu_split_s") or []
    if len(split) != 2:
        return {}
    return {
        f"{group}_cpu_client_us": _per_unit_us(split[0], units),
        f"{group}_cpu_server_us": _per_unit_us(split[1], units),
    }


def _handshakes_per_req(before: dict, after: dict, good: int) -> float | None:
    """mTLS handshakes the server proxy terminated (each a client certificate checked) per
    good answer: about 1 when every client connection is a new mTLS connection (the opaque
    TCP pairs), about 0 when the client proxy pools them (the HTTP pairs). A few more than 1
    at the end of a closed-loop run are the connections still open when wrk stops."""
    return (after["server"] - before["server"]) / good if good else None


def _resumed_share(before: dict, after: dict) -> float | None:
    """The share of mTLS handshakes (both ends counted) that resumed a TLS session."""
    handshakes = sum(after[side] - before[side] for side in ("client", "server"))
    return (after["resumed"] - before["resumed"]) / handshakes if handshakes else None


def wrk_group(lab: BenchLab, client: Client, s: Settings, number: int, close: bool) -> dict:
    """Saturation with wrk: every request on a new connection (``close``) or 16 keep-alive
    connections back to back. CPU per connection / per request is the proxy's tree CPU over
    the window divided by the good answers (an mTLS row: both proxies'; their handshake
    counters are read before and after, outside the window)."""
    group = "newconn" if close else "keepalive"
    meshed = client.server_pod is not None
    before = lab.handshakes(client) if meshed else None
    window = _window(lab, client)
    window.start(time.monotonic())
    argv = load.wrk_argv(_url(client), s.connections, s.duration, close)
    done = lab.run_load(client.pod, argv, timeout=s.duration + 30)
    noise = window.stop(time.monotonic())
    after = lab.handshakes(client) if meshed else None
    try:
        result = load.parse_wrk(done.stdout)
    except ValueError:
        return _sample(
            client,
            group,
            number,
            {f"{group}_rps": None},
            errors=1,
            attempts=1,
            noise=noise,
            raw={"stdout": done.stdout, "stderr": done.stderr},
        )
    values = {
        f"{group}_rps": result["rate"],
        f"{group}_cpu_us": _per_unit_us(noise["proxy_cpu_s"], result["good"]),
    }
    raw = result["raw"]
    if before is not None and after is not None:
        values.update(_split_us(group, noise, result["good"]))
        values[f"{group}_handshakes_per_req"] = _handshakes_per_req(before, after, result["good"])
        values[f"{group}_resumed_share"] = _resumed_share(before, after)
        raw = {**raw, "handshakes": {"before": before, "after": after}}
    return _sample(
        client,
        group,
        number,
        values,
        errors=result["errors"],
        attempts=result["attempts"],
        noise=noise,
        raw=raw,
    )


def h2_group(lab: BenchLab, client: Client, s: Settings, number: int) -> dict:
    """HTTP/2 cleartext from the client, ``h2_streams`` streams on one connection, for
    ``duration``: requests/s and the proxy's CPU per request. Proxies answer from the origin's
    HTTP/1.1 port (HTTP/2 downstream, HTTP/1.1 upstream, as each is configured for its HTTP
    row); ``direct`` talks HTTP/2 to the origin's HTTP/2 port, the physical limit."""
    port = origin.H2_PORT if client.row.name == "direct" else origin.HTTP_PORT
    argv = load.h2load_streams_argv(
        f"http://{client.target}:{port}/", s.h2_streams, max(1, round(s.duration))
    )
    window = _window(lab, client)
    window.start(time.monotonic())
    done = lab.run_load(client.pod, argv, timeout=s.duration + 30)
    noise = window.stop(time.monotonic())
    try:
        summary = load.parse_h2load(done.stdout)
    except ValueError:
        raw = {"stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}
        values = {"h2_rps": None}
        return _sample(client, "h2", number, values, errors=1, attempts=1, noise=noise, raw=raw)
    good = summary["ok_2xx"]
    values = {
        "h2_rps": good / summary["seconds"] if summary["seconds"] else None,
        "h2_cpu_us": _per_unit_us(noise["proxy_cpu_s"], good),
    }
    return _sample(
        client,
        "h2",
        number,
        values,
        errors=summary["errors"],
        attempts=summary["total"],
        noise=noise,
        raw=summary,
    )


def latency_group(lab: BenchLab, client: Client, s: Settings, number: int) -> dict:
    """Open-loop fixed rate with h2load, at each connection count: latency percentiles of the
    2xx answers and the proxy's vCPU per 1000 requests/s."""
    values: dict[str, float | None] = {}
    raw: dict[str, dict] = {}
    noises = []
    errors = attempts = 0
    logs = lab.logdir / "h2load"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)
    for conns in s.latency_connections:
        log_file = logs / f"{client.row.name}-c{conns}-{number}.tsv"
        argv = load.h2load_argv(
            _url(client), conns, s.rate, s.latency_duration, s.latency_warmup, str(log_file)
        )
        window = _window(lab, client)
        window.start(time.monotonic())
        done = lab.run_load(client.pod, argv, timeout=s.latency_duration + s.latency_warmup + 30)
        noise = window.stop(time.monotonic())
        noises.append(noise)
        key = f"lat_c{conns}"
        try:
            summary = load.parse_h2load(done.stdout)
            durations = load.parse_latency_log(log_file.read_text())
            log_file.unlink()
        except (ValueError, OSError):
            values[f"{key}_p50_ms"] = None
            errors += 1
            attempts += 1
            raw[key] = {"stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}
            continue
        errors += summary["errors"]
        attempts += summary["total"]
        raw[key] = summary
        if not durations:
            values[f"{key}_p50_ms"] = None
            continue
        for name, ms in load.latency_percentiles(durations).items():
            values[f"{key}_{name}"] = ms
        values[f"{key}_rate"] = summary["rate"]
        cores = noise["proxy_cpu_s"] / noise["wall_s"] if noise["proxy_cpu_s"] is not None else None
        values[f"{key}_vcpu_per_krps"] = (
            cores / (summary["rate"] / 1000) if cores is not None and summary["rate"] else None
        )
        time.sleep(s.settle)
    worst = max(noises, key=lambda n: n["foreign_cores"]) if noises else {}
    return _sample(
        client, "latency", number, values, errors=errors, attempts=attempts, noise=worst, raw=raw
    )


def bulk_group(lab: BenchLab, client: Client, s: Settings, number: int) -> dict:
    """One stream each way, ``bulk_mib`` MiB, timed by the client until the last byte."""
    size = s.bulk_mib * 2**20
    values: dict[str, float | None] = {}
    raw = {}
    errors = 0
    noises = []
    for mode in ("upload", "download"):
        window = _window(lab, client)
        window.start(time.monotonic())
        argv = load.bulk_argv(
            SYSTEM_PYTHON, BULK_SCRIPT, mode, client.target, origin.BULK_PORT, size
        )
        done = lab.run_load(client.pod, argv, timeout=300)
        noises.append(window.stop(time.monotonic()))
        try:
            result = load.parse_bulk(done.stdout, size)
        except (ValueError, KeyError):
            result = {"mibps": None, "seconds": None, "raw": {"stderr": done.stderr[-2000:]}}
        errors += result["mibps"] is None
        values[f"{mode}_mibps"] = result["mibps"]
        values[f"{mode}_s"] = result["seconds"]
        raw[mode] = result["raw"]
        time.sleep(s.settle)
    worst = max(noises, key=lambda n: n["foreign_cores"])
    return _sample(client, "bulk", number, values, errors=errors, attempts=2, noise=worst, raw=raw)


def memory_group(lab: BenchLab, client: Client, s: Settings, number: int) -> dict:
    """The proxy's RSS idle, then with ``hold_steps`` idle keep-alive connections open (each
    answered once, so an L7 proxy holds its upstream too); KB per connection from the last
    step; an mTLS row's RSS is its two proxies' together. The proxy (both, for an mTLS row) is
    restarted first: after an earlier pass's thousands of connections its allocator keeps the
    memory, and "idle" would already be the high-water mark."""
    lab.restart_proxy(client)
    time.sleep(s.settle)
    pids = client.proxy_pids()  # an mTLS row: both proxies, summed
    idle = measure.trees_rss_kb(pids)
    values: dict[str, float | None] = {"rss_idle_kb": idle}
    argv = [SYSTEM_PYTHON, HOLD_SCRIPT, client.target, str(origin.HTTP_PORT)]
    argv += [str(n) for n in s.hold_steps]
    cmd = lab.command(client.pod, ["taskset", "-c", "0", *argv], uid=1000)
    holder = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    raw = {}
    failed = 0
    try:
        for index, step in enumerate(s.hold_steps):
            line = holder.stdout.readline().split()
            if len(line) != 4 or line[0] != "held" or int(line[1]) != step:
                raise RuntimeError(f"hold.py stopped at step {step}: {line} {holder.stderr.read()}")
            failed += int(line[3])
            time.sleep(s.settle)
            rss = measure.trees_rss_kb(pids)
            values["rss_few_kb" if index == 0 else "rss_many_kb"] = rss
            raw[str(step)] = rss
            holder.stdin.write("\n")
            holder.stdin.flush()
    finally:
        with_timeout_close(holder)
    # The connections are closed: the proxy must be idle again before the next sample shares
    # its core, or it starts afresh (it is restarted before every memory step anyway).
    if not measure.wait_quiet(pids, s.quiet_timeout):
        name, waited = client.row.name, s.quiet_timeout
        print(f"  {name} still busy {waited:g} s after the memory step: restarted", flush=True)
        lab.restart_proxy(client)
    many = s.hold_steps[-1]
    top = values.get("rss_many_kb")
    values["kb_per_conn"] = (top - idle) / many if top is not None else None
    time.sleep(s.settle)
    return _sample(
        client,
        "memory",
        number,
        values,
        errors=failed,
        attempts=sum(s.hold_steps),
        noise={},
        raw=raw,
    )


def with_timeout_close(proc: subprocess.Popen) -> None:
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(lab: BenchLab, client: Client, group: str, s: Settings, number: int) -> dict:
    """One sample of ``group``; then, if the row's proxies kept the connections the load
    closed (more than ``LEAK_MARGIN`` descriptors over their start, after ``leak_wait``), they
    are restarted so the next sample does not inherit them, and the sample says how many
    (``leaked_fds``; the report counts the restarts)."""
    sample = _run(lab, client, group, s, number)
    if client.proxy_pids():
        left = lab.leftover_fds(client, s.leak_wait)
        if left > LEAK_MARGIN:
            sample["leaked_fds"] = left
            client.restarts += 1
            print(
                f"  {client.row.name} kept {left:,} descriptors after {group} (connections the "
                "load had closed): restarted",
                flush=True,
            )
            lab.restart_proxy(client)
    return sample


def _run(lab: BenchLab, client: Client, group: str, s: Settings, number: int) -> dict:
    if group == "newconn":
        return wrk_group(lab, client, s, number, close=True)
    if group == "keepalive":
        return wrk_group(lab, client, s, number, close=False)
    if group == "latency":
        return latency_group(lab, client, s, number)
    if group == "h2":
        return h2_group(lab, client, s, number)
    if group == "bulk":
        return bulk_group(lab, client, s, number)
    if group == "memory":
        return memory_group(lab, client, s, number)
    raise ValueError(f"unknown group {group}")
