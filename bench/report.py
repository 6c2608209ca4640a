"""From samples to what a reader sees: per row and metric the median and range over passes,
ratios against direct and against Envoy of the same layer (from the same run), the JSON
document, and the Markdown tables. Pure functions of the samples and the run's metadata.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.scenarios import BY_NAME, envoy_reference

FOREIGN_LIMIT = 0.15  # cores used outside the lab during a sample: the sample is marked
STEAL_LIMIT = 0.3  # cores the hypervisor took during a sample: marked too


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    lower_is_better: bool
    digits: int = 0


# The headline table: one column per question a user asks when picking a sidecar.
HEADLINE: tuple[Column, ...] = (
    Column("keepalive_cpu_us", "CPU µs/req (keep-alive)", True, 1),
    Column("lat_c16_p50_ms", "p50 ms @1000rps c16", True, 3),
    Column("lat_c16_p99_ms", "p99 ms @1000rps c16", True, 3),
    Column("lat_c16_vcpu_per_krps", "vCPU per 1000 rps", True, 3),
    Column("newconn_rps", "new conn/s", False),
    Column("keepalive_rps", "keep-alive req/s", False),
    Column("upload_mibps", "upload MiB/s", False),
    Column("download_mibps", "download MiB/s", False),
    Column("rss_idle_kb", "RSS idle KiB", True),
    Column("kb_per_conn", "KiB per idle conn", True, 1),
)
RATIO_KEYS = ("keepalive_cpu_us", "lat_c16_p99_ms", "newconn_rps", "upload_mibps", "kb_per_conn")


@dataclass(frozen=True)
class Target:
    """One of issue 16's targets: ``row``'s median of ``key`` against ``reference``'s."""

    what: str
    row: str
    reference: str
    key: str
    limit: float
    at_most: bool  # ratio <= limit (a cost); else ratio >= limit (a rate)


# Mesh mTLS (issue 16): CPU per request of the HTTP pair, both proxies, keep-alive; new mTLS
# connections per second of the opaque TCP pair (there each client connection is one mTLS
# handshake; the HTTP pair pools its upstream connections, so its new connections are not).
TARGETS: tuple[Target, ...] = (
    Target("CPU/request (keep-alive, both proxies)", "detour-mtls", "envoy-mtls",
           "keepalive_cpu_us", 1.3, True),
    Target("new mTLS connections/s (handshakes)", "detour-mtls-tcp", "envoy-mtls-tcp",
           "newconn_rps", 0.7, False),
)  # fmt: skip
MTLS_ROWS = ("detour-mtls", "envoy-mtls", "detour-mtls-tcp", "envoy-mtls-tcp")


def stat(values: Iterable[float | None]) -> dict | None:
    """Median and range of the passes that produced a number (None when none did)."""
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(got)}


def summarize(samples: list[dict]) -> dict[str, dict[str, dict | None]]:
    """{row: {metric key: stat}} over every pass of every group."""
    by_row: dict[str, dict[str, list]] = {}
    for sample in samples:
        keys = by_row.setdefault(sample["row"], {})
        for key, value in sample["values"].items():
            keys.setdefault(key, []).append(value)
    return {row: {key: stat(vals) for key, vals in keys.items()} for row, keys in by_row.items()}


def median(summary: dict, row: str, key: str) -> float | None:
    cell = summary.get(row, {}).get(key)
    return cell["median"] if cell else None


def ratio(summary: dict, row: str, base: str | None, key: str) -> float | None:
    """median(row) / median(base) for one metric, None when either is missing or zero."""
    if base is None:
        return None
    top, bottom = median(summary, row, key), median(summary, base, key)
    if top is None or not bottom:
        return None
    return top / bottom


def added_latency(summary: dict, row: str, key: str) -> float | None:
    """What the proxy adds to a latency percentile: row minus direct, in ms."""
    top, base = median(summary, row, key), median(summary, "direct", key)
    return top - base if top is not None and base is not None else None


def capture_ratio(summary: dict, key: str = "lat_c16_p99_ms") -> float | None:
    """eBPF capture against iptables capture, same proxy in the same mode: the ratio of the
    latency each adds over direct (the issue's target is <= 0.8)."""
    ebpf = added_latency(summary, "detour-ebpf", key)
    iptables = added_latency(summary, "detour-l4", key)
    if ebpf is None or not iptables:
        return None
    return ebpf / iptables


