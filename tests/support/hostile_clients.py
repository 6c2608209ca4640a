"""Clients for the reliability suite, stdlib only so they run in a pod as any uid with
/usr/bin/python3. Each prints one JSON object with what it saw.

    hostile_clients.py burst HOST PORT COUNT CONCURRENCY
        COUNT TCP connections (CONCURRENCY at a time), each sends a line, reads it echoed
        back and closes: {"ok": N, "failed": N, "errors": [first few]}.
    hostile_clients.py poke HOST PORT
        Connects, sends an HTTP request head and waits (3 s at most) for what comes back:
        {"connected": bool, "bytes": N, "ended": "eof"|"reset"|"open", "after": seconds}.
    hostile_clients.py slowloris HOST PORT COUNT INTERVAL DURATION
        COUNT connections that each begin a request head and then send one more byte every
        INTERVAL seconds, never finishing it, for DURATION seconds at most; prints ready once
        all are open (a line of its own), then {"opened": N, "refused": N, "cut": N,
        "cut_after_max": seconds, "answers": {first line: count}}.
    hostile_clients.py latency HOST PORT COUNT
        COUNT sequential GETs on one keep-alive connection: {"ok": N, "p50_ms", "p99_ms"}.
    hostile_clients.py hold HOST PORT COUNT
        Opens COUNT connections and keeps them open until stdin closes: prints
        {"opened": N, "refused": N} once all were tried (a refused one is closed by the
        server at once: reset or EOF within a second).
    hostile_clients.py echoes HOST PORT COUNT
        Opens COUNT connections to an echo server and checks each echoes a line; prints
        {"opened": N} and waits for a line on stdin, then checks every connection again:
        {"alive": N, "dead": N} (dead: reset, closed or silent for 3 s).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import statistics
import sys
import threading
import time

HEAD = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n"


def burst(host: str, port: int, count: int, concurrency: int) -> dict:
    lock = threading.Lock()
    next_index = iter(range(count))
    result: dict = {"ok": 0, "failed": 0, "errors": []}

    def one(index: int) -> None:
        line = f"ping {index}\n".encode()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(line)
            echoed = b""
            while len(echoed) < len(line):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                echoed += chunk
        if echoed != line:
            raise ConnectionError(f"connection {index} echoed {echoed!r}")

    def run() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                one(index)
                outcome = None
            except OSError as err:
                outcome = f"{index}: {err}"
            with lock:
                if outcome is None:
                    result["ok"] += 1
                else:
                    result["failed"] += 1
                    if len(result["errors"]) < 5:
                        result["errors"].append(outcome)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def poke(host: str, port: int) -> dict:
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=3)
    except OSError:
        return {"connected": False, "bytes": 0, "ended": "refused", "after": 0.0}
    received, ended = 0, "open"
    with sock:
        try:
            sock.sendall(HEAD)
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    ended = "eof"
                    break
                received += len(chunk)
        except ConnectionResetError:
            ended = "reset"
        except TimeoutError:
            ended = "open"
        except BrokenPipeError:
            ended = "reset"
    return {
        "connected": True,
        "bytes": received,
        "ended": ended,
        "after": round(time.monotonic() - started, 3),
    }


def _closed_by_server(socks: list[socket.socket], wait: float) -> set[socket.socket]:
    """Those the server closed straight after accepting (a connection limit): EOF or a
    reset within ``wait`` seconds, no byte."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pending = [sock for sock in socks if sock not in closed]
        readable, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        for sock in readable:
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except OSError:
                closed.add(sock)
    return closed


def slowloris(host: str, port: int, count: int, interval: float, duration: float) -> dict:
    opened: dict[socket.socket, float] = {}
    refused = 0
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nX-Slow: ")
        except OSError:
            refused += 1
            continue
        sock.setblocking(False)
        opened[sock] = time.monotonic()
    print("ready", flush=True)
    total = len(opened)
    cut_after: list[float] = []
    answers: dict[str, int] = {}
    deadline = time.monotonic() + duration
    next_byte = time.monotonic() + interval
    while opened and time.monotonic() < deadline:
        timeout = max(0.0, min(next_byte, deadline) - time.monotonic())
        readable, _, _ = select.select(list(opened), [], [], timeout)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                first = data.split(b"\r\n", 1)[0].decode(errors="replace")
                answers[first] = answers.get(first, 0) + 1
            with contextlib.suppress(OSError):
                sock.recv(65536)  # the rest of a reply, or the EOF after it
            cut_after.append(time.monotonic() - opened.pop(sock))
            sock.close()
        if time.monotonic() >= next_byte:
            next_byte += interval
            for sock in list(opened):
                try:
                    sock.send(b"a")
                except OSError:
                    cut_after.append(time.monotonic() - opened.pop(sock))
                    sock.close()
    for sock in opened:
        sock.close()
    return {
        "opened": total,
        "refused": refused,
        "cut": len(cut_after),
        "cut_after_min": round(min(cut_after, default=0.0), 3),
        "cut_after_max": round(max(cut_after, default=0.0), 3),
        "answers": answers,
    }


def latency(host: str, port: int, count: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    took: list[float] = []
    ok = 0
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/", headers={"Host": "backend"})
        response = conn.getresponse()
        response.read()
        took.append((time.perf_counter() - started) * 1000)
        ok += response.status == 200
    conn.close()
    quantiles = statistics.quantiles(took, n=100)
    return {"ok": ok, "p50_ms": round(quantiles[49], 3), "p99_ms": round(quantiles[98], 3)}


def hold(host: str, port: int, count: int) -> None:
    socks: list[socket.socket] = []
    failed = 0
    for _ in range(count):
        try:
            socks.append(socket.create_connection((host, port), timeout=5))
        except OSError:
            failed += 1
    closed = _closed_by_server(socks, 1.0)
    held = [sock for sock in socks if sock not in closed]
    for sock in closed:
        sock.close()
    print(json.dumps({"opened": len(held), "refused": failed + len(closed)}), flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


def _echoes(sock: socket.socket, line: bytes) -> bool:
    try:
        sock.sendall(line)
        echoed = b""
        while len(echoed) < len(line):
            chunk = sock.recv(4096)
            if not chunk:
                return False
            echoed += chunk
        return echoed == line
    except OSError:
        return False


def echoes(host: str, port: int, count: int) -> None:
    socks = [socket.create_connection((host, port), timeout=3) for _ in range(count)]
    assert all(_echoes(sock, b"first\n") for sock in socks), "an echo failed before the test"
    print(json.dumps({"opened": len(socks)}), flush=True)
    sys.stdin.readline()
    alive = sum(_echoes(sock, b"again\n") for sock in socks)
    print(json.dumps({"alive": alive, "dead": len(socks) - alive}), flush=True)
    for sock in socks:
        sock.close()


def main(argv: list[str]) -> None:
    command, host, port, *rest = argv
    numbers = [float(value) for value in rest]
    if command == "burst":
        result = burst(host, int(port), int(numbers[0]), int(numbers[1]))
    elif command == "poke":
        result = poke(host, int(port))
    elif command == "slowloris":
        result = slowloris(host, int(port), int(numbers[0]), numbers[1], numbers[2])
    elif command == "latency":
        result = latency(host, int(port), int(numbers[0]))
    elif command == "hold":
        hold(host, int(port), int(numbers[0]))
        return
    elif command == "echoes":
        echoes(host, int(port), int(numbers[0]))
        return
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
