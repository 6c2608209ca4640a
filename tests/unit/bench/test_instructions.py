"""bench/instructions.py's arithmetic: start-up cancels out, and callgrind's total is read."""

from __future__ import annotations

import pytest

from bench.instructions import per_request, total_instructions


def test_the_difference_of_two_runs_is_the_cost_of_a_request():
    start_up, cost = 900_000_000, 458_000
    first = (500, start_up + 500 * cost)
    second = (3500, start_up + 3500 * cost)
    assert per_request(first, second) == cost


def test_the_second_run_must_serve_more():
    with pytest.raises(ValueError, match="more requests"):
        per_request((500, 10), (500, 20))


def test_the_total_is_read_from_callgrinds_output(tmp_path):
    out = tmp_path / "callgrind.out"
    out.write_bytes(b"version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 2351319200\n")
    assert total_instructions(out) == 2_351_319_200
    out.write_bytes(b"events: Ir\n")
    with pytest.raises(RuntimeError, match="no instruction total"):
        total_instructions(out)
