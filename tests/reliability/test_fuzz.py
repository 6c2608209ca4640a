"""Issue 19, case 6: the parsers that take bytes or files from outside, fuzzed with hypothesis
for a bounded number of examples (more under ``make soak``). The HTTP/1.1 codec's properties
are in tests/unit/proxy/http/test_properties.py and run in every ``make test``; here are the
DNS codec (bytes from any app in the pod, and from upstream resolvers) and the mesh config
loader (a file an operator edits).

Pass: the only exception is the parser's own error type (DnsError, MeshConfigError), with a
message; nothing hangs (hypothesis reports an example over its deadline); an error reply is
never larger than the query it refuses. A crasher found here is kept as an ``@example``.
"""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.config.loader import MeshConfigError, parse_mesh
from proxy.dns.codec import (
    DnsError,
    Rcode,
    build_error,
    cache_ttl,
    encode_name,
    parse_query,
    parse_response,
    with_id_and_ttl,
)

from .conftest import Figure, soak_seconds

pytestmark = pytest.mark.no_lab

EXAMPLE_MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh.yaml"
# About 220 examples a second on this machine: a soak gives each of the four about a quarter.
EXAMPLES = 2000 if not soak_seconds() else max(2000, int(soak_seconds() * 50))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=1000,  # ms per example: a parser that loops is reported, not waited for
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # every run explores afresh; crashers are kept as examples in this file
)


def _query(name: str, qtype: int = 1, edns: bool = True) -> bytes:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1 if edns else 0)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if edns else b""
    return header + encode_name(name) + struct.pack("!HH", qtype, 1) + opt


SEEDS = [_query("backend.default.svc.cluster.local"), _query("a.b", 28, edns=False)]


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A real query with bytes flipped, cut, inserted or appended, or raw bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    packet = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(packet)))
        action = draw(st.sampled_from(("flip", "cut", "insert")))
        if action == "flip" and position < len(packet):
            packet[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del packet[position:]
        else:
            packet[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(packet)


def _answer_of(query: bytes, rdata_name: bytes) -> bytes:
    """A response to ``query``: the question echoed and one CNAME record, by pointer."""
    header = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    question = query[12:].split(b"\x00\x00\x29", 1)[0]  # without the OPT
    record = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(rdata_name)) + rdata_name
    return header + question + record


def test_6_the_dns_codec_refuses_any_query_bytes_with_its_own_error(figure: Figure) -> None:
    @FUZZ
    @given(mutated_packets())
    def check(packet: bytes) -> None:
        try:
            parse_query(packet)
        except DnsError as err:
            assert err.reason, packet
        reply = build_error(packet, Rcode.FORMERR)
        assert reply is None or len(reply) <= len(packet), packet

    check()
    figure("DNS queries fuzzed", EXAMPLES, "examples", "only DnsError; error reply <= query")


def test_6_the_dns_codec_refuses_any_response_bytes_with_its_own_error(figure: Figure) -> None:
    seed = _answer_of(SEEDS[0], encode_name("other.example"))

    @FUZZ
    @given(st.one_of(mutated_packets(), st.just(seed), _mutations_of(seed)))
    @example(bytes(_flip(bytearray(seed), [(2, 0xB6), (6, 1)])))  # TC=1, a record cut short
    def check(packet: bytes) -> None:
        try:
            response = parse_response(packet)
        except DnsError as err:
            assert err.reason, packet
            return
        cache_ttl(response)
        try:  # a truncated reply that parses may still not walk (the DNS proxy SERVFAILs)
            with_id_and_ttl(packet, 7, 1)
        except DnsError as err:
            assert err.reason, packet

    check()
    figure("DNS responses fuzzed", EXAMPLES, "examples", "only DnsError")


def _mutations_of(packet: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(
        st.tuples(st.integers(0, len(packet) - 1), st.integers(0, 255)), max_size=6
    ).map(lambda flips: bytes(_flip(bytearray(packet), flips)))


def _flip(packet: bytearray, flips: list[tuple[int, int]]) -> bytearray:
    for position, value in flips:
        packet[position] = value
    return packet


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key and index path in a YAML document."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "1s", "-1s", "1e9s", "0.0.0.0", "::", "10.0.0.0/33", "*", "tcp", "http"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)


def test_6_the_config_loader_refuses_any_edit_of_the_example_with_a_named_error(
    figure: Figure,
) -> None:
    """The example mesh with up to four fields replaced by anything YAML can hold, or
    removed: it loads, or MeshConfigError says why."""
    document = yaml.safe_load(EXAMPLE_MESH.read_text())
    paths = _paths(document)
    parse_mesh(EXAMPLE_MESH.read_text(), "mesh.yaml")  # the seed itself loads

    @FUZZ
    @given(st.lists(st.tuples(st.sampled_from(paths), st.booleans(), VALUES), max_size=4))
    def check(edits: list[tuple[tuple, bool, Any]]) -> None:
        edited = copy.deepcopy(document)
        for path, remove, value in edits:
            parent = edited
            try:
                for step in path[:-1]:
                    parent = parent[step]
                if remove:
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed or replaced this path
        text = yaml.safe_dump(edited)
        try:
            parse_mesh(text, "mesh.yaml")
        except MeshConfigError as err:
            assert str(err), text

    check()
    figure("mesh file edits fuzzed", EXAMPLES, "examples", "loads or MeshConfigError")


def test_6_the_config_loader_refuses_any_text_with_a_named_error(figure: Figure) -> None:
    @FUZZ
    @given(st.text(max_size=400))
    def check(text: str) -> None:
        try:
            parse_mesh(text, "mesh.yaml")
        except MeshConfigError as err:
            assert str(err), text

    check()
    figure("mesh file texts fuzzed", EXAMPLES, "examples", "loads or MeshConfigError")
