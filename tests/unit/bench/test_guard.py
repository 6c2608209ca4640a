"""bench/guard.py's rules: the budget file is read strictly, a case over budget by more than
10% fails the guard, and bench/instructions.py's cases and loads are what the guard counts."""

from __future__ import annotations

import json

import pytest

from bench import guard
from bench.guard import BudgetError, judge, parse_budget, render_budget
from bench.instructions import CASE_NAMES, CASES, answered, load_argv, select_cases

FULL = {name: 100_000 for name in CASE_NAMES}


def test_the_committed_budget_names_every_case_with_a_count():
    budget = parse_budget(guard.BUDGET_FILE.read_text())
    assert set(budget) == set(CASE_NAMES)
    assert all(value > 0 for value in budget.values())


def test_a_count_up_to_ten_percent_over_passes_and_beyond_it_fails():
    budget = {"http1-keepalive": 400_000}
    within, beyond = (
        judge({"http1-keepalive": 440_000}, budget)[0],
        judge({"http1-keepalive": 440_001}, budget)[0],
    )
    assert not within.over and within.line.endswith("ok")
    assert beyond.over and "OVER BUDGET" in beyond.line


def test_a_count_far_under_its_budget_says_to_lower_it():
    verdict = judge({"http2": 700_000}, {"http2": 1_000_000})[0]
    assert not verdict.over
    assert "lower the budget" in verdict.line


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("[", "not JSON"),
        ("{}", "cases: missing"),
        (json.dumps({"cases": {**FULL, "http3": 5}}), "cases.http3: not a case"),
        (json.dumps({"cases": {**FULL, "http2": 0}}), "cases.http2: 0 is not"),
        (json.dumps({"cases": {**FULL, "http2": "9k"}}), "cases.http2: '9k' is not"),
        (json.dumps({"cases": {**FULL, "l4-newconn": 1.5}}), "cases.l4-newconn: 1.5"),
        (json.dumps({"cases": {"http2": 5}}), "cases: no budget for l4-keepalive"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_field(document, field):
    with pytest.raises(BudgetError, match=field):
        parse_budget(document)


def test_an_updated_budget_reads_back_as_written():
    assert parse_budget(render_budget(FULL, "note")) == FULL


def test_each_load_drives_its_client(tmp_path):
    keepalive = load_argv("keepalive", "10.0.0.9", 8080, 3500)
    assert keepalive[:2] == ["h2load", "--h1"] and "3500" in keepalive
    assert keepalive[-1] == "http://10.0.0.9:8080/"
    h2 = load_argv("h2", "10.0.0.9", 8080, 3500)
    assert "--h1" not in h2 and h2[h2.index("-m") + 1] == "100"
    newconn = load_argv("newconn", "10.0.0.9", 8080, 350)
    assert newconn[1].endswith("bench/newconn.py") and newconn[2:] == ["10.0.0.9", "8080", "350"]


def test_answers_are_read_from_each_clients_output():
    assert answered("newconn", 'noise\n{"requests": 350, "ok": 349}\n') == 349
    h2load = (
        "finished in 1.00s, 3500.00 req/s, 3.6MB/s\n"
        "requests: 3500 total, 3500 started, 3500 done, 3500 succeeded, 0 failed, 0 errored,"
        " 0 timeout\n"
        "status codes: 3500 2xx, 0 3xx, 0 4xx, 0 5xx\n"
    )
    assert answered("keepalive", h2load) == 3500


def test_cases_are_selected_by_name_in_their_order():
    assert [c.name for c in select_cases("http2,l4-keepalive")] == ["l4-keepalive", "http2"]
    with pytest.raises(ValueError, match="http3"):
        select_cases("http3")
    assert all(case.requests[1] > case.requests[0] for case in CASES)
