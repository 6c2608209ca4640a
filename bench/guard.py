"""The CPU regression guard: Detour's instructions per request, held to a committed budget.

CI runs it (``make bench-guard``). Each case of ``bench/instructions.py`` (L4 and HTTP/1.1,
keep-alive and a new connection per request, HTTP/2 streams) is counted under callgrind and
compared with ``bench/instruction_budget.json``: more than ``TOLERANCE`` over its budget fails
the run, naming the case. Instruction counts, not times: they repeat on a busy machine, so a
regression is not lost in noise and noise is not taken for one.

The budget only goes down: a change that makes a request cheaper lowers it in the same commit
(``--update`` writes what was measured), so the next regression is caught from the new level.

    sudo .venv/bin/python bench/guard.py               # count every case, judge, exit 1 if over
    sudo .venv/bin/python bench/guard.py --update      # ... and write the counts as the budget
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from bench.instructions import CASE_NAMES, CASES, measure_cases  # noqa: E402

BUDGET_FILE = REPO / "bench" / "instruction_budget.json"
TOLERANCE = 0.10  # what a count may exceed its budget by before the guard fails
ROOM = 0.80  # below this share of its budget, a case's budget is worth lowering


class BudgetError(ValueError):
    """The budget file is not what the guard needs (the message names the field)."""


@dataclass(frozen=True)
class Verdict:
    case: str
    measured: int
    budget: int

    @property
    def ratio(self) -> float:
        return self.measured / self.budget

    @property
    def over(self) -> bool:
        return self.measured > self.budget * (1 + TOLERANCE)

    @property
    def line(self) -> str:
        state = "OVER BUDGET" if self.over else "ok"
        if not self.over and self.ratio < ROOM:
            state = "ok, well under: lower the budget (--update)"
        return (
            f"{self.case:16} {self.measured:>9,} instructions/request, budget {self.budget:>9,}"
            f" ({self.ratio:.2f}x, limit {1 + TOLERANCE:.2f}x): {state}"
        )


def parse_budget(text: str) -> dict[str, int]:
    """The ``{"cases": {name: instructions}}`` of the budget file, every case there, each a
    positive integer; BudgetError naming the field otherwise."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BudgetError(f"not JSON: {exc}") from None
    cases = document.get("cases") if isinstance(document, dict) else None
    if not isinstance(cases, dict):
        raise BudgetError("cases: missing, or not a mapping of case name to instructions")
    for name, value in cases.items():
        if name not in CASE_NAMES:
            raise BudgetError(f"cases.{name}: not a case (known: {', '.join(CASE_NAMES)})")
        if type(value) is not int or value <= 0:
            raise BudgetError(f"cases.{name}: {value!r} is not a positive instruction count")
    missing = [name for name in CASE_NAMES if name not in cases]
    if missing:
        raise BudgetError(f"cases: no budget for {', '.join(missing)}")
    return dict(cases)


def judge(measured: dict[str, int], budget: dict[str, int]) -> list[Verdict]:
    """One verdict per measured case, in the budget's terms."""
    return [Verdict(name, count, budget[name]) for name, count in measured.items()]


def render_budget(measured: dict[str, int], note: str) -> str:
    return json.dumps({"note": note, "cases": measured}, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=Path, default=BUDGET_FILE)
    parser.add_argument("--update", action="store_true", help="write the counts as the budget")
    args = parser.parse_args(argv)
    try:
        budget = parse_budget(args.budget.read_text())
    except (OSError, BudgetError) as exc:
        if not args.update:
            parser.error(f"{args.budget}: {exc}")
        budget = {}
    measured = measure_cases(list(CASES))
    verdicts = judge(measured, budget) if budget else []
    for verdict in verdicts:
        print(f"bench-guard: {verdict.line}", flush=True)
    if args.update:
        note = (
            "User-space instructions per request (bench/instructions.py); bench/guard.py"
            f" fails above +{TOLERANCE:.0%}."
        )
        args.budget.write_text(render_budget(measured, note))
        print(f"bench-guard: wrote {args.budget}: {measured}")
        return 0
    over = [v.case for v in verdicts if v.over]
    if over:
        print(f"bench-guard: FAILED: {', '.join(over)} over budget by more than {TOLERANCE:.0%}")
        return 1
    print("bench-guard: every case within its budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
