"""Capture what crosses a link, as tcpdump would, with a raw packet socket (the lab has no
tcpdump): ``python3 capture.py IFACE PORT OUT`` prints "ready", then writes to OUT the TCP
payload of every frame to or from PORT until its stdin closes. IPv4 only, no reassembly: a
test searches the bytes for markers (a TLS record header, a plaintext string)."""

from __future__ import annotations

import select
import socket
import struct
import sys

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 263, 1, 1


def tcp_payload(frame: bytes, port: int) -> bytes | None:
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":  # IPv4 only
        return None
    ip = frame[14:]
    header_length = (ip[0] & 0x0F) * 4
    if ip[9] != 6:  # TCP
        return None
    tcp = ip[header_length:]
    if len(tcp) < 20:
        return None
    source, destination = struct.unpack("!HH", tcp[:4])
    if port not in (source, destination):
        return None
    offset = (tcp[12] >> 4) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    return tcp[offset : total - header_length]


def main() -> int:
    interface, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    # Promiscuous, as tcpdump makes it: a bridge device otherwise sees only frames for itself,
    # not those it forwards between its ports.
    membership = struct.pack("iHH8s", socket.if_nametoindex(interface), PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
    print("ready", flush=True)
    with open(out, "wb") as sink:
        while True:
            readable, _, _ = select.select([sock, sys.stdin], [], [], 5)
            if sys.stdin in readable and not sys.stdin.readline():
                break
            if sock in readable:
                payload = tcp_payload(sock.recv(65535), port)
                if payload:
                    sink.write(payload)
                    sink.flush()  # what was seen is on disk even if the capture is killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