def ratios(summary: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """{row: {key: {"vs_direct": r, "vs_envoy": r}}} for the ratio keys."""
    out: dict[str, dict] = {}
    for row in summary:
        ref = envoy_reference(BY_NAME[row]) if row in BY_NAME else None
        out[row] = {
            key: {
                "vs_direct": ratio(summary, row, "direct", key),
                "vs_envoy": ratio(summary, row, ref, key),
            }
            for key in RATIO_KEYS
        }
    return out


def targets(summary: dict) -> list[dict]:
    """Each target with a number on both sides: the ratio, the limit, met or not, and by how
    much the ratio misses (ratio / limit for a cost, limit / ratio for a rate: the factor
    the row is off by)."""
    out = []
    for t in TARGETS:
        value = ratio(summary, t.row, t.reference, t.key)
        if value is None:
            continue
        met = value <= t.limit if t.at_most else value >= t.limit
        miss = value / t.limit if t.at_most else t.limit / value
        out.append({
            "what": t.what, "row": t.row, "reference": t.reference, "key": t.key,
            "ratio": value, "limit": t.limit, "at_most": t.at_most, "met": met,
            "miss": None if met else miss,
        })  # fmt: skip
    return out


def _mtls_table(summary: dict, rows: list[str]) -> list[str]:
    """The mesh mTLS pairs: both proxies' CPU per request (client + server), p99 at the fixed
    rate, new connections/s with the handshakes each cost, memory; then issue 16's targets."""
    ran = [row for row in rows if row in MTLS_ROWS]
    if not ran:
        return []
    lines = [
        "",
        "Mesh mTLS pairs: client → client proxy → mTLS (TLS 1.3, ECDSA P-256, sessions resumed "
        "as each proxy does by default) "
        "→ server proxy → nginx. CPU and RSS are both proxies' together (client + server). "
        "Handshakes per conn: mTLS handshakes the server proxy terminated per client "
        "connection in the new-connections load (1: each is a handshake; ~0: pooled); "
        "resumed: the share of those handshakes that resumed a session.",
        "",
        "| pair | CPU µs/req keep-alive (client + server) | vs Envoy | p99 ms @1000rps c16 "
        "| vs Envoy | new conn/s | vs Envoy | handshakes per conn | resumed "
        "| CPU µs per new conn "
        "| RSS idle KiB | KiB per idle conn |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ran:
        ref = envoy_reference(BY_NAME[row])
        cpu = fmt(median(summary, row, "keepalive_cpu_us"), 1)
        client = median(summary, row, "keepalive_cpu_client_us")
        server = median(summary, row, "keepalive_cpu_server_us")
        if client is not None and server is not None:
            cpu += f" ({fmt(client, 1)} + {fmt(server, 1)})"
        cells = [
            cpu,
            _ratio_text(ratio(summary, row, ref, "keepalive_cpu_us")),
            fmt(median(summary, row, "lat_c16_p99_ms"), 3),
            _ratio_text(ratio(summary, row, ref, "lat_c16_p99_ms")),
            fmt(median(summary, row, "newconn_rps")),
            _ratio_text(ratio(summary, row, ref, "newconn_rps")),
            fmt(median(summary, row, "newconn_handshakes_per_req"), 2),
            fmt(median(summary, row, "newconn_resumed_share"), 2),
            fmt(median(summary, row, "newconn_cpu_us"), 1),
            fmt(median(summary, row, "rss_idle_kb")),
            fmt(median(summary, row, "kb_per_conn"), 1),
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for row in ran:
        each = median(summary, row, "newconn_handshakes_per_req")
        if BY_NAME[row].mtls == "tcp" and each is not None and each < 0.95:
            lines += [
                "",
                f"**{row}: only {each:.2f} mTLS handshakes per new connection were counted; "
                "its new conn/s is not a handshake rate.**",
            ]
    for t in targets(summary):
        sign = "≤" if t["at_most"] else "≥"
        if t["met"]:
            verdict = "met"
        elif t["at_most"]:  # a cost: how much of it would have to go
            verdict = f"missed: {t['row']} needs {1 - 1 / t['miss']:.0%} less"
        else:  # a rate: how many times it would have to grow
            verdict = f"missed: {t['row']} needs {t['miss']:.2f} times its rate"
        lines += [
            "",
            f"Target, {t['what']}: {t['row']} / {t['reference']} = {t['ratio']:.2f} "
            f"(target {sign} {t['limit']:.2f}): **{verdict}**.",
        ]
    return lines


def disturbed(samples: list[dict]) -> list[str]:
    """Samples the machine disturbed: other work outside the lab, or hypervisor steal."""
    marks = []
    for s in samples:
        noise = s.get("noise") or {}
        if (
            noise.get("foreign_cores", 0) > FOREIGN_LIMIT
            or noise.get("steal_cores", 0) > STEAL_LIMIT
        ):
            marks.append(
                f"{s['group']} {s['row']} pass {s['pass']} (outside {noise['foreign_cores']:.2f}, "
                f"steal {noise['steal_cores']:.2f} cores)"
            )
    return marks


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(summary: dict, row: str, column: Column) -> str:
    got = summary.get(row, {}).get(column.key)
    if not got:
        return "-"
    text = fmt(got["median"], column.digits)
    if got["n"] > 1 and got["min"] != got["max"]:
        text += f" ({fmt(got['min'], column.digits)}-{fmt(got['max'], column.digits)})"
    return text


def _ratio_text(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def markdown(summary: dict, meta: dict, samples: list[dict]) -> str:
    rows = [r for r in meta["rows"] if r in summary]
    lines = [f"# Detour benchmark, {meta['started']}", ""]
    lines.append(
        f"{meta['passes']} interleaved pass(es); median (min-max). Machine: {meta['cpu_model']}, "
        f"{meta['cpus']} vCPU, kernel {meta['kernel']}; loadavg at start "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_end'])}."
    )
    if meta.get("busy"):
        lines += ["", "**Marked: the machine was busy at start (loadavg above the limit).**"]
    lines += ["", "| proxy | " + " | ".join(c.title for c in HEADLINE) + " |"]
    lines.append("|---|" + "---:|" * len(HEADLINE))
    for row in rows:
        label = BY_NAME[row].label if row in BY_NAME else row
        lines.append(f"| {label} | " + " | ".join(cell(summary, row, c) for c in HEADLINE) + " |")
    for row, reason in meta.get("skipped", {}).items():
        label = BY_NAME[row].label if row in BY_NAME else row
        lines.append(f"| {label} | skipped: {reason} |" + " |" * (len(HEADLINE) - 1))
    lines += ["", "Ratios of medians (same run): vs direct / vs Envoy of the same layer.", ""]
    lines.append("| proxy | " + " | ".join(RATIO_KEYS) + " | added p99 ms @1000rps c16 |")
    lines.append("|---|" + "---:|" * (len(RATIO_KEYS) + 1))
    table = ratios(summary)
    for row in rows:
        if row == "direct":
            continue
        cells = [
            f"{_ratio_text(table[row][k]['vs_direct'])} / {_ratio_text(table[row][k]['vs_envoy'])}"
            for k in RATIO_KEYS
        ]
        added = fmt(added_latency(summary, row, "lat_c16_p99_ms"), 3)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {added} |")
    lines += [
        "",
        "Latency at a fixed 1000 requests/s (h2load --h1), ms: p50 / p90 / p99 / p99.9",
        "",
    ]
    conns = meta["settings"]["latency_connections"]
    lines.append("| proxy | " + " | ".join(f"c={c}" for c in conns) + " |")
    lines.append("|---|" + "---:|" * len(conns))
    for row in rows:
        cells = []
        for c in conns:
            parts = [median(summary, row, f"lat_c{c}_p{q}_ms") for q in ("50", "90", "99", "99.9")]
            cells.append(" / ".join(fmt(p, 3) for p in parts))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += _mtls_table(summary, rows)
    lines += _h2_table(summary, rows, meta["settings"].get("h2_streams"))
    steps = meta["settings"]["hold_steps"]
    lines += [
        "",
        f"Memory: RSS (KiB, all processes; an mTLS pair's two proxies together) idle, with "
        f"{steps[0]:,} and {steps[-1]:,} idle keep-alive connections; bulk: 256 MiB wall time "
        "(s) is in the JSON.",
        "",
    ]
    lines.append("| proxy | idle | " + " | ".join(f"{n:,} conns" for n in steps) + " | KiB/conn |")
    lines.append("|---|---:|" + "---:|" * len(steps) + "---:|")
    for row in rows:
        if median(summary, row, "rss_idle_kb") is None:
            continue
        cells = [fmt(median(summary, row, k)) for k in ("rss_idle_kb", "rss_few_kb", "rss_many_kb")]
        cells.append(fmt(median(summary, row, "kb_per_conn"), 2))
        lines.append(f"| {row} | " + " | ".join(cells[: 1 + len(steps)] + cells[-1:]) + " |")
    kept = leaks(samples)
    if kept:
        lines += [
            "",
            "Proxies that kept connections a load had closed (descriptors over their start, "
            "3 s after the load), restarted before the next sample: " + kept + ".",
        ]
    errors = _errors(samples)
    if errors:
        lines += ["", "Errors (socket errors, non-2xx, failed transfers) / attempts: " + errors]
    marks = disturbed(samples)
    if marks:
        per_group: dict[str, int] = {}
        for mark in marks:
            per_group[mark.split()[0]] = per_group.get(mark.split()[0], 0) + 1
        outside = [s["noise"]["foreign_cores"] for s in samples if s.get("noise")]
        lines += [
            "",
            f"Disturbed samples: {len(marks)} of {len(samples)} ("
            + ", ".join(f"{group} {n}" for group, n in per_group.items())
            + f"); median CPU used outside the lab during a sample "
            f"{statistics.median(outside):.2f} cores. Each one is listed in the JSON "
            "(samples[].noise).",
        ]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())]
    return "\n".join(lines) + "\n"


def _h2_table(summary: dict, rows: list[str], streams: int | None) -> list[str]:
    """HTTP/2 cleartext from the client: requests/s and the proxy's CPU per request, for the
    rows that ran the h2 group (direct and the L7 proxies that take HTTP/2)."""
    ran = [row for row in rows if median(summary, row, "h2_rps") is not None]
    if not ran:
        return []
    lines = [
        "",
        f"HTTP/2 cleartext, one connection, {streams} streams in flight (h2load -m{streams}); "
        "the proxies answer from the origin's HTTP/1.1 port, direct from its HTTP/2 port.",
        "",
        "| proxy | req/s | vs direct | CPU µs/req | vs Envoy |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in ran:
        rps, cpu = median(summary, row, "h2_rps"), median(summary, row, "h2_cpu_us")
        vs_direct = ratio(summary, row, "direct", "h2_rps")
        vs_envoy = ratio(summary, row, "envoy-http", "h2_cpu_us")
        lines.append(
            f"| {row} | {fmt(rps)} | {_ratio_text(vs_direct)} | {fmt(cpu, 1)} "
            f"| {_ratio_text(vs_envoy)} |"
        )
    return lines


def leaks(samples: list[dict]) -> str:
    """Per row and group: how many samples ended with the proxies holding connections the
    load had closed, and the most descriptors held."""
    found: dict[tuple[str, str], list[int]] = {}
    for s in samples:
        if s.get("leaked_fds"):
            found.setdefault((s["row"], s["group"]), []).append(s["leaked_fds"])
    return "; ".join(
        f"{row} {group} in {len(held)} pass(es) (up to {max(held):,})"
        for (row, group), held in found.items()
    )


def _errors(samples: list[dict]) -> str:
    totals: dict[tuple[str, str], list[int]] = {}
    for s in samples:
        got = totals.setdefault((s["row"], s["group"]), [0, 0])
        got[0] += s.get("errors", 0)
        got[1] += s.get("attempts", 0)
    bad = [f"{row} {group} {e}/{a}" for (row, group), (e, a) in totals.items() if e]
    return "; ".join(bad)


def main(argv: list[str]) -> int:
    """Re-render a result's Markdown from its JSON: ``python -m bench.report RESULT.json``."""
    path = Path(argv[0])
    doc = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(doc["summary"], doc["meta"], doc["samples"]))
    return 0


def missing_numbers(samples: list[dict], expected: dict[str, tuple[str, ...]]) -> list[str]:
    """(row, group) pairs that ran but produced no number at all: a harness failure, which
    ``bench-quick`` exits non-zero for. ``expected`` maps a row to its groups."""
    seen: dict[tuple[str, str], bool] = {}
    for s in samples:
        key = (s["row"], s["group"])
        seen[key] = seen.get(key, False) or any(v is not None for v in s["values"].values())
    return [
        f"{row} {group}"
        for row, groups in expected.items()
        for group in groups
        if not seen.get((row, group), False)
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
