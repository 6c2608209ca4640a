"""h2 is loaded by the first HTTP/2 connection, not by the sidecar's start (idle memory)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import proxy.cli, proxy.sidecar, proxy.workers
before = sorted(m for m in sys.modules if m.split(".")[0] in {"h2", "hpack", "hyperframe"})
import proxy.http2.server
after = "h2.connection" in sys.modules
print(before, after)
"""


def test_starting_a_sidecar_does_not_import_h2_and_http2_does():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["[]", "True"], done.stdout + done.stderr
