"""The HTTP access log line: Envoy's default format (or its fields as JSON), one line whatever
the client sends in the logged headers."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from proxy.access_log import AccessLog
from proxy.config.model import Mesh
from proxy.http.events import Request
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.router import header_value
from proxy.series import Stats
from proxy.telemetry import Telemetry, log_text

PEER = ("fd00::30", 40000)  # the only thing the line takes from the connection
STARTED = time.mktime((2026, 11, 26, 10, 0, 0, 0, 0, 0)) - time.timezone + 0.25
HOSTILE_AGENT = b'evil" \x01 caf\xe9 \\'


def logged(capsys, log_format: str, headers: list[tuple[bytes, bytes]]) -> str:
    """What the worker prints for one finished GET with ``headers``."""
    request = Request(b"GET", b"/p?q=1", headers, b"1.1", True, False, None, None, False)
    authority = header_value(headers, b"host")  # as the codec adapters set it
    exchange = Exchange(request, STARTED, authority)
    exchange.status, exchange.request_bytes, exchange.response_bytes = 200, 12, 1024
    exchange.duration = 0.0031
    exchange.upstream_host = ("10.0.0.20", 8080)
    sink = AccessLog(log_format, "main")  # no loop running here: each line is written at once
    telemetry = Telemetry(Stats(), sink, Mesh(), log_format)
    sink.emit(telemetry.request_line(PEER, exchange, "-"))
    out = capsys.readouterr().err
    assert out.endswith("\n") and out.count("\n") == 1
    if log_format == "json":  # the message inside --log-format json's envelope
        return json.loads(out)["msg"]
    prefix = "detour-proxy[main]: detour.access: "
    assert out.startswith(prefix)
    return out[len(prefix) : -1]


HEADERS = [
    (b"host", b"backend:8080"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"user-agent", HOSTILE_AGENT),
    (b"x-forwarded-for", b"10.0.0.2"),
]


def test_the_text_line_is_envoys_default_format_with_values_escaped(capsys):
    assert logged(capsys, "text", HEADERS) == (
        '[2026-11-26T10:00:00.250Z] "GET /p?q=1 HTTP/1.1" 200 - 12 1024 3 - '
        '"10.0.0.1,10.0.0.2" "evil\\" \\x01 caf\\xe9 \\\\" "-" "backend:8080" "10.0.0.20:8080" '
        "- [fd00::30]:40000 -"
    )


def test_absent_fields_are_a_dash(capsys):
    line = logged(capsys, "text", [(b"host", b"backend")])
    assert ' - "-" "-" "-" "backend" ' in line


def test_the_json_line_carries_the_same_fields(capsys):
    entry = json.loads(logged(capsys, "json", HEADERS))
    assert entry == {
        "start_time": "2026-11-26T10:00:00.250Z",
        "method": "GET",
        "path": "/p?q=1",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "bytes_received": 12,
        "bytes_sent": 1024,
        "duration": 3,
        "upstream_service_time": None,
        "x_forwarded_for": "10.0.0.1,10.0.0.2",
        "user_agent": 'evil\\" \\x01 caf\\xe9 \\\\',
        "request_id": "-",
        "authority": "backend:8080",
        "upstream_host": "10.0.0.20:8080",
        "upstream_cluster": "-",
        "downstream_remote_address": "[fd00::30]:40000",
        "route_name": "-",
        "retries": 0,
    }


@given(st.binary(max_size=64))
def test_any_header_value_logs_as_printable_ascii_that_reads_back(value):
    text = log_text(value)
    assert text.isascii() and text.isprintable()
    assert text.replace('\\"', '"').encode("ascii").decode("unicode_escape") == value.decode(
        "latin-1"
    )
