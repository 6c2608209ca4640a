"""bench/newconn.py against a real HTTP server on loopback: a connection per request, and only
200s counted."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "newconn.py"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 200

    def do_GET(self) -> None:
        self.server.connections.add(self.client_address)  # type: ignore[attr-defined]
        body = b"hello"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    def serve(status: int):
        handler = type("Handler", (_Handler,), {"status": status})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.connections = set()
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return httpd

    started: list[http.server.ThreadingHTTPServer] = []
    yield serve
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def run(port: int, count: int) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), "127.0.0.1", str(port), str(count)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_every_request_comes_on_its_own_connection(server):
    httpd = server(200)
    done = run(httpd.server_address[1], 5)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"requests": 5, "ok": 5}
    assert len(httpd.connections) == 5  # five client ports: five connections


def test_answers_that_are_not_200_are_not_counted(server):
    httpd = server(503)
    done = run(httpd.server_address[1], 3)
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"requests": 3, "ok": 0}
