"""The admin HTTP server on a real loopback socket (port 0), on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from proxy.admin import http
from proxy.admin.http import AdminServer, Request, Response, Route, serve, text

IO_TIMEOUT = 5.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Run one test coroutine on a fresh event loop of the given kind."""
    runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coro: runner(asyncio.wait_for(coro, 30))


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse(raw: bytes) -> Reply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), reason, headers, body, raw)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()


async def fetch(port: int, method: str, target: str, extra: bytes = b"") -> Reply:
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n".encode() + extra + b"\r\n"
    return parse(await exchange(port, head))


@dataclass
class App:
    """Routes that record how they are called."""

    calls: list[Request] = field(default_factory=list)

    async def ready(self, request: Request) -> Response:
        self.calls.append(request)
        return text("LIVE\n")

    async def quit(self, request: Request) -> Response:
        self.calls.append(request)
        return text("OK\n")

    async def echo(self, request: Request) -> Response:
        self.calls.append(request)
        body = f"{request.method} {request.path} {sorted(request.query.items())}\n"
        return Response(
            202,
            body.encode(),
            "application/json",
            headers=(("X-Detour", "yes"), ("Cache-Control", "no-cache")),
        )

    async def boom(self, request: Request) -> Response:
        self.calls.append(request)
        raise RuntimeError("handler bug")

    def server(self) -> AdminServer:
        return AdminServer(
            {
                "/ready": Route(self.ready),
                "/quitquitquit": Route(self.quit, frozenset({"POST"})),
                "/echo": Route(self.echo, frozenset({"GET", "HEAD", "POST"})),
                "/boom": Route(self.boom),
            }
        )


async def started(app: App) -> tuple[asyncio.AbstractServer, int]:
    server = await serve(app.server(), "127.0.0.1", 0)
    (sock,) = server.sockets
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1" and port != 0
    return server, port


