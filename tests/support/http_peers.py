"""HTTP/1.1 peers for the L7 tests: Python's own http.server and http.client, stdlib only, so
they run as any uid with /usr/bin/python3 and nothing about them knows a mesh exists.

    http_peers.py serve PORT LABEL [--family 4|6]
        A keep-alive HTTP/1.1 server (http.server.ThreadingHTTPServer). Every answer is JSON:
        {"label", "method", "path", "headers", "body_bytes", "body_sha256", "connections",
        "peer"} (peer: the client address the server saw).
        Query parameters steer it, so one server plays every upstream a test needs:
          fail=R     answer 503 with probability R (a seeded RNG: the same run twice is the same)
          status=N   answer N
          status_of=LABEL:N  answer N if this server is LABEL (one URL, one failing endpoint)
          delay=S    sleep S seconds before answering
          pad=N      add N bytes of padding to the answer (a large response body)
        GET /__counts answers {"requests", "failures", "connections"} (how many 503s "fail"
        produced, and how many TCP connections the server accepted).
        A GET with "Upgrade: websocket" gets a real RFC 6455 handshake (101), then every text
        frame is echoed back upper-cased until the client closes.
    http_peers.py websocket URL MESSAGE...
        A WebSocket client (handshake + masked text frames, RFC 6455): sends each MESSAGE and
        prints the status line of the handshake and each echoed message.
    http_peers.py client URL COUNT [--header NAME:VALUE ...] [--new-connection] [--parallel N]
        COUNT GET requests with http.client on one keep-alive connection (a new one per request
        with --new-connection, or after the server closed it); prints one JSON line per
        request: {"status", "label"} (label null when the body is not the server's JSON).
        With --parallel N, N threads share the COUNT requests, each on its own connection.

Each server prints "ready" once bound.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = 0
        self.connections = 0
        self.rng = random.Random(1337)


def _handler(label: str, counts: _Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 64 * 1024  # one write per response (flushed after each request): no Nagle stall

        def setup(self) -> None:
            super().setup()
            with counts.lock:
                counts.connections += 1

        def do_GET(self) -> None:
            if self.headers.get("upgrade", "").lower() == "websocket":
                self._websocket()
                return
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        do_PUT = do_DELETE = do_HEAD = do_PATCH = do_POST

        def _websocket(self) -> None:
            key = self.headers["sec-websocket-key"]
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "Upgrade")
            self.send_header("sec-websocket-accept", _accept_key(key))
            self.end_headers()
            self.wfile.flush()
            while (message := _read_frame(self.rfile)) is not None:
                self.wfile.write(_frame(message.upper(), mask=False))
                self.wfile.flush()
            self.close_connection = True

        def _answer(self) -> None:
            body = self._read_body()
            query = parse_qs(urlsplit(self.path).query)
            if self.path == "/__counts":
                with counts.lock:
                    state = {
                        "requests": counts.requests,
                        "failures": counts.failures,
                        "connections": counts.connections,
                    }
                return self._send(200, state)
            status = int(query.get("status", ["200"])[0])
            for rule in query.get("status_of", []):
                who, _, code = rule.partition(":")
                if who == label:
                    status = int(code)
            with counts.lock:
                counts.requests += 1
                if "fail" in query and counts.rng.random() < float(query["fail"][0]):
                    counts.failures += 1
                    status = 503
                connections = counts.connections
            if "delay" in query:
                time.sleep(float(query["delay"][0]))
            self._send(
                status,
                {
                    "label": label,
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body_bytes": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "connections": connections,
                    "peer": self.client_address[0],
                    **({"pad": "x" * int(query["pad"][0])} if "pad" in query else {}),
                },
            )

        def _read_body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def _frame(payload: bytes, mask: bool) -> bytes:
    """One final text frame (payloads under 126 bytes are all the tests send)."""
    assert len(payload) < 126
    if not mask:
        return bytes([0x81, len(payload)]) + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


def _read_frame(stream) -> bytes | None:
    """The payload of the next frame, or None at a close frame or EOF."""
    head = stream.read(2)
    if len(head) < 2 or head[0] & 0x0F == 0x8:
        return None
    length = head[1] & 0x7F
    key = stream.read(4) if head[1] & 0x80 else bytes(4)
    payload = stream.read(length)
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def websocket(url: str, messages: list[str]) -> None:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    stream = sock.makefile("rb")
    status = stream.readline().decode().strip()
    accept = None
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "sec-websocket-accept":
            accept = value.strip()
    print(status, "accept-ok" if accept == _accept_key(key) else "accept-bad", flush=True)
    for message in messages:
        sock.sendall(_frame(message.encode(), mask=True))
        print((_read_frame(stream) or b"<closed>").decode(), flush=True)
    sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # a masked close frame
    sock.close()


def serve(port: int, label: str, family: int) -> None:
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if family == 6 else socket.AF_INET
        daemon_threads = True
        request_queue_size = 1024  # the listen backlog: the default 5 drops bursts of SYNs

    server = Server(("::" if family == 6 else "0.0.0.0", port), _handler(label, _Counts()))
    print("ready", flush=True)
    server.serve_forever()


def client(url: str, count: int, headers: dict[str, str], new_connection: bool) -> None:
    """One thread's share of the requests, printed as JSON lines."""
    for line in _requests(url, count, headers, new_connection):
        print(line, flush=True)


def parallel(url: str, count: int, headers: dict[str, str], threads: int) -> None:
    lines: list[str] = []
    shares = [count // threads + (i < count % threads) for i in range(threads)]
    workers = [
        threading.Thread(target=lambda n=n: lines.extend(_requests(url, n, headers, False)))
        for n in shares
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("\n".join(lines), flush=True)


def _requests(url: str, count: int, headers: dict[str, str], new_connection: bool) -> list[str]:
    lines = []
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "") or "/"
    connection = None
    for _ in range(count):
        if connection is None or new_connection:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            lines.append(json.dumps({"status": 0, "label": None, "error": type(exc).__name__}))
            connection.close()
            connection = None
            continue
        try:
            label = json.loads(body).get("label")
        except ValueError:
            label = None
        lines.append(json.dumps({"status": response.status, "label": label}))
        if response.will_close:
            connection.close()
            connection = None
    return lines


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        family = int(argv[argv.index("--family") + 1]) if "--family" in argv else 4
        serve(int(argv[1]), argv[2], family)
    elif argv[0] == "websocket":
        websocket(argv[1], argv[2:])
    elif argv[0] == "client":
        headers = {}
        for index, arg in enumerate(argv):
            if arg == "--header":
                name, _, value = argv[index + 1].partition(":")
                headers[name] = value
        if "--parallel" in argv:
            parallel(argv[1], int(argv[2]), headers, int(argv[argv.index("--parallel") + 1]))
        else:
            client(argv[1], int(argv[2]), headers, "--new-connection" in argv)
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
