"""A deliberately small HTTP/1.1 server for the admin, metrics and readiness ports.

Not the data path: one request per connection, bounded request head (8 KiB, 5 s), no body
beyond what POST endpoints ignore. Handlers are plain async functions returning a Response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("detour.admin")

MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 5.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode())


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """One endpoint: the handler and the methods it accepts (mutations are POST-only)."""

    handler: Handler
    methods: frozenset[str] = frozenset({"GET", "HEAD"})


class AdminServer:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, method = await self._respond(reader)
            head = [
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}",
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in response.headers),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            if method != "HEAD":
                writer.write(response.body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, str]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            return text("request head too large\n", 431), "GET"
        except asyncio.IncompleteReadError:
            return text("incomplete request\n", 400), "GET"
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return text("malformed request line\n", 400), "GET"
        parts = urlsplit(target)
        route = self.routes.get(parts.path)
        if route is None:
            return text(f"no such endpoint: {parts.path}\n", 404), method
        if method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            return Response(
                405,
                f"{parts.path} accepts {allowed} only\n".encode(),
                headers=(("Allow", allowed),),
            ), method
        request = Request(method, parts.path, parse_qs(parts.query))
        try:
            return await route.handler(request), method
        except Exception:  # an admin bug must not take the sidecar down
            log.exception("admin handler %s failed", parts.path)
            return text("internal error\n", 500), method


async def serve(server: AdminServer, host: str, port: int) -> asyncio.AbstractServer:
    return await asyncio.start_server(server.handle, host, port, limit=MAX_HEAD, reuse_address=True)
