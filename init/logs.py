"""Logs for people (text, the default) or for container log collectors (one JSON per line)."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        return json.dumps(entry, ensure_ascii=False)


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
