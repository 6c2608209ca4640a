"""The sidecar's DNS proxy on 127.0.0.1:15053 (and [::1]:15053), UDP and TCP.

init's ``--capture-dns`` sends every app's DNS query here. Mesh names are answered locally
with the service's VIPs (short TTL); other names inside the mesh domain get NXDOMAIN without
asking anyone; everything else is forwarded to the pod's own resolvers (from its original
resolv.conf) over UDP, retried over TCP when truncated, and cached for the TTL the answer
carries. The sidecar runs as uid 1337, so its own upstream queries are never captured.

Decisions are made by ``answer()`` from the codec, the name table and the cache; the asyncio
shell around it only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

from proxy.config.diff import replaced_services
from proxy.config.model import Mesh
from proxy.dns.cache import TtlCache
from proxy.dns.codec import (
    TYPE_A,
    TYPE_AAAA,
    DnsError,
    Query,
    Rcode,
    a_record,
    aaaa_record,
    build_answer,
    build_error,
    cache_ttl,
    parse_query,
    parse_response,
    with_id_and_ttl,
)
from proxy.dns.names import Found, MeshNames, NoSuchName, name_inputs
from proxy.dns.resolvconf import ResolvConf
from proxy.platform.sockets import LISTEN_BACKLOG
from proxy.series import Stats
from proxy.stats import Counter, Histogram, labels

log = logging.getLogger("detour.dns")

MESH_TTL = 5  # seconds: short, so a reload's change is picked up quickly by caching clients
UPSTREAM_TIMEOUT = 2.0
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_MESSAGE = 65535
MAX_TCP_CLIENTS = 256
LATENCY_BUCKETS_MS = (1, 5, 10, 50, 100, 500, 1000, 2000)

DNS_QUERIES_TOTAL = Counter(
    "dns_queries_total", "DNS queries received from apps, by transport (udp, tcp)"
)
DNS_MALFORMED_TOTAL = Counter(
    "dns_malformed_total", "DNS queries that could not be parsed (answered an error or dropped)"
)
DNS_ANSWERS_TOTAL = Counter(
    "dns_answers_total", "DNS answers sent, by source: mesh, mesh_nxdomain, cache or upstream"
)
DNS_FAILURES_TOTAL = Counter(
    "dns_failures_total",
    "DNS queries answered SERVFAIL: no upstream, none reachable, or an unusable upstream answer",
)
DNS_UPSTREAM_LATENCY_MS = Histogram(
    "dns_upstream_latency_ms",
    "Time one upstream resolver took to answer (or to be given up on), in milliseconds",
    LATENCY_BUCKETS_MS,
)


class DnsProxy:
    """Answers one DNS message at a time; shared by the UDP and TCP servers."""

    def __init__(
        self,
        mesh: Mesh,
        resolv: ResolvConf,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolv = resolv
        self.stats = stats
        self.clock = clock
        self.cache = TtlCache(clock=clock)
        self.names = MeshNames.build(mesh, resolv.search)
        self._mesh = mesh

    def apply_mesh(self, mesh: Mesh) -> None:
        """A reload: names of removed services stop resolving at once. A mesh that names the
        same services at the same addresses (an endpoint moved, the usual control-plane
        update) keeps the table: building it walks every service."""
        old, self._mesh = self._mesh, mesh
        if replaced_services(old, mesh) is not None:  # same keys and VIPs, same workload
            return
        if name_inputs(mesh) != name_inputs(old):
            self.names = MeshNames.build(mesh, self.resolv.search)

    async def answer(self, data: bytes, transport: str) -> bytes | None:
        """The reply to one query (None = drop it)."""
        self.stats.inc(DNS_QUERIES_TOTAL, labels(transport=transport))
        try:
            query = parse_query(data)
        except DnsError as err:
            self.stats.inc(DNS_MALFORMED_TOTAL, labels(reason=err.reason))
            return build_error(data, err.rcode) if err.rcode is not None else None
        limit = None if transport == "udp" else MAX_TCP_MESSAGE
        local = self._answer_locally(query, limit)
        if local is not None:
            return local
        return await self._forward(query, data, limit)

    def _answer_locally(self, query: Query, limit: int | None) -> bytes | None:
        question = query.question
        found = self.names.lookup(question.name)
        if isinstance(found, Found):
            records = []
            if question.qtype == TYPE_A:
                records = [a_record(question.name, ip, MESH_TTL) for ip in found.v4]
            elif question.qtype == TYPE_AAAA:
                records = [aaaa_record(question.name, ip, MESH_TTL) for ip in found.v6]
            self.stats.inc(DNS_ANSWERS_TOTAL, labels(source="mesh"))
            return build_answer(query, Rcode.NOERROR, records, max_size=limit)
        if isinstance(found, NoSuchName):
            self.stats.inc(DNS_ANSWERS_TOTAL, labels(source="mesh_nxdomain"))
            return build_answer(query, Rcode.NXDOMAIN, max_size=limit)
        return None

    async def _forward(self, query: Query, data: bytes, limit: int | None) -> bytes | None:
        question = query.question
        # EDNS is part of the key: a reply carrying an OPT record must not reach a client that
        # sent none (RFC 6891 §7).
        key = (question.name, question.qtype, question.qclass, query.edns_payload is not None)
        cached = self.cache.get(key)
        if cached is not None:
            value, elapsed = cached
            self.stats.inc(DNS_ANSWERS_TOTAL, labels(source="cache"))
            reply = _echo_question(query, with_id_and_ttl(value, query.id, elapsed))
            return self._fit(query, reply, limit)
        if not self.resolv.nameservers:
            self.stats.inc(DNS_FAILURES_TOTAL, labels(reason="no_upstream"))
            return build_answer(query, Rcode.SERVFAIL, authoritative=False, max_size=limit)
        reply = await self._ask_upstreams(data)
        if reply is None:
            self.stats.inc(DNS_FAILURES_TOTAL, labels(reason="upstream_unreachable"))
            return build_answer(query, Rcode.SERVFAIL, authoritative=False, max_size=limit)
        try:
            response = parse_response(reply)
            # Walked before it is cached: a truncated reply parse_response accepts (records
            # may stop mid-way, RFC 2181 §9) may not walk, and a cached one that does not
            # would fail every query for its name until it expired.
            fresh = with_id_and_ttl(reply, query.id, 0)
        except DnsError as err:
            self.stats.inc(DNS_FAILURES_TOTAL, labels(reason=f"upstream_{err.reason}"))
            return build_answer(query, Rcode.SERVFAIL, authoritative=False, max_size=limit)
        if response.question != question:
            # Same ID, other question: a stray or spoofed answer (RFC 5452 §4.3).
            self.stats.inc(DNS_FAILURES_TOTAL, labels(reason="upstream_question_mismatch"))
            return build_answer(query, Rcode.SERVFAIL, authoritative=False, max_size=limit)
        ttl = cache_ttl(response)
        if ttl:
            self.cache.put(key, reply, ttl)
        self.stats.inc(DNS_ANSWERS_TOTAL, labels(source="upstream"))
        return self._fit(query, fresh, limit)

    def _fit(self, query: Query, reply: bytes, limit: int | None) -> bytes:
        """Never send a UDP client more than its query allows: truncate instead (TC=1)."""
        allowed = limit or query.edns_payload or 512
        if len(reply) <= allowed:
            return reply
        empty = build_answer(query, Rcode.NOERROR, (), authoritative=False)
        return empty[:2] + bytes([empty[2] | _TC]) + empty[3:]  # header byte 2: QR..TC..RD

    async def _ask_upstreams(self, data: bytes) -> bytes | None:
        for server in self.resolv.nameservers:
            started = self.clock()
            reply = await _udp_exchange(server, data)
            if reply is not None and _truncated(reply):
                reply = await _tcp_exchange(server, data)
            self._observe_latency(self.clock() - started)
            if reply is not None:
                return reply
        return None

    def _observe_latency(self, seconds: float) -> None:
        self.stats.observe(DNS_UPSTREAM_LATENCY_MS, (), seconds * 1000)


def _echo_question(query: Query, reply: bytes) -> bytes:
    """Give a cached reply the asking client's own question bytes: names are compared
    case-insensitively, but clients that randomise letter case (0x20 encoding) check theirs."""
    size = len(query.raw_question)
    if reply[12 : 12 + size].lower() == query.raw_question.lower():
        return reply[:12] + query.raw_question + reply[12 + size :]
    return reply


_TC = 0x02  # the truncation bit, in the third header octet (RFC 1035 §4.1.1)


def _truncated(reply: bytes) -> bool:
    return len(reply) >= 3 and bool(reply[2] & _TC)


async def _udp_exchange(server: str, data: bytes) -> bytes | None:
    """One query to one upstream over UDP, with our own random ID (answers must match it)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    our_id = random.getrandbits(16)
    packet = struct.pack("!H", our_id) + data[2:]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (server, 53))
            await loop.sock_sendall(sock, packet)
            deadline = loop.time() + UPSTREAM_TIMEOUT
            while (remaining := deadline - loop.time()) > 0:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), remaining)
                if len(reply) >= 2 and struct.unpack("!H", reply[:2])[0] == our_id:
                    return reply  # anything else is a stray or spoofed datagram
        except (OSError, TimeoutError):
            return None
    return None


