"""Listening sockets for the sidecar: SO_REUSEPORT for workers, IP_TRANSPARENT for TPROXY."""

from __future__ import annotations

import errno
import socket

# The accept queue of every sidecar listener (the kernel caps it at net.core.somaxconn, 4096
# by default). A burst of connections the workers have not accepted yet waits here; a queue
# that overflows drops SYNs, and each dropped one costs its client a 1 s retransmission.
LISTEN_BACKLOG = 4096


def listening_socket(
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    transparent: bool = False,
    backlog: int = LISTEN_BACKLOG,
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. IPv6 sockets are v6-only, so an IPv4 and
    an IPv6 listener can share a port number."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            # One flag for both families: IP_TRANSPARENT at SOL_IP. Needs CAP_NET_ADMIN.
            sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def transparent_socket(source: str, mark: int) -> socket.socket:
    """A non-blocking TCP socket bound to a foreign ``source`` address (IP_TRANSPARENT) and
    marked, for connecting to the local app as the original client. Needs CAP_NET_ADMIN."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.bind((source, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def is_local_address(address: str) -> bool:
    """True if ``address`` belongs to this network namespace (it can be bound)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
