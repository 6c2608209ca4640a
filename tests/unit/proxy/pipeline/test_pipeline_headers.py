"""Header rewriting as the two ends of an exchange see it: the route's request operations
reach the upstream try, its response operations reach the client, and hop-by-hop fields never
cross the proxy in either direction."""

from __future__ import annotations

from typing import Any

import pytest
from support.pipeline_fakes import (
    PEER,
    Answer,
    ConnectFailure,
    FakeTryFactory,
    PipelineHarness,
    get,
    mesh_yaml,
)
from support.virtual_time import VirtualTimeLoop

from proxy.http.events import Headers


def harness(loop: VirtualTimeLoop, tries: FakeTryFactory, **route: Any) -> PipelineHarness:
    return PipelineHarness(loop, mesh_yaml([{"name": "all", **route}]), tries)


def names(headers: Headers) -> set[bytes]:
    return {name for name, _ in headers}


def test_request_operations_reach_the_upstream(loop: VirtualTimeLoop) -> None:
    """``set`` replaces the client's value, ``add`` appends to it, ``remove`` drops it; other
    fields pass untouched, and the sidecar's own fields are added (x-forwarded-for with the
    peer appended, x-forwarded-proto, a fresh x-request-id)."""
    tries = FakeTryFactory(Answer())
    operations = {"set": {"x-set": "new"}, "add": {"x-add": "one"}, "remove": ["x-drop"]}
    h = harness(loop, tries, headers={"request": operations})

    h.run(
        get(
            b"/p",
            (b"x-set", b"old"),
            (b"x-add", b"zero"),
            (b"x-drop", b"gone"),
            (b"x-keep", b"k"),
            (b"x-forwarded-for", b"192.0.2.1"),
        )
    )

    upstream = tries.tries[0]
    assert upstream.header(b"x-set") == [b"new"]
    assert upstream.header(b"x-add") == [b"zero", b"one"]
    assert upstream.header(b"x-drop") == []
    assert upstream.header(b"x-keep") == [b"k"]
    assert upstream.header(b"host") == [b"backend"]
    assert upstream.header(b"x-forwarded-for") == [b"192.0.2.1, " + PEER.encode()]
    assert upstream.header(b"x-forwarded-proto") == [b"http"]
    (request_id,) = upstream.header(b"x-request-id")
    assert len(request_id) == 36 and request_id.count(b"-") == 4


def test_request_operations_apply_to_every_try(loop: VirtualTimeLoop) -> None:
    """A retry carries the route's rewritten request too, and the same x-request-id."""
    tries = FakeTryFactory(Answer(503), Answer())
    h = harness(loop, tries, headers={"request": {"set": {"x-set": "new"}}})

    h.run(get(b"/", (b"x-set", b"old"), (b"x-request-id", b"client-id")))

    assert [t.header(b"x-set") for t in tries.tries] == [[b"new"], [b"new"]]
    assert [t.header(b"x-request-id") for t in tries.tries] == [[b"client-id"]] * 2


def test_response_operations_reach_the_client(loop: VirtualTimeLoop) -> None:
    """The route's response operations rewrite the upstream's head on its way to the client;
    the body and the trailers pass as they came."""
    upstream_headers = [
        (b"server", b"app"),
        (b"x-route", b"upstream"),
        (b"x-extra", b"0"),
        (b"content-type", b"text/plain"),
    ]
    answer = Answer(200, upstream_headers, [b"body"], trailers=[(b"x-checksum", b"1")])
    operations = {"set": {"x-route": "canary"}, "add": {"x-extra": "1"}, "remove": ["server"]}
    h = harness(loop, FakeTryFactory(answer), headers={"response": operations})

    result = h.run()

    sink = result.sink
    assert sink.header(b"x-route") == [b"canary"]
    assert sink.header(b"x-extra") == [b"0", b"1"]
    assert sink.header(b"server") == []
    assert sink.header(b"content-type") == [b"text/plain"]
    assert (sink.body, sink.trailers) == (b"body", [(b"x-checksum", b"1")])


REQUEST_HOP_BY_HOP = [
    (b"connection", b"keep-alive, x-private"),
    (b"x-private", b"only for the next hop"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"trailer", b"x-t"),
    (b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
    (b"expect", b"100-continue"),
]


def test_hop_by_hop_request_fields_do_not_reach_the_upstream(loop: VirtualTimeLoop) -> None:
    """RFC 9110 §7.6.1: the hop-by-hop fields, and every field the Connection header names,
    end at the proxy (the codec re-frames the body for its own hop); end-to-end fields pass
    in their order. ``Expect`` too: the sidecar answered 100-continue itself."""
    tries = FakeTryFactory(Answer())
    h = harness(loop, tries)

    h.run(get(b"/", (b"accept", b"*/*"), *REQUEST_HOP_BY_HOP, (b"x-after", b"1")))

    forwarded = tries.tries[0].request.headers  # type: ignore[union-attr]
    assert not names(forwarded) & names(REQUEST_HOP_BY_HOP)
    end_to_end = [h for h in forwarded if h[0] in (b"host", b"accept", b"x-after")]
    assert end_to_end == [(b"host", b"backend"), (b"accept", b"*/*"), (b"x-after", b"1")]


RESPONSE_HOP_BY_HOP = [
    (b"connection", b"close, x-internal"),
    (b"x-internal", b"for the proxy"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"proxy-authenticate", b"Basic"),
    (b"trailer", b"x-checksum"),
    (b"upgrade", b"h2c"),
]


@pytest.mark.parametrize("with_body", [True, False])
def test_hop_by_hop_response_fields_do_not_reach_the_client(
    loop: VirtualTimeLoop, with_body: bool
) -> None:
    """The upstream's hop-by-hop fields (and the ones its Connection names) stop at the
    proxy, whether the response has a body or ends with its head."""
    headers = [(b"content-type", b"text/html"), *RESPONSE_HOP_BY_HOP, (b"etag", b'"v1"')]
    answer = Answer(200, headers, [b"<p>"] if with_body else [])
    h = harness(loop, FakeTryFactory(answer))

    result = h.run()

    assert not names(result.sink.headers) & names(RESPONSE_HOP_BY_HOP)
    assert result.sink.headers == [(b"content-type", b"text/html"), (b"etag", b'"v1"')]
    assert result.sink.complete


def test_response_operations_apply_to_a_local_reply_too(loop: VirtualTimeLoop) -> None:
    """Envoy's router finalizes its own replies (503, 504) with the route's response headers
    (``modify_headers_`` → ``finalizeResponseHeaders``): a client of a route that sets
    ``x-route`` sees it on the 503 of an upstream it could not reach as well."""
    tries = FakeTryFactory(ConnectFailure(), ConnectFailure(), ConnectFailure())
    h = harness(loop, tries, headers={"response": {"set": {"x-route": "canary"}}})

    result = h.run()

    assert result.sink.status == 503
    assert result.sink.header(b"x-route") == [b"canary"]


def test_the_try_number_replaces_a_routes_attempt_count(loop: VirtualTimeLoop) -> None:
    """The loader lets a route set ``x-envoy-attempt-count``; the pipeline's own count must
    still be the only one each try carries (Envoy's router sets it last, replacing)."""
    tries = FakeTryFactory(Answer(503), Answer())
    h = harness(loop, tries, headers={"request": {"set": {"x-envoy-attempt-count": "7"}}})

    h.run()

    assert [t.header(b"x-envoy-attempt-count") for t in tries.tries] == [[b"1"], [b"2"]]
