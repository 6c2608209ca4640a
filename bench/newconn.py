"""A new connection per request, one after the other: the load ``bench/instructions.py``
counts a proxy's per-connection cost with. Stdlib only (Debian's /usr/bin/python3, run as the
app uid in a client pod, like ``bulk.py``).

    newconn.py HOST PORT COUNT      # prints one JSON line: {"requests": N, "ok": M}

Sequential on purpose: a closed loop of one connection at a time gives the proxy the same
work in the same order on every run, so an instruction count of it repeats. (wrk's
``Connection: close`` load, which the timed bench uses, is a rate, not a count; h2load keeps
its connections.) Each request asks ``Connection: close`` and is read to EOF, so the proxy
sees accept, original destination, route, upstream, response and close every time.
"""

from __future__ import annotations

import json
import socket
import sys

TIMEOUT = 60.0  # a proxy under callgrind runs some 50 times slower than usual


def one_request(host: str, port: int) -> bool:
    """GET / on a new connection; True when the answer is a 200 read to its end."""
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[1].isdigit() or not argv[2].isdigit():
        print("usage: newconn.py HOST PORT COUNT", file=sys.stderr)
        return 2
    host, port, count = argv[0], int(argv[1]), int(argv[2])
    ok = sum(one_request(host, port) for _ in range(count))
    print(json.dumps({"requests": count, "ok": ok}))
    return 0 if ok == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
