"""The HTTP routing decisions: matching, weighted destinations, retry rules, back-off, budget."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxy.config.model import (
    HttpRoute,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    Service,
    ServicePort,
    StringMatch,
)
from proxy.outcomes import Outcome
from proxy.pipeline.router import (
    HttpRouter,
    backoff_delay,
    header_value,
    is_retriable,
    pick_destination,
    request_path,
    retry_budget_allows,
)


def service(*routes: HttpRoute) -> Service:
    return Service("svc", "default", (), (ServicePort("http", 80, "http"),), http_routes=routes)


def route(name: str, *matches: RouteMatch) -> HttpRoute:
    return HttpRoute(name=name, matches=matches)


def exact(value: str) -> StringMatch:
    return StringMatch("exact", value)


def prefix(value: str) -> StringMatch:
    return StringMatch("prefix", value)


def regex(value: str) -> StringMatch:
    return StringMatch("regex", value)


def matched(router: HttpRouter, target: bytes, method=b"GET", host=b"svc", headers=()) -> str:
    found = router.match(method, target, host, list(headers))
    return found.route.name if found is not None else "none"


def test_a_service_without_routes_has_one_default_route_matching_everything() -> None:
    router = HttpRouter(service())
    assert matched(router, b"/anything", method=b"DELETE") == "default"


def test_first_matching_route_wins_in_order() -> None:
    router = HttpRouter(
        service(
            route("api", RouteMatch(uri=prefix("/api"))),
            route("api-v2", RouteMatch(uri=prefix("/api/v2"))),
            route("rest"),
        )
    )
    assert matched(router, b"/api/v2/x") == "api"  # not the more specific later one
    assert matched(router, b"/other") == "rest"


def test_uri_matches_the_path_without_query_and_in_absolute_form() -> None:
    router = HttpRouter(service(route("exact", RouteMatch(uri=exact("/a")))))
    assert matched(router, b"/a?x=/b") == "exact"
    assert matched(router, b"http://svc:80/a?q") == "exact"
    assert matched(router, b"/a/") == "none"
    assert matched(router, b"/ab") == "none"


def test_regex_must_match_the_whole_path() -> None:
    router = HttpRouter(service(route("ids", RouteMatch(uri=regex("/items/[0-9]+")))))
    assert matched(router, b"/items/42") == "ids"
    assert matched(router, b"/items/42/edit") == "none"
    assert matched(router, b"/x/items/42") == "none"


def test_conditions_of_one_match_are_anded_and_matches_are_ored() -> None:
    both = RouteMatch(method=exact("POST"), headers=(("x-canary", exact("yes")),))
    router = HttpRouter(service(route("r", both, RouteMatch(authority=exact("svc:8080")))))
    assert matched(router, b"/", b"POST", headers=[(b"x-canary", b"yes")]) == "r"
    assert matched(router, b"/", b"GET", headers=[(b"x-canary", b"yes")]) == "none"
    assert matched(router, b"/", b"POST") == "none"  # an absent header never matches
    assert matched(router, b"/", b"GET", host=b"svc:8080") == "r"
    assert matched(router, b"/", b"GET", host=None) == "none"


def test_a_header_sent_twice_is_matched_as_its_joined_value() -> None:
    router = HttpRouter(service(route("r", RouteMatch(headers=(("x-a", exact("1,2")),)))))
    assert matched(router, b"/", headers=[(b"x-a", b"1"), (b"x-a", b"2")]) == "r"
    assert header_value([(b"x-a", b"1")], b"x-b") is None


@pytest.mark.parametrize(
    ("target", "path"),
    [(b"/", b"/"), (b"/a?b", b"/a"), (b"http://h/a?b", b"/a"), (b"http://h", b"/"), (b"*", b"*")],
)
def test_request_path(target: bytes, path: bytes) -> None:
    assert request_path(target) == path


def test_weighted_destinations_split_by_their_bands() -> None:
    split = (RouteDestination("v1", 90), RouteDestination("v2", 10))
    assert pick_destination(split, 0.0).subset == "v1"
    assert pick_destination(split, 89.999).subset == "v1"
    assert pick_destination(split, 90.0).subset == "v2"
    assert pick_destination(split, 99.999).subset == "v2"
    rng = random.Random(7)
    shares = Counter(pick_destination(split, rng.random() * 100).subset for _ in range(20000))
    assert 0.09 < shares["v2"] / 20000 < 0.11


@pytest.mark.parametrize(
    ("retry_on", "outcome", "expected"),
    [
        (("5xx",), 500, True),
        (("5xx",), 503, True),
        (("5xx",), 404, False),
        (("gateway-error",), 502, True),
        (("gateway-error",), 500, False),
        (("retriable-status-codes",), 503, True),
        (("retriable-status-codes",), 502, False),
        (("connect-failure",), Outcome.CONNECT_FAILURE, True),
        (("connect-failure",), Outcome.RESET, False),
        (("connect-failure",), 503, False),
        (("reset",), Outcome.RESET, True),
        (("reset",), Outcome.PER_TRY_TIMEOUT, True),
        (("retriable-status-codes",), Outcome.PER_TRY_TIMEOUT, False),
        (("5xx",), Outcome.CONNECT_FAILURE, True),
        (("5xx",), Outcome.PER_TRY_TIMEOUT, True),
        (("5xx", "connect-failure", "reset"), Outcome.NO_HEALTHY_UPSTREAM, False),
        # gRPC statuses by name: retried only when named, never by 5xx / reset
        (("unavailable",), "unavailable", True),
        (("cancelled", "unavailable"), "cancelled", True),
        (("5xx", "reset"), "unavailable", False),
        (("unavailable",), "deadline-exceeded", False),
        (("unavailable",), 503, False),
    ],
)
def test_retry_on_conditions(retry_on: tuple[str, ...], outcome, expected: bool) -> None:
    policy = RetryPolicy(retry_on=retry_on, retriable_status_codes=(503,))
    assert is_retriable(policy, outcome) is expected


def test_backoff_is_full_jitter_doubling_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base=0.025, backoff_max=0.1)
    assert backoff_delay(policy, 1, 0.999) == pytest.approx(0.025 * 0.999)
    assert backoff_delay(policy, 2, 0.5) == pytest.approx(0.025)
    assert backoff_delay(policy, 3, 0.999) == pytest.approx(0.1 * 0.999)
    assert backoff_delay(policy, 30, 0.999) == pytest.approx(0.1 * 0.999)
    assert backoff_delay(policy, 1, 0.0) == 0.0


def test_retry_budget_is_a_share_of_requests_with_a_floor() -> None:
    assert retry_budget_allows(1, 2, 20.0, 3)  # below the floor of 3
    assert not retry_budget_allows(1, 3, 20.0, 3)
    assert retry_budget_allows(100, 19, 20.0, 3)  # 20% of 100 in flight
    assert not retry_budget_allows(100, 20, 20.0, 3)
