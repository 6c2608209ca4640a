"""Instructions per proxied request: Detour's own code counted by callgrind, not timed.

CPU time per request moves with whatever else the machine does; an instruction count does not
(the same build, inputs and environment count the same, within 0.2% here, with the other core
busy). So this is the measure to compare two versions of the data path by, when the question
is "did this change make a request cheaper in Python", before a full ``make bench`` says what
it is worth in CPU time beside the peers; and what ``bench/guard.py`` holds to a budget in CI.
It counts user-space instructions only: the system calls' work in the kernel is not in it.

A case is a row and a load (``CASES``). Its sidecar runs under ``valgrind --tool=callgrind``
twice, serving N1 and then N2 requests; the difference of the two totals over N2 - N1 is the
cost of one request without the start-up. The loads:

* ``keepalive``: h2load over HTTP/1.1, 16 connections kept open, 1 KiB answers;
* ``newconn``: ``bench/newconn.py``, one connection per request, one at a time (accept,
  original destination, route, upstream, close: every time);
* ``h2``: h2load over HTTP/2 cleartext, one connection, 100 concurrent streams.

Slow (callgrind runs a program some 50 times slower): 15-40 s per case.

    sudo .venv/bin/python bench/instructions.py                      # every case
    sudo .venv/bin/python bench/instructions.py --cases http1-keepalive,l4-keepalive
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from bench import origin, scenarios  # noqa: E402
from bench.lab import SYSTEM_PYTHON, BenchLab, Client  # noqa: E402
from bench.load import parse_h2load  # noqa: E402
from bench.peers import VenvPaths  # noqa: E402

NEWCONN_SCRIPT = str(Path(__file__).resolve().parent / "newconn.py")
_TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)

Load = Literal["keepalive", "newconn", "h2"]


@dataclass(frozen=True)
class Case:
    """What one count measures: a row's sidecar under one load, N1 then N2 requests."""

    name: str
    row: str
    load: Load
    requests: tuple[int, int]


CASES = (
    Case("l4-keepalive", "detour-l4", "keepalive", (500, 3500)),
    Case("l4-newconn", "detour-l4", "newconn", (50, 350)),
    Case("http1-keepalive", "detour-http", "keepalive", (500, 3500)),
    Case("http1-newconn", "detour-http", "newconn", (50, 350)),
    Case("http2", "detour-http", "h2", (500, 3500)),
)
CASE_NAMES = tuple(case.name for case in CASES)


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


def load_argv(load: Load, host: str, port: int, requests: int) -> list[str]:
    """The client's command for ``requests`` requests of ``load`` to ``host:port``."""
    if load == "newconn":
        return [SYSTEM_PYTHON, NEWCONN_SCRIPT, host, str(port), str(requests)]
    url = f"http://{host}:{port}/"
    if load == "h2":
        return ["h2load", "-t", "1", "-c", "1", "-m", "100", "-n", str(requests), url]
    return ["h2load", "--h1", "-t", "1", "-c", "16", "-n", str(requests), url]


def answered(load: Load, stdout: str) -> int:
    """How many requests the client saw succeed."""
    if load == "newconn":
        return int(json.loads(stdout.strip().splitlines()[-1])["ok"])
    return int(parse_h2load(stdout).get("succeeded") or 0)


def count(lab: BenchLab, client: Client | None, row, index: int, case: Case, requests: int):
    """Start the row's sidecar under callgrind, serve ``requests``, stop it: (client, total)."""
    workdir = lab.logdir / row.name
    workdir.mkdir(exist_ok=True)
    os.chown(workdir, row.uid, row.uid)
    out = workdir / f"callgrind-{case.name}-{requests}.out"
    # A fixed hash seed: the same dict and set layouts on every run, so the same work.
    lab.proxy_wrapper = (
        "env",
        "PYTHONHASHSEED=0",
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
    )
    if client is None:
        client = lab.add_row(row, index)
    else:
        lab.start_proxy(client)
    argv = load_argv(case.load, client.target, origin.HTTP_PORT, requests)
    done = lab.run_load(client.pod, argv, timeout=1800)
    if answered(case.load, done.stdout) != requests:
        raise RuntimeError(
            f"{case.name}: the client did not get {requests} answers: {done.stdout[-2000:]}"
            f"{done.stderr[-1000:]}"
        )
    lab.stop_proxy(client)
    return client, total_instructions(out)


def measure_cases(
    cases: list[Case], report: Callable[[Case, int], None] = lambda case, cost: None
) -> dict[str, int]:
    """Instructions per request of each case, in one lab (one client pod per row)."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    logdir = Path(tempfile.mkdtemp(prefix="detour-instructions-"))
    logdir.chmod(0o755)
    lab = BenchLab(logdir, VenvPaths(REPO / "build" / "bench-venv"))
    lab.start_timeout, lab.stop_timeout = 300.0, 300.0
    rows = {row.name: row for row in scenarios.ROWS}
    clients: dict[str, Client] = {}
    results: dict[str, int] = {}
    try:
        lab.create()
        for case in cases:
            row = rows[case.row]
            index = list(rows).index(case.row)
            n1, n2 = case.requests
            client, first = count(lab, clients.get(row.name), row, index, case, n1)
            clients[row.name] = client
            _, second = count(lab, client, row, index, case, n2)
            results[case.name] = per_request((n1, first), (n2, second))
            report(case, results[case.name])
    finally:
        lab.destroy()
    return results


def select_cases(spec: str) -> list[Case]:
    """The cases a comma list names (in ``CASES`` order); ValueError naming the unknown."""
    wanted = [name for name in spec.split(",") if name]
    unknown = [name for name in wanted if name not in CASE_NAMES]
    if unknown or not wanted:
        raise ValueError(f"--cases: {unknown or spec!r} not among {', '.join(CASE_NAMES)}")
    return [case for case in CASES if case.name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASE_NAMES), help="comma list of cases")
    args = parser.parse_args(argv)
    try:
        cases = select_cases(args.cases)
    except ValueError as exc:
        parser.error(str(exc))

    def report(case: Case, cost: int) -> None:
        print(f"{case.name} ({case.row}, {case.load}): {cost:,} instructions per request")

    measure_cases(cases, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
