"""gRPC's pure rules: the grpc-timeout grammar, statuses, retry names and our own replies."""

from __future__ import annotations

import pytest

from proxy.pipeline import grpc, local_reply


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1S", 1.0),
        (b"300m", 0.3),
        (b"2M", 120.0),
        (b"1H", 3600.0),
        (b"250000u", 0.25),
        (b"99999999n", 0.099999999),
        (b"0m", 0.0),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert grpc.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [None, b"", b"S", b"10", b"10s", b"123456789S", b"-1S", b"1.5S", b" 1S", b"1 S", b"1SS"],
)
def test_malformed_grpc_timeouts_are_ignored(value: bytes | None) -> None:
    assert grpc.parse_timeout(value) is None


@pytest.mark.parametrize(
    ("route", "client", "expected"),
    [(None, None, None), (2.0, None, 2.0), (None, 0.5, 0.5), (2.0, 0.5, 0.5), (0.5, 2.0, 0.5)],
)
def test_the_deadline_is_the_tighter_of_route_and_client(route, client, expected) -> None:
    assert grpc.request_deadline(route, client) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc;charset=utf-8", True),
        (b"application/grpc-web", False),
        (b"application/json", False),
    ],
)
def test_a_grpc_call_is_told_by_its_content_type(content_type: bytes, expected: bool) -> None:
    assert grpc.is_grpc([(b"te", b"trailers"), (b"content-type", content_type)]) is expected
    assert grpc.is_grpc([]) is False


def test_status_in_a_head_or_trailers() -> None:
    assert grpc.status_of([(b"grpc-status", b"14"), (b"grpc-message", b"x")]) == 14
    assert grpc.status_of([(b"grpc-status", b"0")]) == 0
    assert grpc.status_of([(b"grpc-status", b"oops")]) is None
    assert grpc.status_of([(b"content-type", b"application/grpc")]) is None


@pytest.mark.parametrize(
    ("status", "name"),
    [(14, "unavailable"), (1, "cancelled"), (4, "deadline-exceeded"), (8, "resource-exhausted"),
     (13, "internal"), (0, None), (5, None), (None, None)],
)  # fmt: skip
def test_retry_names_of_statuses(status: int | None, name: str | None) -> None:
    assert grpc.retry_outcome(status) == name


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (local_reply.NO_HEALTHY_UPSTREAM, 14),
        (local_reply.CONNECT_FAILURE, 14),
        (local_reply.OVERFLOW, 14),
        (local_reply.TIMEOUT, 4),
        (local_reply.NO_ROUTE, 12),
        (local_reply.BAD_UPSTREAM_RESPONSE, 14),
        (local_reply.fault_abort(500), 2),
    ],
)
def test_local_replies_are_trailers_only_grpc_answers(reply, code: int) -> None:
    status, headers = grpc.local_reply_headers(reply)
    assert status == code
    assert all(not name.startswith(b":") for name, _ in headers)  # the codec adds :status
    fields = dict(headers)
    assert fields[b"content-type"] == b"application/grpc"
    assert fields[b"grpc-status"] == str(code).encode()


def test_grpc_message_is_percent_encoded() -> None:
    assert grpc.percent_encode(b"no healthy upstream") == b"no healthy upstream"
    assert grpc.percent_encode(b"100% \xc3\xa9\n") == b"100%25 %C3%A9%0A"
