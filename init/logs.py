"""Logs for people (text, the default) or for container log collectors (one JSON per line)."""

from __future__ import annotations

import logging
import sys

from detour_common.logs import JsonFormatter


def setup(log_format: str, stream=None) -> None:
    """Route the ``detour`` loggers to stderr in the chosen format; idempotent."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("detour-init: %(levelname)s: %(message)s"))
    root = logging.getLogger("detour")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
