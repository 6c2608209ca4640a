"""The PNG: latency percentiles at 1000 rps (16 connections) and CPU per request, per proxy.
Run by the benchmark environment's Python (matplotlib lives there, not in the product's venv):

    build/bench-venv/bin/python -m bench.chart RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PERCENTILES = ("50", "90", "99", "99.9")


def _median(summary: dict, row: str, key: str) -> float | None:
    got = summary.get(row, {}).get(key)
    return got["median"] if got else None


def draw(doc: dict, out: str) -> None:
    summary, rows = doc["summary"], [r for r in doc["meta"]["rows"] if r in doc["summary"]]
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(PERCENTILES)
    for i, q in enumerate(PERCENTILES):
        heights = [_median(summary, r, f"lat_c16_p{q}_ms") or 0 for r in rows]
        lat.bar([x + i * width for x in range(len(rows))], heights, width, label=f"p{q}")
    lat.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], rows, rotation=35, ha="right")
    if any(_median(summary, r, "lat_c16_p50_ms") for r in rows):
        lat.set_yscale("log")
    lat.set_ylabel("ms (log scale)")
    lat.set_title("latency at 1000 req/s, 16 connections, 1 KiB answers (h2load --h1)")
    lat.legend()
    proxied = [r for r in rows if _median(summary, r, "keepalive_cpu_us") is not None]
    medians = [_median(summary, r, "keepalive_cpu_us") for r in proxied]
    lows = [
        m - summary[r]["keepalive_cpu_us"]["min"] for r, m in zip(proxied, medians, strict=True)
    ]
    highs = [
        summary[r]["keepalive_cpu_us"]["max"] - m for r, m in zip(proxied, medians, strict=True)
    ]
    cpu.barh(proxied, medians, xerr=[lows, highs], color="tab:orange")
    cpu.invert_yaxis()
    if medians:
        cpu.set_xscale("log")
    cpu.set_xlabel("proxy CPU µs per request (keep-alive saturation; log scale)")
    cpu.set_title("CPU per request (median, bars: range)")
    for y, value in enumerate(medians):
        cpu.annotate(
            f"{value:.1f}", (value, y), xytext=(4, 0), textcoords="offset points", va="center"
        )
    meta = doc["meta"]
    fig.suptitle(
        f"Detour vs peers — {meta['started']} — {meta['cpu_model']}, "
        f"{meta['passes']} pass(es), loadavg at start {meta['loadavg_start'][0]:.2f}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as source:
        draw(json.load(source), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
