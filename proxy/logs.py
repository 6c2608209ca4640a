"""The sidecar's own log lines: text (``detour-proxy[main]: ...``) or JSON on stderr.

One function for the supervisor and each worker process, so their lines look alike and only
the process name differs. The access log is not a logger: each process owns an
``access_log.AccessLog`` of its own (see there why).
"""

from __future__ import annotations

import logging
import sys

from detour_common.logs import JsonFormatter


def setup_logging(log_format: str, process: str = "main") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"detour-proxy[{process}]: %(name)s: %(message)s"))
    root = logging.getLogger("detour")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
