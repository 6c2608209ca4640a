"""The access log's writer: one line per connection or request, to stderr, in batches.

Why not the ``logging`` module: a LogRecord, the handler's lock, the formatter and a write plus
flush per line were a fifth of the HTTP router's Python time per keep-alive request (py-spy).
Envoy buffers its access log and flushes it on a timer; here the lines of one event-loop turn
go out together in one write when that turn ends (``call_soon``), so a line is at most one
turn late and nothing waits in a buffer while the loop idles. A burst never holds more than
``MAX_BUFFERED`` characters: reaching it writes at once.

The lines look exactly as the ``detour.access`` logger printed them (the text prefix with the
process name, or the JSON envelope of ``--log-format json``), and they go through the same
``sys.stderr`` object as every other log line, so their order relative to those is kept.

Each process owns one ``AccessLog`` (the supervisor's for its in-process worker, each worker
process its own) and flushes it when it ends; there is no module-level sink.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Final, TextIO

LOGGER_NAME: Final = "detour.access"
MAX_BUFFERED: Final = 64 * 1024  # characters


def text_line(process: str, line: str) -> str:
    """As ``logging.Formatter("detour-proxy[%s]: %(name)s: %(message)s")`` prints it."""
    return f"detour-proxy[{process}]: {LOGGER_NAME}: {line}\n"


def json_line(line: str, now: float) -> str:
    """As init.logs.JsonFormatter prints an INFO record of the access logger."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    entry = {"time": stamp, "level": "info", "logger": LOGGER_NAME, "msg": line}
    return json.dumps(entry, ensure_ascii=False) + "\n"


class AccessLog:
    """Buffers formatted lines and writes them to ``stream`` once per event-loop turn."""

    def __init__(
        self, log_format: str = "text", process: str = "main", stream: TextIO | None = None
    ) -> None:
        self.json = log_format == "json"
        self.process = process
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False

    def emit(self, line: str) -> None:
        text = json_line(line, time.time()) if self.json else text_line(self.process, line)
        self._lines.append(text)
        self._size += len(text)
        if self._size >= MAX_BUFFERED:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running (start-up, shutdown, a test): write now
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        stream = self.stream or sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe, closed file): as logging, the line is lost
