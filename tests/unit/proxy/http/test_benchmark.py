"""Micro-benchmark of a typical request head: printed, never asserted (timing is noisy)."""

from __future__ import annotations

import time

import pytest

from proxy.http.codec import Connection, Request

HEAD = (
    b"GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n"
    b"Host: backend.default.svc.cluster.local:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) curl/8.4.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"X-Request-Id: 7f3c1a2e-9b4d-4e8f-a1b2-c3d4e5f60718\r\n"
    b"X-B3-TraceId: 463ac35c9f6413ad48485a3953bb6124\r\n"
    b"Cookie: session=abcdef0123456789\r\n"
    b"Connection: keep-alive\r\n\r\n"
)


def per_call_us(fn, n: int = 2000) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def test_print_request_head_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    def parse() -> object:
        conn = Connection("server")
        conn.receive_data(HEAD)
        return conn.next_event()

    request = parse()
    assert isinstance(request, Request)

    def serialise() -> bytes:
        return Connection("client").send(Request(request.method, request.target, request.headers))

    parse_us, send_us = per_call_us(parse), per_call_us(serialise)
    with capsys.disabled():
        print(
            f"\n[bench] {len(HEAD)}-byte request head: parse {parse_us:.2f} us, "
            f"serialise {send_us:.2f} us (best of 5 x 2000)"
        )
