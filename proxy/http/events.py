"""Events: what ``Connection.next_event`` returns and ``Connection.send`` accepts.

Header names in parsed events are lowercase (Envoy lowercases HTTP/1 header keys by default);
values have surrounding SP/HTAB removed. Fields marked "parsed" are derived by the codec from
the headers; ``send`` recomputes them from the headers and ignores what the event says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

Headers = list[tuple[bytes, bytes]]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""next_event: nothing complete is buffered; call receive_data."""
PAUSED: Final = _Sentinel("PAUSED")
"""next_event: the peer's side waits for us (start_next_cycle, or a protocol switch)."""


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    headers: Headers = field(default_factory=list)
    version: bytes = b"1.1"
    # parsed: persistence after this exchange (RFC 9112 §9.3)
    keep_alive: bool = field(default=True, compare=False)
    # parsed: "Expect: 100-continue" on an HTTP/1.1 request (RFC 9110 §10.1.1)
    expect_continue: bool = field(default=False, compare=False)
    # parsed: the Upgrade header's value when Connection lists "upgrade" (RFC 9110 §7.8)
    upgrade: bytes | None = field(default=None, compare=False)
    # parsed: body framing, for the proxy to re-frame when forwarding
    content_length: int | None = field(default=None, compare=False)
    chunked: bool = field(default=False, compare=False)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    reason: bytes = b""
    version: bytes = b"1.1"
    keep_alive: bool = field(default=True, compare=False)
    content_length: int | None = field(default=None, compare=False)
    chunked: bool = field(default=False, compare=False)


@dataclass(slots=True)
class InformationalResponse:
    """A 1xx response: 100 Continue, 101 Switching Protocols, 103 Early Hints..."""

    status: int
    headers: Headers = field(default_factory=list)
    reason: bytes = b""
    version: bytes = b"1.1"


@dataclass(slots=True)
class Data:
    """Body bytes, de-chunked when received; ``send`` frames them for the wire."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    trailers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its sending side (received), or we will close ours (sent)."""


Event = Request | Response | InformationalResponse | Data | EndOfMessage | ConnectionClosed
