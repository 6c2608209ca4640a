"""Instructions per proxied request: Detour's own code counted by callgrind, not timed.

CPU time per request moves with whatever else the machine does; an instruction count does not
(the same build, inputs and environment count the same, within 0.2% here, with the other core
busy). So this is the measure to compare two versions of the data path by, when the question
is "did this change make a request cheaper in Python", before a full ``make bench`` says what
it is worth in CPU time beside the peers. It counts user-space instructions only: the system
calls' work in the kernel is not in it.

The row's sidecar runs under ``valgrind --tool=callgrind`` twice, serving N1 and then N2
keep-alive requests (h2load, 16 connections, 1 KiB answers); the difference of the two totals
over N2 - N1 is the cost of one request without the start-up. Slow (callgrind runs a
program some 50 times slower): about a minute per row.

    sudo .venv/bin/python bench/instructions.py                 # detour-http
    sudo .venv/bin/python bench/instructions.py --rows detour-http,detour-l4
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from bench import origin, scenarios  # noqa: E402
from bench.lab import BenchLab, Client  # noqa: E402
from bench.load import parse_h2load  # noqa: E402
from bench.peers import VenvPaths  # noqa: E402

DETOUR_ROWS = ("detour-l4", "detour-mesh", "detour-http")
_TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


def total_instructions(callgrind_out: Path) -> int:
    """The Ir total callgrind wrote when the process ended."""
    found = _TOTALS.search(callgrind_out.read_bytes())
    if found is None:
        raise RuntimeError(f"{callgrind_out} holds no instruction total")
    return int(found.group(1))


def per_request(first: tuple[int, int], second: tuple[int, int]) -> int:
    """Instructions per request from two (requests, total) runs: start-up cancels out."""
    (n1, total1), (n2, total2) = first, second
    if n2 <= n1:
        raise ValueError("the second run must serve more requests than the first")
    return round((total2 - total1) / (n2 - n1))


def count(lab: BenchLab, client: Client | None, row, index: int, requests: int) -> tuple:
    """Start the row's sidecar under callgrind, serve ``requests``, stop it: (client, total)."""
    workdir = lab.logdir / row.name
    workdir.mkdir(exist_ok=True)
    os.chown(workdir, row.uid, row.uid)
    out = workdir / f"callgrind-{requests}.out"
    lab.proxy_wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    if client is None:
        client = lab.add_row(row, index)
    else:
        lab.start_proxy(client)
    url = f"http://{client.target}:{origin.HTTP_PORT}/"
    argv = ["h2load", "--h1", "-t", "1", "-c", "16", "-n", str(requests), url]
    done = lab.run_load(client.pod, argv, timeout=1800)
    summary = parse_h2load(done.stdout)
    if summary.get("succeeded") != requests:
        raise RuntimeError(f"{row.name}: h2load did not get {requests} answers: {done.stdout}")
    lab.stop_proxy(client)
    return client, total_instructions(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="detour-http", help=f"comma list of {DETOUR_ROWS}")
    parser.add_argument("--requests", default="500,3500", help="N1,N2 (N2 > N1)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    wanted = args.rows.split(",")
    unknown = [name for name in wanted if name not in DETOUR_ROWS]
    if unknown:
        parser.error(f"--rows: {unknown} are not among {DETOUR_ROWS}")
    rows = [r for r in scenarios.ROWS if r.name in wanted]
    counts = args.requests.split(",")
    if len(counts) != 2 or not all(c.isdigit() for c in counts) or int(counts[1]) <= int(counts[0]):
        parser.error(f"--requests: {args.requests!r} is not N1,N2 with N2 > N1")
    n1, n2 = int(counts[0]), int(counts[1])
    logdir = Path(tempfile.mkdtemp(prefix="detour-instructions-"))
    logdir.chmod(0o755)
    lab = BenchLab(logdir, VenvPaths(REPO / "build" / "bench-venv"))
    lab.start_timeout, lab.stop_timeout = 300.0, 300.0
    try:
        lab.create()
        for index, row in enumerate(rows):
            client, first = count(lab, None, row, index, n1)
            _, second = count(lab, client, row, index, n2)
            cost = per_request((n1, first), (n2, second))
            print(f"{row.name}: {cost:,} instructions per request", flush=True)
    finally:
        lab.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
