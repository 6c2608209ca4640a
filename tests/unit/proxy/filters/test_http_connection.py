"""``http_connection``: which codec a connection gets from its first bytes (``detect``, on a
real accepted socket whose protocol is a paused ``RelayHalf``, as the listener hands it to the
session), which codec its upstream tries speak, and the try factory."""

from __future__ import annotations

import asyncio
import functools

import pytest

from proxy.filters import http_connection
from proxy.filters.http1_upstream import Http1Try
from proxy.filters.http2_upstream import Http2Try
from proxy.series import Stats
from proxy.transport.relay import RelayHalf
from proxy.upstream.connector import ANY_SOURCE, Connector

from .loopback import Signal, Wire, run

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A whole minimal ClientHello (no extensions): version, random, no session id, one cipher
# suite, null compression; in its handshake message and one record.
_HELLO_BODY = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
_HELLO = b"\x01" + len(_HELLO_BODY).to_bytes(3, "big") + _HELLO_BODY
TLS_HELLO = b"\x16\x03\x01" + len(_HELLO).to_bytes(2, "big") + _HELLO


async def accepted(first_bytes: list[bytes], eof: bool = False) -> tuple[RelayHalf, Wire]:
    """A connection whose client sent ``first_bytes`` (each in its own send), then a FIN when
    ``eof``; returns the server's half (not linked to anything yet) and the client."""
    loop = asyncio.get_running_loop()
    halves: list[RelayHalf] = []
    changed = Signal()

    def make() -> RelayHalf:
        halves.append(RelayHalf(lambda _half, _exc: None))
        changed.notify()
        return halves[-1]

    server = await loop.create_server(make, "127.0.0.1", 0)
    client = await Wire.connect(server.sockets[0].getsockname()[:2])
    await changed.until(lambda: halves)
    server.close()
    for data in first_bytes:
        await client.send(data)
    if eof:
        client.shutdown_write()
    return halves[0], client


async def detected(
    protocol: str, first_bytes: list[bytes], port: int = 8080, eof: bool = False
) -> str | None:
    """``detect``'s answer for a connection to a ``protocol`` port that began so."""
    half, client = await accepted(first_bytes, eof)
    try:
        return await http_connection.detect(half, asyncio.get_running_loop(), protocol, port)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("protocol", "first_bytes", "expected"),
    [
        ("http", [b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"], "http1"),
        ("http", [PREFACE], "http2"),
        ("grpc", [b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"], "http2"),
        ("http2", [b"POST /x HTTP/1.1\r\n"], "http1"),
        ("http", [TLS_HELLO], None),
        ("auto", [b"GE", b"T / HTTP/1.1\r\n"], "http1"),
        ("auto", [PREFACE], "http2"),
        ("auto", [b"SSH-2.0-OpenSSH_9.6\r\n"], None),
        ("auto", [TLS_HELLO], None),
        ("tcp", [b"GET / HTTP/1.1\r\n"], None),
    ],
    ids=[
        "http-h1",
        "http-preface",
        "grpc-split-preface",
        "http2-port-h1-client",
        "http-tls",
        "auto-split-h1",
        "auto-preface",
        "auto-opaque",
        "auto-tls",
        "tcp-never-sniffed",
    ],
)
def test_the_first_bytes_choose_the_codec(
    protocol: str, first_bytes: list[bytes], expected: str | None
) -> None:
    """A declared HTTP port is HTTP/2 on the preface and HTTP/1.1 otherwise (a TLS hello is
    relayed as TCP); an ``auto`` port is HTTP only when its bytes say so; a ``tcp`` port is
    never sniffed. Bytes split across reads are read on until they are enough to tell."""

    async def scenario() -> None:
        assert await detected(protocol, first_bytes) == expected

    run(scenario)


def test_a_server_first_port_is_not_sniffed() -> None:
    """An ``auto`` port that is a well-known server-first port (MySQL) is TCP at once, even
    if the client happens to have sent HTTP-looking bytes."""

    async def scenario() -> None:
        assert await detected("auto", [b"GET / HTTP/1.1\r\n"], port=3306) is None

    run(scenario)


def test_a_silent_client_on_an_auto_port_is_tcp_after_the_detection_timeout() -> None:
    """A client that sends nothing on an ``auto`` port is relayed as TCP after 100 ms (Istio's
    protocolDetectionTimeout), not held forever."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await detected("auto", []) is None
        assert loop.time() - started >= 0.09

    run(scenario)


def test_a_client_that_closes_without_a_byte() -> None:
    """A FIN before any byte: TCP on an ``auto`` port (nothing to route), HTTP/1.1 on a
    declared one (its manager sees the close and ends)."""

    async def scenario() -> None:
        assert await detected("auto", [], eof=True) is None
        assert await detected("http", [], eof=True) == "http1"

    run(scenario)


@pytest.mark.parametrize(
    ("port_protocol", "client_http2", "expected"),
    [
        ("http", False, False),
        ("http", True, False),
        ("http2", False, True),
        ("grpc", False, True),
        ("auto", False, False),
        ("auto", True, True),
    ],
)
def test_which_codec_the_upstream_tries_speak(
    port_protocol: str, client_http2: bool, expected: bool
) -> None:
    """HTTP/2 upstream for http2/grpc ports; HTTP/1.1 for http; on auto, the client's own
    protocol (Istio's useClientProtocol)."""
    assert http_connection.upstream_speaks_http2(port_protocol, client_http2) is expected


def test_the_try_factory_makes_tries_of_the_chosen_codec() -> None:
    """``new_try_factory`` binds the connector and source to Http1Try or Http2Try."""

    async def scenario() -> None:
        connector = Connector(asyncio.get_running_loop(), Stats())
        for http2, kind in ((False, Http1Try), (True, Http2Try)):
            factory = http_connection.new_try_factory(connector, ANY_SOURCE, http2)
            assert isinstance(factory, functools.partial)
            assert factory.func is kind and factory.args == (connector, ANY_SOURCE)

    run(scenario)
