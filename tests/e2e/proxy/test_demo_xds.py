"""``make demo DEMO=xds`` as a user runs it: the script's own output says the service moved."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.prereq import require_root_and_tools

REPO = Path(__file__).resolve().parents[3]


def test_the_xds_demo_shows_the_service_moving_from_node_1_to_node_2() -> None:
    require_root_and_tools()
    done = subprocess.run(
        [str(REPO / "scripts" / "demo.sh"), "xds"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    before, _, after = done.stdout.partition("version v2 (EDS)")
    answers = [line.rsplit("-> ", 1)[1] for line in before.splitlines() if "-> " in line]
    assert answers and set(answers) == {"web-a"}, before
    answers = [line.rsplit("-> ", 1)[1] for line in after.splitlines() if "-> " in line]
    assert set(answers) == {"web-b", "web-c"}, after
    assert "variant    delta" in after and "nacks      0" in after
