"""Header rewriting between downstream and upstream, and the sidecar's local replies."""

from __future__ import annotations

from proxy.config.model import HeaderOperations
from proxy.http.codec import Connection, Data, EndOfMessage, Request, Response
from proxy.pipeline import local_reply
from proxy.pipeline.rewrite import (
    apply_operations,
    forward_request_headers,
    forward_response_headers,
    new_request_id,
)


def parsed_request(raw: bytes) -> Request:
    codec = Connection("server")
    codec.receive_data(raw)
    event = codec.next_event()
    assert isinstance(event, Request)
    return event


def fixed_id() -> bytes:
    return b"generated-id"


def test_hop_by_hop_fields_go_and_forwarding_fields_are_added() -> None:
    request = parsed_request(
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: 5\r\n"
        b"X-Secret: 1\r\nTE: trailers\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
    )
    headers = forward_request_headers(request, "10.0.0.1", HeaderOperations(), fixed_id)
    names = [name for name, _ in headers]
    for gone in (b"connection", b"keep-alive", b"x-secret", b"te", b"expect"):
        assert gone not in names
    assert (b"host", b"svc") in headers
    assert (b"content-length", b"0") in headers
    assert (b"x-request-id", b"generated-id") in headers
    assert (b"x-forwarded-proto", b"http") in headers
    assert (b"x-forwarded-for", b"10.0.0.1") in headers


def test_existing_request_id_and_proto_are_kept_and_xff_is_appended_to() -> None:
    request = parsed_request(
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Request-Id: abc\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n"
    )
    headers = forward_request_headers(request, "10.0.0.1", HeaderOperations(), fixed_id)
    assert [v for n, v in headers if n == b"x-request-id"] == [b"abc"]
    assert [v for n, v in headers if n == b"x-forwarded-proto"] == [b"https"]
    assert [v for n, v in headers if n == b"x-forwarded-for"] == [
        b"1.1.1.1",
        b"2.2.2.2, 10.0.0.1",
    ]


def test_chunked_request_is_reframed_chunked_for_the_upstream() -> None:
    request = parsed_request(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n")
    headers = forward_request_headers(request, "10.0.0.1", HeaderOperations(), fixed_id)
    upstream = Connection("client")
    wire = upstream.send(Request(b"POST", b"/", headers))
    wire += upstream.send(Data(b"abc")) + upstream.send(EndOfMessage())
    assert b"transfer-encoding: chunked\r\n" in wire.lower()
    assert wire.endswith(b"3\r\nabc\r\n0\r\n\r\n")


def test_upgrade_requests_keep_their_upgrade_fields() -> None:
    request = parsed_request(
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    headers = forward_request_headers(request, "10.0.0.1", HeaderOperations(), fixed_id)
    assert (b"connection", b"upgrade") in headers
    assert (b"upgrade", b"websocket") in headers


def test_operations_remove_then_set_then_add() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"b", b"3"), (b"c", b"4")]
    operations = HeaderOperations(set=(("b", "new"),), add=(("a", "again"),), remove=("c",))
    assert apply_operations(headers, operations) == [
        (b"a", b"1"),
        (b"b", b"new"),
        (b"a", b"again"),
    ]


def test_response_hop_by_hop_fields_go_and_operations_apply() -> None:
    response = Response(
        200, [(b"connection", b"close"), (b"content-length", b"2"), (b"server", b"x")]
    )
    headers = forward_response_headers(response, HeaderOperations(remove=("server",)))
    assert headers == [(b"content-length", b"2")]


def test_local_replies_carry_their_flag_and_a_well_formed_body() -> None:
    reply = local_reply.NO_HEALTHY_UPSTREAM
    assert (reply.status, reply.flag, reply.body) == (503, "UH", b"no healthy upstream")
    assert (b"content-length", str(len(reply.body)).encode()) in reply.headers()
    assert reply.headers() is not reply.headers()  # a fresh list: adapters append to it
    assert local_reply.TIMEOUT.status == 504
    assert local_reply.fault_abort(418).status == 418
    assert local_reply.bad_request(431, "header section too large").flag == "DPE"


def test_generated_request_ids_are_distinct_version_4_uuids() -> None:
    import uuid

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value.decode())
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed).encode() == value


def test_every_connection_line_names_fields_to_drop_both_ways() -> None:
    request = parsed_request(
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\n"
        b"Connection: x-b, X-Request-Id\r\nX-Request-Id: client\r\nX-C: 3\r\n\r\n"
    )
    headers = forward_request_headers(request, "10.0.0.1", HeaderOperations(), fixed_id)
    names = [name for name, _ in headers]
    assert b"x-a" not in names and b"x-b" not in names and b"x-c" in names
    # the client's id was addressed to us (Connection named it): the upstream gets a new one
    assert (b"x-request-id", b"generated-id") in headers
    upstream = Connection("client")
    upstream.send(Request(b"GET", b"/", [(b"host", b"svc")]))
    upstream.send(EndOfMessage())
    upstream.receive_data(
        b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: x-b\r\nX-A: 1\r\nX-B: 2\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    response = upstream.next_event()
    assert isinstance(response, Response)
    assert forward_response_headers(response, HeaderOperations()) == [(b"content-length", b"0")]