async def stop(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


# --- routes and methods ----------------------------------------------------------------------


def test_get_of_a_get_route(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "/ready")
        await stop(server)
        assert (reply.status, reply.reason) == (200, "OK")
        assert reply.body == b"LIVE\n"
        assert reply.headers["content-length"] == "5"
        assert reply.headers["content-type"] == "text/plain; charset=utf-8"
        assert reply.headers["connection"] == "close"

    run(main())
    assert [(r.method, r.path) for r in app.calls] == [("GET", "/ready")]


def test_handler_sees_the_query_and_sets_status_type_and_headers(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "/echo?filter=cx_&x=1&x=2")
        await stop(server)
        assert reply.status == 202
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["x-detour"] == "yes"
        assert reply.headers["cache-control"] == "no-cache"
        assert reply.body == b"GET /echo [('filter', ['cx_']), ('x', ['1', '2'])]\n"
        assert int(reply.headers["content-length"]) == len(reply.body)

    run(main())
    assert app.calls[0].query == {"filter": ["cx_"], "x": ["1", "2"]}


def test_unknown_path_is_404(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "/nope?x=1")
        await stop(server)
        assert (reply.status, reply.reason) == (404, "Not Found")
        assert b"/nope" in reply.body
        assert int(reply.headers["content-length"]) == len(reply.body)

    run(main())
    assert app.calls == []


def test_get_of_a_post_only_route_is_405_and_the_handler_is_not_called(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "/quitquitquit")
        await stop(server)
        assert (reply.status, reply.reason) == (405, "Method Not Allowed")
        assert reply.headers["allow"] == "POST"
        assert b"POST" in reply.body

    run(main())
    assert app.calls == []


def test_post_to_a_get_route_is_405_listing_get_and_head(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "POST", "/ready", b"Content-Length: 0\r\n")
        await stop(server)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"

    run(main())
    assert app.calls == []


def test_post_to_a_post_route(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "POST", "/quitquitquit", b"Content-Length: 0\r\n")
        await stop(server)
        assert (reply.status, reply.body) == (200, b"OK\n")

    run(main())
    assert [(r.method, r.path) for r in app.calls] == [("POST", "/quitquitquit")]


def test_head_returns_the_headers_without_the_body(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "HEAD", "/ready")
        await stop(server)
        assert reply.status == 200
        assert reply.headers["content-length"] == "5"  # the GET body's length
        assert reply.body == b""
        assert reply.raw.endswith(b"\r\n\r\n")

    run(main())
    assert [r.method for r in app.calls] == ["HEAD"]


def test_head_of_errors_has_no_body_either(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        missing = await fetch(port, "HEAD", "/nope")
        not_allowed = await fetch(port, "HEAD", "/quitquitquit")
        await stop(server)
        assert (missing.status, missing.body) == (404, b"")
        assert int(missing.headers["content-length"]) > 0
        assert (not_allowed.status, not_allowed.body) == (405, b"")
        assert not_allowed.headers["allow"] == "POST"

    run(main())
    assert app.calls == []


def test_absolute_form_target_uses_its_path(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "http://localhost:15000/ready")
        await stop(server)
        assert (reply.status, reply.body) == (200, b"LIVE\n")

    run(main())


# --- bounded and malformed requests ----------------------------------------------------------


def test_request_head_over_8_kib_is_431(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        big = b"X-Filler: " + b"a" * (http.MAX_HEAD + 100) + b"\r\n"
        reply = await fetch(port, "GET", "/ready", big)
        await stop(server)
        assert (reply.status, reply.reason) == (431, "Request Header Fields Too Large")

    run(main())
    assert app.calls == []


def test_request_head_over_8_kib_without_an_end_is_431(run) -> None:
    """The limit applies before the blank line arrives: the server does not wait for it."""
    app = App()

    async def main() -> None:
        server, port = await started(app)
        raw = b"GET /ready HTTP/1.1\r\nX-Filler: " + b"a" * (2 * http.MAX_HEAD)
        reply = parse(await exchange(port, raw))
        await stop(server)
        assert reply.status == 431

    run(main())
    assert app.calls == []


def test_request_head_just_under_the_limit_is_served(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        prefix = b"GET /ready HTTP/1.1\r\nX-Filler: "
        filler = b"a" * (http.MAX_HEAD - len(prefix) - 100)
        raw = prefix + filler + b"\r\n\r\n"
        assert len(raw) < http.MAX_HEAD
        reply = parse(await exchange(port, raw))
        await stop(server)
        assert reply.status == 200

    run(main())


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /ready\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /ready HTTP/1.1 extra\r\n\r\n",
        b"GET  /ready HTTP/1.1\r\n\r\n",
        b"\xff\xfe /ready HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
    ids=["two-parts", "one-part", "four-parts", "double-space", "not-ascii", "empty", "garbage"],
)
def test_malformed_request_line_is_400(run, raw: bytes) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = parse(await exchange(port, raw))
        await stop(server)
        assert (reply.status, reply.reason) == (400, "Bad Request")

    run(main())
    assert app.calls == []


def test_head_cut_short_by_eof_is_400(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        writer.write_eof()
        reply = parse(await asyncio.wait_for(reader.read(), IO_TIMEOUT))
        writer.close()
        await stop(server)
        assert reply.status == 400

    run(main())
    assert app.calls == []


@pytest.mark.parametrize("sent", [b"", b"GET /ready HTTP/1.1\r\nHost:"], ids=["nothing", "partial"])
def test_silent_client_is_closed_after_the_head_timeout(
    run, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    timeout = 0.3
    monkeypatch.setattr(http, "HEAD_TIMEOUT", timeout)
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        start = time.monotonic()
        data = await asyncio.wait_for(reader.read(), timeout + IO_TIMEOUT)
        elapsed = time.monotonic() - start
        writer.close()
        await stop(server)
        assert data == b""  # closed without a response
        assert timeout * 0.8 <= elapsed < timeout + IO_TIMEOUT

    run(main())
    assert app.calls == []


def test_a_silent_client_does_not_block_others(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "HEAD_TIMEOUT", 30.0)
    app = App()

    async def main() -> None:
        server, port = await started(app)
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        reply = await asyncio.wait_for(fetch(port, "GET", "/ready"), IO_TIMEOUT)
        assert reply.status == 200
        silent.close()
        await stop(server)

    run(main())


# --- handler failures ------------------------------------------------------------------------


def test_a_raising_handler_is_500_and_the_server_keeps_serving(
    run, caplog: pytest.LogCaptureFixture
) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        failed = await fetch(port, "GET", "/boom")
        again = await fetch(port, "GET", "/boom")
        ok = await fetch(port, "GET", "/ready")
        await stop(server)
        assert failed.status == 500
        assert failed.body == b"internal error\n"
        assert int(failed.headers["content-length"]) == len(failed.body)
        assert again.status == 500
        assert (ok.status, ok.body) == (200, b"LIVE\n")

    with caplog.at_level("ERROR", logger="detour.admin"):
        run(main())
    assert [r.path for r in app.calls] == ["/boom", "/boom", "/ready"]
    assert any("/boom" in r.getMessage() for r in caplog.records)


def test_500_has_its_standard_reason_phrase(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        reply = await fetch(port, "GET", "/boom")
        await stop(server)
        assert (reply.status, reply.reason) == (500, "Internal Server Error")

    run(main())


def test_concurrent_requests(run) -> None:
    app = App()

    async def main() -> None:
        server, port = await started(app)
        replies = await asyncio.gather(*(fetch(port, "GET", "/ready") for _ in range(20)))
        await stop(server)
        assert {r.status for r in replies} == {200}

    run(main())
    assert len(app.calls) == 20
