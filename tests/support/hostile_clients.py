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
        "cut_after_min"|"cut_after_max": seconds, "answers": {first line: count}}.
    hostile_clients.py h2slowloris HOST PORT COUNT INTERVAL DURATION
        The same over HTTP/2 (prior knowledge): each connection sends the preface, SETTINGS
        and a HEADERS frame without END_HEADERS, then a CONTINUATION frame every INTERVAL
        seconds, never the last; the answers counted are GOAWAY error codes ("GOAWAY 11" is
        ENHANCE_YOUR_CALM) and a cut is the server's EOF or reset.
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
    hostile_clients.py idle HOST PORT COUNT
        Opens COUNT HTTP/1.1 keep-alive connections (100 at a time), one GET answered on
        each, and keeps them open: prints {"answered": N, "failed": N, "errors": [...]}; then
        for each line on stdin one more GET on every connection still open, printed the same
        way; closes them all at EOF and prints {"closed": N}.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence

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
    except ConnectionResetError:
        # The handshake completed and the server reset at once, before connect() looked at
        # the socket's error (a loaded machine descheduled this client in between).
        return {"connected": True, "bytes": 0, "ended": "reset", "after": _since(started)}
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
    return {"connected": True, "bytes": received, "ended": ended, "after": _since(started)}


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


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


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 §4.1), written by hand to keep this client stdlib-only."""
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HPACK: :method GET, :scheme http, :path / (static table), and no END_HEADERS (flags 0)
H2_OPEN_HEAD = H2_PREFACE + _h2_frame(0x4, 0, 0, b"") + _h2_frame(0x1, 0x0, 1, b"\x82\x86\x84")
H2_ONE_MORE = _h2_frame(0x9, 0, 1, b"\x40\x01a\x01b")  # CONTINUATION "a: b", not the last
H1_OPEN_HEAD = b"GET / HTTP/1.1\r\nHost: backend\r\nX-Slow: "


def _goaway_codes(received: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in what a server sent (whole frames only)."""
    codes = []
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        if len(received) < 9 + length:
            break
        if received[3] == 0x7 and length >= 8:
            codes.append(int.from_bytes(received[13:17], "big"))
        received = received[9 + length :]
    return codes


def slowloris(
    host: str, port: int, count: int, interval: float, duration: float, http2: bool = False
) -> dict:
    """``count`` connections that never finish a request head (see the module's docstring).
    What a server sent is kept per connection and read as one first line (HTTP/1.1) or as its
    GOAWAY codes (HTTP/2) once the server closed it."""
    opening, one_more = (H2_OPEN_HEAD, H2_ONE_MORE) if http2 else (H1_OPEN_HEAD, b"a")
    opened: dict[socket.socket, float] = {}
    received: dict[socket.socket, bytes] = {}
    refused = 0
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(opening)
        except OSError:
            refused += 1
            continue
        sock.setblocking(False)
        opened[sock] = time.monotonic()
        received[sock] = b""
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
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                received[sock] += data
                continue
            cut_after.append(time.monotonic() - opened.pop(sock))
            _count_answer(answers, received.pop(sock), http2)
            sock.close()
        if time.monotonic() >= next_byte:
            next_byte += interval
            for sock in list(opened):
                try:
                    sock.send(one_more)
                except OSError:
                    cut_after.append(time.monotonic() - opened.pop(sock))
                    _count_answer(answers, received.pop(sock), http2)
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


def _count_answer(answers: dict[str, int], data: bytes, http2: bool) -> None:
    if http2:
        names = [f"GOAWAY {code}" for code in _goaway_codes(data)] or ["no GOAWAY"]
    else:
        names = [data.split(b"\r\n", 1)[0].decode(errors="replace")] if data else []
    for name in names:
        answers[name] = answers.get(name, 0) + 1


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


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One GET on a keep-alive connection, its answer read whole (Content-Length); raises
    unless it is a 200."""
    writer.write(HEAD)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = head.split(b"\r\n", 1)[0]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await asyncio.wait_for(reader.readexactly(length), 30)
    if not status.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(status.decode(errors="replace"))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _on_each(count: int, step, at_once: int = 100) -> tuple[dict, set[int]]:
    """``await step(index)`` for each of ``count`` indexes, ``at_once`` at a time: what was
    answered and failed (with the first few errors), and which indexes failed."""
    gate = asyncio.Semaphore(at_once)
    errors: list[str] = []
    failed: set[int] = set()

    async def one(index: int) -> None:
        async with gate:
            try:
                await step(index)
            except (OSError, asyncio.IncompleteReadError) as err:  # TimeoutError too
                failed.add(index)
                if len(errors) < 5:
                    errors.append(f"{type(err).__name__}: {err}")

    await asyncio.gather(*(one(index) for index in range(count)))
    return {"answered": count - len(failed), "failed": len(failed), "errors": errors}, failed


async def _idle(host: str, port: int, count: int) -> None:
    slots: list[Connection | None] = [None] * count

    async def open_one(index: int) -> None:
        slots[index] = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        await _get(*slots[index])

    result, failed = await _on_each(count, open_one)
    connections = _keep(slots, failed)
    print(json.dumps(result), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        result, failed = await _on_each(len(connections), _get_on(connections))
        connections = _keep(connections, failed)
        print(json.dumps(result), flush=True)
    for _reader, writer in connections:
        writer.close()
    print(json.dumps({"closed": len(connections)}), flush=True)


def _get_on(connections: list[Connection]):
    """A step for ``_on_each``: one more GET on connection ``index``."""

    async def step(index: int) -> None:
        await _get(*connections[index])

    return step


def _keep(slots: Sequence[Connection | None], failed: set[int]) -> list[Connection]:
    """The connections that did not fail; those that did are closed."""
    kept = []
    for index, pair in enumerate(slots):
        if pair is None:
            continue
        if index in failed:
            pair[1].close()
        else:
            kept.append(pair)
    return kept


def main(argv: list[str]) -> None:
    command, host, port, *rest = argv
    numbers = [float(value) for value in rest]
    if command == "burst":
        result = burst(host, int(port), int(numbers[0]), int(numbers[1]))
    elif command == "poke":
        result = poke(host, int(port))
    elif command == "slowloris":
        result = slowloris(host, int(port), int(numbers[0]), numbers[1], numbers[2])
    elif command == "h2slowloris":
        result = slowloris(host, int(port), int(numbers[0]), numbers[1], numbers[2], http2=True)
    elif command == "latency":
        result = latency(host, int(port), int(numbers[0]))
    elif command == "hold":
        hold(host, int(port), int(numbers[0]))
        return
    elif command == "echoes":
        echoes(host, int(port), int(numbers[0]))
        return
    elif command == "idle":
        asyncio.run(_idle(host, int(port), int(numbers[0])))
        return
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
