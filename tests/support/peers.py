"""Real network peers for the lab, stdlib only so they run as any uid with /usr/bin/python3.

    peers.py http PORT LABEL [--transparent] [--family 4|6]
        An HTTP/1.0 server. Each response body says who answered and where the client was
        originally going: "LABEL original=IP:PORT" (SO_ORIGINAL_DST, or the socket's own
        address for a TPROXY listener) so a test sees redirection the way a user would.
    peers.py dns PORT ANSWER_IP
        A DNS server on UDP and TCP that answers every A query with ANSWER_IP.
    peers.py zone PORT SUFFIX ANSWER_IP
        A "cluster DNS" on 0.0.0.0 UDP and TCP: A queries for names under SUFFIX get
        ANSWER_IP, every other name NXDOMAIN. It knows nothing of the mesh.
    peers.py echo PORT
        A TCP server that echoes every byte back until the client's EOF, then closes.
    peers.py count PORT
        A TCP server that reads until the client's EOF (a half-close), then replies with the
        number of bytes it read ("COUNT\n") and closes.
    peers.py banner PORT
        A server-first TCP server (as MySQL or SMTP): it says "HELLO\n" on accept, then
        echoes until the client's EOF.
    peers.py whoami PORT LABEL
        An HTTP/1.0 server answering "LABEL peer=IP:PORT": the client address it saw.
    peers.py hang PORT
        A stuck HTTP server: reads a request head and never answers (nor reads a body to
        POST /upload); prints "request" when the head arrived, "closed" when the connection
        ended.

Each prints "ready" once its sockets are bound.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from detour_common.original_dst import original_destination


def _http(port: int, label: str, transparent: bool, family: int) -> None:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    server = socket.socket(af, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if af == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if transparent:
        # IP_TRANSPARENT at SOL_IP sets the same flag for IPv4 and IPv6 sockets.
        server.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
    server.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_answer_http, args=(conn, label, transparent), daemon=True).start()


def _read_request_head(conn: socket.socket) -> bytes:
    """Read up to the end of an HTTP request head (64 KiB at most, 5 s)."""
    conn.settimeout(5)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    return request


def _answer_http(conn: socket.socket, label: str, transparent: bool) -> None:
    with conn:
        _read_request_head(conn)
        original = original_destination(conn)
        if original == conn.getsockname()[:2]:
            original = None  # conntrack knows the connection, but nothing rewrote it
        if original is None and transparent:
            original = conn.getsockname()[:2]
        where = f"{original[0]}:{original[1]}" if original else "none"
        body = f"{label} original={where}\n".encode()
        conn.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )


def _dns_answer(query: bytes, answer_ip: str) -> bytes:
    """Echo the question with one A record (TTL 30) pointing to ``answer_ip``."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    question = query[12 : end + 5]
    header = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(answer_ip)
    return header + question + record


def _zone_answer(suffix: str, answer_ip: str):
    """Answers for a tiny authoritative zone: A records under ``suffix``, NXDOMAIN elsewhere."""

    def answer(query: bytes) -> bytes:
        end, labels = 12, []
        while query[end] != 0:
            labels.append(query[end + 1 : end + 1 + query[end]].decode().lower())
            end += query[end] + 1
        name = ".".join(labels)
        qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
        if name == suffix or name.endswith("." + suffix):
            if qtype == 1:
                return _dns_answer(query, answer_ip)
            ident = struct.unpack("!H", query[:2])[0]
            return struct.pack("!HHHHHH", ident, 0x8580, 1, 0, 0, 0) + query[12 : end + 5]
        ident = struct.unpack("!H", query[:2])[0]
        return struct.pack("!HHHHHH", ident, 0x8583, 1, 0, 0, 0) + query[12 : end + 5]

    return answer


def _dns(port: int, answer_ip: str, host: str = "127.0.0.1", respond=None) -> None:
    respond = respond or (lambda query: _dns_answer(query, answer_ip))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))  # replies must leave from the address REDIRECT chose
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(16)
    print("ready", flush=True)

    def serve_tcp() -> None:
        while True:
            conn, _ = tcp.accept()
            with conn:
                size = struct.unpack("!H", conn.recv(2))[0]
                query = b""
                while len(query) < size:
                    query += conn.recv(size - len(query))
                reply = respond(query)
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    threading.Thread(target=serve_tcp, daemon=True).start()
    while True:
        query, client = udp.recvfrom(4096)
        udp.sendto(respond(query), client)


def _tcp_server(port: int, handle) -> None:
    """Serve IPv4 TCP on ``port``, one thread per connection running ``handle(conn, peer)``."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = server.accept()
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()


def _echo(conn: socket.socket, _peer) -> None:
    with conn:
        while chunk := conn.recv(1 << 20):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)


def _banner(conn: socket.socket, peer) -> None:
    conn.sendall(b"HELLO\n")
    _echo(conn, peer)


def _count(conn: socket.socket, _peer) -> None:
    with conn:
        conn.settimeout(10)
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(b"%d\n" % total)


def _hang(conn: socket.socket, _peer) -> None:
    """A stuck HTTP upstream: reads the request head and never answers. For ``/upload`` it
    also reads none of the body, so the sender's buffers fill. Prints ``request`` once the
    head is in and ``closed`` once the proxy has ended the connection, for a test to wait on."""
    with conn:
        head = _read_request_head(conn)
        conn.settimeout(None)
        print("request", flush=True)
        if head.startswith(b"POST /upload "):
            while not _closed(conn):  # its own state: the unread body must stay unread
                time.sleep(0.05)
        else:
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass
        print("closed", flush=True)


def _closed(conn: socket.socket) -> bool:
    """The other end closed or reset ``conn``: TCP state CLOSE_WAIT or CLOSE."""
    return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (7, 8)


def _whoami(label: str):
    def answer(conn: socket.socket, peer) -> None:
        with conn:
            _read_request_head(conn)
            body = f"{label} peer={peer[0]}:{peer[1]}\n".encode()
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )

    return answer


def main(argv: list[str]) -> None:
    if argv[0] == "http":
        family = int(argv[argv.index("--family") + 1]) if "--family" in argv else 4
        _http(int(argv[1]), argv[2], "--transparent" in argv, family)
    elif argv[0] == "dns":
        _dns(int(argv[1]), argv[2])
    elif argv[0] == "zone":
        _dns(int(argv[1]), argv[3], "0.0.0.0", _zone_answer(argv[2].lower(), argv[3]))
    elif argv[0] == "echo":
        _tcp_server(int(argv[1]), _echo)
    elif argv[0] == "banner":
        _tcp_server(int(argv[1]), _banner)
    elif argv[0] == "count":
        _tcp_server(int(argv[1]), _count)
    elif argv[0] == "hang":
        _tcp_server(int(argv[1]), _hang)
    elif argv[0] == "whoami":
        _tcp_server(int(argv[1]), _whoami(argv[2]))
    else:
        raise SystemExit(f"unknown peer {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
