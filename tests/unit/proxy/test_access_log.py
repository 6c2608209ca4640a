"""The access log writer: the same lines the logging module printed, one write per loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from detour_common.logs import JsonFormatter
from proxy.access_log import MAX_BUFFERED, AccessLog


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def logging_output(formatter: logging.Formatter, message: str) -> str:
    record = logging.LogRecord("detour.access", logging.INFO, "", 0, message, (), None)
    return formatter.format(record) + "\n"


def test_text_lines_are_what_the_logging_handler_printed():
    stream = CountingStream()
    log = AccessLog("text", "worker 1", stream)
    log.emit('[2026-11-26T10:00:00] "TCP outbound" - 1 2 3')
    expected = logging_output(
        logging.Formatter("detour-proxy[worker 1]: %(name)s: %(message)s"),
        '[2026-11-26T10:00:00] "TCP outbound" - 1 2 3',
    )
    assert stream.getvalue() == expected  # no loop running: written at once


def test_json_lines_carry_the_same_envelope_as_the_json_formatter():
    stream = CountingStream()
    AccessLog("json", "main", stream).emit('{"response_code": 200}')
    ours = json.loads(stream.getvalue())
    theirs = json.loads(logging_output(JsonFormatter(), '{"response_code": 200}'))
    assert ours.keys() == theirs.keys()
    assert {k: ours[k] for k in ("level", "logger", "msg")} == {
        k: theirs[k] for k in ("level", "logger", "msg")
    }
    assert ours["time"].endswith("Z") and len(ours["time"]) == len(theirs["time"])


def test_the_lines_of_one_loop_turn_go_out_in_one_write_after_it():
    stream = CountingStream()
    log = AccessLog("text", "main", stream)

    async def one_turn() -> str:
        for n in range(100):
            log.emit(f"line {n}")
        written_during_the_turn = stream.getvalue()
        await asyncio.sleep(0)  # the turn ends; the flush scheduled by the first line runs
        return written_during_the_turn

    assert asyncio.run(one_turn()) == ""
    lines = stream.getvalue().splitlines()
    assert lines == [f"detour-proxy[main]: detour.access: line {n}" for n in range(100)]
    assert stream.writes == 1


def test_a_burst_never_buffers_more_than_the_bound():
    stream = CountingStream()
    log = AccessLog("text", "main", stream)
    line = "x" * 1000

    async def burst() -> int:
        for _ in range(200):  # ~200 KB in one turn
            log.emit(line)
            assert log._size < MAX_BUFFERED
        return stream.writes

    writes_before_the_turn_ended = asyncio.run(burst())
    assert writes_before_the_turn_ended >= 200 * 1000 // MAX_BUFFERED
    assert stream.getvalue().count("\n") == 200


def test_a_closed_stream_loses_the_line_without_raising():
    stream = CountingStream()
    stream.close()
    AccessLog("text", "main", stream).emit("lost")  # as logging: no exception into the proxy
