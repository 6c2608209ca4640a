"""Envoy's own check of a rendered config (``envoy --mode validate``), for the bench's peers."""

from __future__ import annotations

import subprocess
from pathlib import Path


def envoy_validate(envoy: str, config: Path) -> None:
    """Assert that ``envoy`` accepts ``config``, with its complaint as the message."""
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
