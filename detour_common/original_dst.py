"""Where an intercepted connection was going before netfilter REDIRECTed it.

``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` returns the pre-NAT destination as a ``sockaddr_in``;
``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (the same number, 80) returns a
``sockaddr_in6``. Under TPROXY nothing was rewritten, so the accepted socket's own address
(``getsockname``) is the original destination.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN = struct.Struct("!2xH4s8x")  # family (host order, skipped), port, address, zero pad
_SOCKADDR_IN6 = struct.Struct("!2xHI16sI")  # family, port, flowinfo, address, scope id

Address = tuple[str, int]


def original_destination(sock: socket.socket) -> Address | None:
    """The connection's pre-REDIRECT destination, or None if it was not redirected."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6.size)
            port, _flow, packed, _scope = _SOCKADDR_IN6.unpack(raw)
            address = ipaddress.IPv6Address(packed)
            mapped = address.ipv4_mapped
            return (str(mapped or address), port)
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size)
        port, packed = _SOCKADDR_IN.unpack(raw)
        # inet_ntoa: the same dotted quad as str(IPv4Address), without building the object
        # (this runs once per intercepted connection).
        return (socket.inet_ntoa(packed), port)
    except OSError:
        # ENOENT: no conntrack NAT entry for this socket, i.e. it was not redirected.
        return None
