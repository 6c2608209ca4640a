"""detour-ebpf end to end with no iptables at all: connect4/connect6 + sockops + getsockopt.

Unmodified curl in the pod reaches the stand-in sidecar, which learns the original destination
through the very getsockopt call the proxy makes (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
"""

from __future__ import annotations

import socket
import struct

import pytest
from support.ebpf import counters, ebpf, entries, pins_of

from .conftest import APP_UID, FAR4, FAR6, PROXY_UID

# argv: family (4, 6 or 46 = dual-stack socket to a v4-mapped address), address. Prints the
# peer getpeername() reports, then the body of the reply.
PEER_CLIENT = """
import socket, sys
family, address = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_STREAM)
if family == "46":
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    address = "::ffff:" + address
s.settimeout(5)
s.connect((address, 8080))
print("peer=%s:%d" % s.getpeername()[:2])
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
reply = b""
while chunk := s.recv(4096):
    reply += chunk
print(reply.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
"""


def test_no_iptables_rule_and_ipv4_is_redirected_with_its_original(pod):
    assert pod.curl(f"http://{FAR4}:8080/") == "direct original=none"  # before attaching
    pod.attach()
    # The CLI has exited: the attachment and pins outlive it.
    status = ebpf("status", "--cgroup", str(pod.cgroup))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{pod.cgroup} ok" in status.stdout

    assert pod.curl(f"http://{FAR4}:8080/") == f"sidecar original={FAR4}:8080"
    # The proxy's own uid is never redirected (loop prevention in the program).
    assert pod.curl(f"http://{FAR4}:8080/", uid=PROXY_UID) == "direct original=none"
    # Loopback destinations are left alone: the listener answers, but nothing was recorded.
    assert pod.curl("http://127.0.0.1:15001/") == "sidecar original=none"
    for tool in ("iptables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        assert "-A " not in pod.ns.run(tool).stdout, f"{tool} shows a rule"

    assert counters(pod.cgroup)["connect_redirected"] == 1
    assert counters(pod.cgroup)["original_dst_answered"] == 1
    ebpf("detach", "--cgroup", str(pod.cgroup), check=True)
    assert pod.curl(f"http://{FAR4}:8080/") == "direct original=none"
    assert ebpf("status", "--cgroup", str(pod.cgroup)).stdout == "no attachments\n"


def test_ipv6_is_redirected_to_the_ipv6_listener_with_a_sockaddr_in6(pod):
    pod.attach()
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6") == f"sidecar original={FAR6}:8080"
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6", uid=PROXY_UID) == "direct original=none"
    assert pod.curl("http://[::1]:15001/", "-6") == "sidecar original=none"


def test_ipv6_off_leaves_ipv6_alone_but_still_captures_v4_mapped(pod):
    pod.attach("--ipv6", "off")
    assert pod.curl(f"http://[{FAR6}]:8080/", "-6") == "direct original=none"
    done = pod.run("/usr/bin/python3", "-c", PEER_CLIENT, "46", FAR4)
    assert done.stdout.split("\n")[1] == f"sidecar original={FAR4}:8080"


@pytest.mark.parametrize(
    ("family", "address", "peer"),
    [
        ("4", FAR4, f"{FAR4}:8080"),
        ("6", FAR6, f"{FAR6}:8080"),
        # A dual-stack socket dialling a v4-mapped address stays IPv4: the IPv4 listener.
        ("46", FAR4, f"::ffff:{FAR4}:8080"),
    ],
)
def test_the_app_sees_the_address_it_dialled_and_the_sidecar_sees_the_original(
    pod, family, address, peer
):
    pod.attach()
    done = pod.run("/usr/bin/python3", "-c", PEER_CLIENT, family, address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [f"peer={peer}", f"sidecar original={address}:8080"]


def _forge_handoff(cgroup, client_port: int) -> None:
    """A record for 127.0.0.1:client_port as a leaked entry would look (an old connection's
    sequence numbers), pointing at 203.0.113.9:443."""
    from interceptor import kernel

    ip = b"\0" * 10 + b"\xff\xff" + socket.inet_aton("127.0.0.1")
    key = ip + struct.pack("<I", client_port)
    origin = ip[:12] + socket.inet_aton("203.0.113.9") + struct.pack("!H", 443) + b"\x01\0"
    value = origin + struct.pack("<II", 12345, 67890)
    with kernel.pinned(pins_of(cgroup) / "map_handoff_by_client") as fd:
        kernel.map_update(fd, key, value, "a forged handoff")


def test_a_stale_record_never_answers_for_a_new_connection(pod):
    pod.attach()
    _forge_handoff(pod.cgroup, 42424)
    assert entries(pod.cgroup)["handoff_by_client"] == 1
    # A direct connection from that very client port: the record is not its own.
    answer = pod.curl("http://127.0.0.1:15001/", "--local-port", "42424", uid=APP_UID)
    assert answer == "sidecar original=none"
    assert counters(pod.cgroup)["record_rejected"] == 1
    assert entries(pod.cgroup)["handoff_by_client"] == 0, "the stale record was dropped"
