"""Open many keep-alive HTTP connections, one request each, and hold them idle. Stdlib only.

Runs under Debian's /usr/bin/python3 as the app uid in a client pod, so every connection goes
through that pod's proxy (which then holds a downstream and an upstream socket for it).

    hold.py HOST PORT N1 [N2 ...]

For each step it opens connections until N (a running total) are open, sends one
``GET / HTTP/1.1`` on each and reads the whole 1 KiB answer (so an L7 proxy has made its
upstream connection too), then prints ``held N failed F`` and waits for a line on stdin
before the next step. EOF on stdin closes everything and exits.
"""

from __future__ import annotations

import selectors
import socket
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: origin\r\nUser-Agent: detour-bench-hold\r\n\r\n"
IN_FLIGHT = 128  # connects and requests outstanding at once: below any proxy's backlog


def _response_done(data: bytes) -> bool:
    """True once ``data`` holds a whole response with a Content-Length body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def open_until(host: str, port: int, total: int, held: list[socket.socket]) -> int:
    """Grow ``held`` to ``total`` answered connections; returns how many attempts failed."""
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}
    failed = 0
    started = len(held)
    while len(held) < total:
        while len(pending) < IN_FLIGHT and started < total:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((host, port))
            pending[sock] = bytearray()
            selector.register(sock, selectors.EVENT_WRITE)
            started += 1
        if not pending:
            break
        for key, events in selector.select(timeout=10) or []:
            sock = key.fileobj
            try:
                if events & selectors.EVENT_WRITE:
                    sock.send(REQUEST)  # connected (or raises): the request fits one segment
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the answer")
                pending[sock] += chunk
                if _response_done(bytes(pending[sock])):
                    selector.unregister(sock)
                    del pending[sock]
                    held.append(sock)
            except OSError:
                selector.unregister(sock)
                del pending[sock]
                sock.close()
                failed += 1
                started -= 1  # try again: the step is about N open connections
                if failed > total:
                    raise SystemExit(f"too many failures ({failed})") from None
    selector.close()
    return failed


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, steps = argv[0], int(argv[1]), [int(n) for n in argv[2:]]
    held: list[socket.socket] = []
    for total in steps:
        failed = open_until(host, port, total, held)
        print(f"held {len(held)} failed {failed}", flush=True)
        if not sys.stdin.readline():
            break
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
