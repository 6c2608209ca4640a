"""Single-stream bulk transfer: a sink/source server and a timing client. Stdlib only.

Runs under Debian's /usr/bin/python3 as an unprivileged uid, like the lab's test peers.

    bulk.py serve PORT                 # prints "ready" once listening; serves until killed
    bulk.py upload HOST PORT BYTES     # client -> server, prints one JSON line
    bulk.py download HOST PORT BYTES   # server -> client, prints one JSON line

Protocol: the client sends a 9-byte header (mode ``U``/``D``, 8-byte big-endian size).
Upload: the client sends ``size`` bytes and shuts down its write side; the server reads to
EOF and answers with the 8-byte count it received, so the client's clock stops only once
every byte has reached the server. Download: the server sends ``size`` bytes and closes; the
client reads to EOF. The client's wall time runs from before ``connect`` to the last byte.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct("!cQ")
COUNT = struct.Struct("!Q")
CHUNK = 1 << 20


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _drain(sock: socket.socket) -> int:
    buf = bytearray(CHUNK)
    total = 0
    while n := sock.recv_into(buf):
        total += n
    return total


def _send(sock: socket.socket, size: int) -> None:
    payload = memoryview(bytes(CHUNK))
    left = size
    while left:
        n = min(left, CHUNK)
        sock.sendall(payload[:n])
        left -= n


def _handle(conn: socket.socket) -> None:
    with conn:
        try:
            mode, size = HEADER.unpack(_recv_exact(conn, HEADER.size))
            if mode == b"U":
                conn.sendall(COUNT.pack(_drain(conn)))
            elif mode == b"D":
                _send(conn, size)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # wait for the client's close, so no reset can cut the tail
        except OSError:
            pass


def serve(port: int) -> None:
    server = socket.create_server(("0.0.0.0", port), backlog=128)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def client(mode: str, host: str, port: int, size: int) -> int:
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=120) as sock:
        if mode == "upload":
            sock.sendall(HEADER.pack(b"U", size))
            _send(sock, size)
            sock.shutdown(socket.SHUT_WR)
            moved = COUNT.unpack(_recv_exact(sock, COUNT.size))[0]
        else:
            sock.sendall(HEADER.pack(b"D", size))
            moved = _drain(sock)
    seconds = time.perf_counter() - started
    print(json.dumps({"mode": mode, "bytes": moved, "expected": size, "seconds": seconds}))
    return 0 if moved == size else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        serve(int(argv[1]))
        return 0
    if len(argv) == 4 and argv[0] in ("upload", "download"):
        return client(argv[0], argv[1], int(argv[2]), int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
