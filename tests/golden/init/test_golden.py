"""Every named variant renders byte for byte as its golden file.

Regenerate after an intended change with: DETOUR_REGENERATE_GOLDEN=1 make test
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.variants import VARIANTS, with_explicit_ipv6

from init.cli import build_parser
from init.config import parse_config
from init.render import render_plan
from init.rules import build_rules

TESTDATA = Path(__file__).parent / "testdata"


def render_variant(args: list[str]) -> str:
    parsed = build_parser().parse_args(["render", *args])
    config = parse_config(vars(parsed), {})
    families = (4, 6) if config.ipv6 == "on" else (4,)
    return render_plan([build_rules(config, family) for family in families])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_render_matches_golden(name: str) -> None:
    rendered = render_variant(with_explicit_ipv6(VARIANTS[name]))
    golden = TESTDATA / f"{name}.golden"
    if os.environ.get("DETOUR_REGENERATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} is missing: run with DETOUR_REGENERATE_GOLDEN=1"
    assert rendered == golden.read_text()


def test_every_golden_file_has_a_variant() -> None:
    stale = {p.stem for p in TESTDATA.glob("*.golden")} - set(VARIANTS)
    assert not stale, f"golden files without a variant: {sorted(stale)}"