async def _tcp_exchange(server: str, data: bytes) -> bytes | None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(server, 53), UPSTREAM_TIMEOUT
        )
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), UPSTREAM_TIMEOUT))[
            0
        ]
        return await asyncio.wait_for(reader.readexactly(size), UPSTREAM_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()


# --- the asyncio shell ----------------------------------------------------------------------


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        asyncio.get_running_loop().create_task(self._reply(data, addr))

    async def _reply(self, data: bytes, addr) -> None:
        reply = await self.proxy.answer(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _serve_tcp_client(
    proxy: DnsProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            size = struct.unpack(
                "!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
            )[0]
            data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT)
            reply = await proxy.answer(data, "tcp")
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_dns(proxy: DnsProxy, port: int, hosts: tuple[str, ...] = ("127.0.0.1", "::1")):
    """Start UDP and TCP listeners on each host that exists here; returns closers."""
    loop = asyncio.get_running_loop()
    closers = []
    limiter = asyncio.Semaphore(MAX_TCP_CLIENTS)

    async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if limiter.locked():
            writer.close()
            return
        async with limiter:
            await _serve_tcp_client(proxy, reader, writer)

    for host in hosts:
        with contextlib.suppress(OSError):  # no ::1 in a namespace without IPv6
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(proxy), local_addr=(host, port)
            )
            closers.append(transport.close)
            server = await asyncio.start_server(
                tcp_client, host, port, reuse_address=True, backlog=LISTEN_BACKLOG
            )
            closers.append(server.close)
    if not closers:
        raise OSError(f"the DNS proxy could not listen on port {port}")
    return closers
