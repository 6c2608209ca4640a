"""original_destination: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST decoding.

Without NAT (no iptables here) the kernel has nothing to report: with no conntrack entry the
getsockopt fails with ENOENT and the function returns None; on a kernel where conntrack tracks
loopback connections it may instead return the tuple's own destination, i.e. the socket's own
address. On the machine these tests were written on, both IPv4 and IPv6 returned None
(ENOENT; IPv4 on an IPv6 socket: EOPNOTSUPP). Either answer is accepted on a real socket; the
struct layouts are checked exactly through a fake socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from support.prereq import in_ci

from detour_common.original_dst import (
    IP6T_SO_ORIGINAL_DST,
    SO_ORIGINAL_DST,
    original_destination,
)

SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28


def sockaddr_in(address: str, port: int) -> bytes:
    """A kernel ``struct sockaddr_in``: family in host order, port and address in network."""
    family = struct.pack("=H", socket.AF_INET)
    packed = ipaddress.IPv4Address(address).packed
    return family + struct.pack("!H", port) + packed + b"\0" * 8


def sockaddr_in6(address: str, port: int, flowinfo: int = 0, scope_id: int = 0) -> bytes:
    family = struct.pack("=H", socket.AF_INET6)
    packed = ipaddress.IPv6Address(address).packed
    return family + struct.pack("!HI", port, flowinfo) + packed + struct.pack("!I", scope_id)


class FakeSocket:
    """Answers getsockopt with fixed bytes (or an OSError) and records the call."""

    def __init__(self, family: int, answer: bytes | OSError) -> None:
        self.family = family
        self.answer = answer
        self.calls: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        self.calls.append((level, option, buflen))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def test_crafted_buffers_have_the_kernel_sizes() -> None:
    assert len(sockaddr_in("1.2.3.4", 1)) == SOCKADDR_IN_SIZE
    assert len(sockaddr_in6("::1", 1)) == SOCKADDR_IN6_SIZE
    assert SO_ORIGINAL_DST == IP6T_SO_ORIGINAL_DST == 80


# --- IPv4 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("10.96.0.10", 80),
        ("240.240.0.1", 9080),
        ("192.168.1.254", 65535),
        ("1.2.3.4", 1),
        ("255.255.255.255", 443),
        ("0.0.0.0", 0),
    ],
)
def test_ipv4_sockaddr_in(address: str, port: int) -> None:
    sock = FakeSocket(socket.AF_INET, sockaddr_in(address, port))
    assert original_destination(sock) == (address, port)  # type: ignore[arg-type]
    assert sock.calls == [(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE)]


def test_ipv4_port_is_network_byte_order() -> None:
    sock = FakeSocket(socket.AF_INET, sockaddr_in("10.0.0.1", 0x1F90))  # 8080
    assert original_destination(sock) == ("10.0.0.1", 8080)  # type: ignore[arg-type]


def test_ipv4_ignores_the_family_field_and_the_padding() -> None:
    raw = bytearray(sockaddr_in("10.0.0.1", 80))
    raw[0:2] = b"\xaa\xbb"
    raw[8:16] = b"\xff" * 8
    sock = FakeSocket(socket.AF_INET, bytes(raw))
    assert original_destination(sock) == ("10.0.0.1", 80)  # type: ignore[arg-type]


# --- IPv6 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("fd00:240::10", 80, "fd00:240::10"),
        ("2001:db8:0:0:1:0:0:1", 8443, "2001:db8::1:0:0:1"),
        ("::1", 15001, "::1"),
        ("fe80::1", 22, "fe80::1"),
        ("::", 0, "::"),
    ],
)
def test_ipv6_sockaddr_in6(address: str, port: int, expected: str) -> None:
    sock = FakeSocket(socket.AF_INET6, sockaddr_in6(address, port))
    assert original_destination(sock) == (expected, port)  # type: ignore[arg-type]
    assert sock.calls == [(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_SIZE)]


def test_ipv6_flowinfo_and_scope_id_are_not_part_of_the_answer() -> None:
    raw = sockaddr_in6("fe80::1", 8080, flowinfo=0x12345, scope_id=3)
    sock = FakeSocket(socket.AF_INET6, raw)
    assert original_destination(sock) == ("fe80::1", 8080)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mapped", "expected"),
    [("::ffff:10.96.0.10", "10.96.0.10"), ("::ffff:127.0.0.1", "127.0.0.1")],
)
def test_ipv4_mapped_ipv6_comes_back_as_dotted_ipv4(mapped: str, expected: str) -> None:
    sock = FakeSocket(socket.AF_INET6, sockaddr_in6(mapped, 9080))
    assert original_destination(sock) == (expected, 9080)  # type: ignore[arg-type]


def test_ipv4_compatible_is_not_mistaken_for_mapped() -> None:
    sock = FakeSocket(socket.AF_INET6, sockaddr_in6("::10.0.0.1", 80))
    assert original_destination(sock) == ("::a00:1", 80)  # type: ignore[arg-type]


# --- not redirected --------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOPROTOOPT, errno.EOPNOTSUPP])
def test_getsockopt_failure_means_not_redirected(family: int, code: int) -> None:
    sock = FakeSocket(family, OSError(code, "no"))
    assert original_destination(sock) is None  # type: ignore[arg-type]
    assert len(sock.calls) == 1


# --- real sockets ----------------------------------------------------------------------------


def accepted_pair(family: int, host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(listener.getsockname())
    listener.settimeout(5)
    accepted, _ = listener.accept()
    return listener, client, accepted


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# Under CI=true a missing IPv6 loopback must fail, not skip.
NO_IPV6_OUTSIDE_CI = not has_ipv6_loopback() and not in_ci()


@pytest.mark.parametrize(
    ("family", "host"),
    [
        pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            id="ipv6",
            marks=pytest.mark.skipif(NO_IPV6_OUTSIDE_CI, reason="no IPv6 loopback (never in CI)"),
        ),
    ],
)
def test_loopback_socket_without_nat(family: int, host: str) -> None:
    listener, client, accepted = accepted_pair(family, host)
    with listener, client, accepted:
        answer = original_destination(accepted)
        own = accepted.getsockname()[:2]
        # None without a conntrack entry (observed here); the own address with one.
        assert answer is None or answer == own, (answer, own)


def test_listening_socket_is_not_redirected() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert original_destination(listener) is None
