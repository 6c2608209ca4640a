"""A small HTTP/1.1 origin on uvloop: every request gets a 1 KiB body, keep-alive by default.

The fallback origin when nginx is not installed (``run.py --origin python``). Requests are
assumed to have no body (wrk sends GETs). ``Connection: close`` is honoured: the answer says so
and the connection is closed after it.

    origin_http.py PORT   # prints "ready" once listening
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

BODY = b"x" * 1024
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
KEEP_ALIVE = HEAD + b"\r\n" + BODY
CLOSE = HEAD + b"Connection: close\r\n\r\n" + BODY


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head, buffer = buffer[:end].lower(), buffer[end + 4 :]
            if b"\r\nconnection: close" in head:
                self.transport.write(CLOSE)
                self.transport.close()
                return
            self.transport.write(KEEP_ALIVE)
        self.buffer = buffer


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "0.0.0.0", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
