"""Send exact bytes to HOST:PORT and report what came back, for requests no well-behaved
client would write (``/public\\..\\admin``, ``/admin#x``, raw escapes).

    python raw_exchange.py HOST PORT PAYLOAD_HEX [TIMEOUT] [--until N]

Writes the payload, reads until the peer closes (or resets, or the timeout, or N bytes came
back: an echo peer never closes first) and prints one JSON object:
{"received": <text, latin-1>, "error": <exception name or null>}.
"""

from __future__ import annotations

import json
import socket
import sys


def exchange(
    host: str, port: int, payload: bytes, timeout: float, until: int | None
) -> dict[str, object]:
    received = b""
    error = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(payload)
            while until is None or len(received) < until:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
    except OSError as exc:
        error = type(exc).__name__
    return {"received": received.decode("latin-1"), "error": error}


if __name__ == "__main__":
    args = sys.argv[1:]
    until = None
    if "--until" in args:
        at = args.index("--until")
        until = int(args[at + 1])
        del args[at : at + 2]
    timeout = float(args[3]) if len(args) > 3 else 5.0
    result = exchange(args[0], int(args[1]), bytes.fromhex(args[2]), timeout, until)
    print(json.dumps(result))
