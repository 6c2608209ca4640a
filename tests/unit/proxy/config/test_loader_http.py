"""loader.parse_mesh for HTTP routing: subsets, ``http`` routes and the HTTP traffic policy.

Like test_loader.py, every refusal checks the exact path and value an operator would read.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from proxy.config.loader import MeshConfigError, parse_mesh
from proxy.config.model import (
    DEFAULT_HTTP_ROUTE,
    CircuitBreaker,
    Fault,
    HeaderOperations,
    HttpRoute,
    RetryPolicy,
    RouteDestination,
    RouteMatch,
    Service,
    StringMatch,
    Subset,
    TrafficPolicy,
)

SOURCE = "mesh.yaml"


def parse(document: dict[str, Any] | str) -> Service:
    """The only service of ``document``."""
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    (service,) = parse_mesh(text, SOURCE).services
    return service


def refusal(document: dict[str, Any] | str) -> MeshConfigError:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    with pytest.raises(MeshConfigError) as caught:
        parse_mesh(text, SOURCE)
    return caught.value


def with_service(**fields: Any) -> dict[str, Any]:
    """One service with an http port and two subsets, ``fields`` replacing or adding keys."""
    service = {
        "name": "reviews",
        "ports": [{"name": "http", "port": 9080, "protocol": "http"}],
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ],
        **fields,
    }
    return {"services": [service]}


def with_route(**route: Any) -> dict[str, Any]:
    return with_service(http=[route])


def with_retries(**retries: Any) -> dict[str, Any]:
    return with_route(retries=retries)


def with_headers(**operations: Any) -> dict[str, Any]:
    return with_route(headers={"request": operations})


def with_match(**match: Any) -> dict[str, Any]:
    return with_route(match=[match])


def with_policy(**policy: Any) -> dict[str, Any]:
    return with_service(traffic_policy=policy)


# --- the full schema --------------------------------------------------------------------------

FULL = """
services:
  - name: reviews
    ports: [{name: http, port: 9080, protocol: http}]
    endpoints:
      - {address: 10.88.0.21, labels: {version: v1}}
      - {address: 10.88.0.22, labels: {version: v2}}
    subsets:
      - name: v1
        labels: {version: v1}
      - name: v2
        labels: {version: v2, track: canary}
    http:
      - name: canary
        match:
          - uri: {prefix: /api}
            method: {exact: GET}
            authority: {exact: reviews}
            headers:
              X-Canary: {exact: "yes"}
              x-user: {regex: "^(alice|bob)$"}
          - uri: {regex: "/v[0-9]+/.*"}
        route:
          - subset: v2
            weight: 10
          - subset: v1
            weight: 90
        timeout: 2s
        retries:
          attempts: 3
          per_try_timeout: 500ms
          retry_on: 5xx, connect-failure,retriable-status-codes
          retriable_status_codes: [503, 502]
          backoff_base: 25ms
          backoff_max: 250ms
        headers:
          request:  {set: {X-A: "1"}, add: {x-b: "2"}, remove: [x-c]}
          response: {set: {}, add: {}, remove: []}
        fault:
          delay: {percentage: 10, fixed_delay: 100ms}
          abort: {percentage: 0.5, http_status: 503}
      - route: [{subset: v1}]
    traffic_policy:
      circuit_breaker: {max_connections: 1024, max_pending: 512, max_requests: 256,
                        retry_budget_percent: 12.5, min_retry_concurrency: 0}
      http_idle_timeout: 1h
      max_requests_per_connection: 100
"""


def test_full_example_parses_into_exactly_the_model() -> None:
    reviews = parse(FULL)
    assert reviews.subsets == (
        Subset("v1", (("version", "v1"),)),
        Subset("v2", (("track", "canary"), ("version", "v2"))),  # labels sorted
    )
    canary = HttpRoute(
        name="canary",
        matches=(
            RouteMatch(
                uri=StringMatch("prefix", "/api"),
                method=StringMatch("exact", "GET"),
                authority=StringMatch("exact", "reviews"),
                headers=(
                    ("x-canary", StringMatch("exact", "yes")),  # name lowercased
                    ("x-user", StringMatch("regex", "^(alice|bob)$")),  # the pattern, as text
                ),
            ),
            RouteMatch(uri=StringMatch("regex", "/v[0-9]+/.*")),
        ),
        destinations=(RouteDestination("v2", 10), RouteDestination("v1", 90)),
        timeout=2.0,
        retries=RetryPolicy(
            attempts=3,
            per_try_timeout=0.5,
            retry_on=("5xx", "connect-failure", "retriable-status-codes"),
            retriable_status_codes=(503, 502),
            backoff_base=0.025,
            backoff_max=0.25,
        ),
        request_headers=HeaderOperations(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
        response_headers=HeaderOperations(),
        fault=Fault(delay_percent=10.0, delay=0.1, abort_percent=0.5, abort_status=503),
    )
    fallback = HttpRoute(name="route-1", destinations=(RouteDestination("v1", 100),))
    assert reviews.http_routes == (canary, fallback)
    assert reviews.routes == (canary, fallback)
    assert reviews.policy == TrafficPolicy(
        circuit_breaker=CircuitBreaker(1024, 512, 256, 12.5, 0),
        http_idle_timeout=3600.0,
        max_requests_per_connection=100,
    )
    assert isinstance(reviews.policy.circuit_breaker.retry_budget_percent, float)


# --- defaults ---------------------------------------------------------------------------------


def test_service_without_http_routes_uses_the_default_route() -> None:
    reviews = parse(with_service())
    assert reviews.http_routes == ()
    assert reviews.routes == (DEFAULT_HTTP_ROUTE,)


def test_an_empty_route_gets_every_default() -> None:
    assert parse(with_route()).http_routes == (HttpRoute(name="route-0"),)


def test_null_sections_of_a_route_mean_their_defaults() -> None:
    text = (
        "services:\n- name: a\n  ports: [{port: 80, protocol: http}]\n  http:\n"
        "  - {match: ~, route: ~, timeout: ~, retries: ~, headers: ~, fault: ~}\n"
    )
    assert parse(text).http_routes == (HttpRoute(name="route-0"),)


def test_an_empty_route_list_means_all_endpoints() -> None:
    route = parse(with_route(route=[])).http_routes[0]
    assert route.destinations == (RouteDestination(None, 100),)


def test_a_destination_without_subset_means_all_endpoints() -> None:
    route = parse(with_route(route=[{"weight": 100}])).http_routes[0]
    assert route.destinations == (RouteDestination(None, 100),)


def test_a_split_may_give_a_destination_weight_zero() -> None:
    split = [{"subset": "v1", "weight": 100}, {"subset": "v2", "weight": 0}]
    route = parse(with_route(route=split)).http_routes[0]
    assert route.destinations == (RouteDestination("v1", 100), RouteDestination("v2", 0))


def test_route_names_default_to_their_index() -> None:
    routes = parse(with_service(http=[{}, {"name": "named"}, {}])).http_routes
    assert [r.name for r in routes] == ["route-0", "named", "route-2"]


def test_empty_retries_are_the_model_defaults() -> None:
    assert parse(with_retries()).http_routes[0].retries == RetryPolicy()


def test_retries_can_be_turned_off() -> None:
    assert parse(with_retries(attempts=0)).http_routes[0].retries == RetryPolicy(attempts=0)


def test_retry_on_as_a_list_equals_the_string() -> None:
    listed = parse(with_retries(retry_on=["reset", "gateway-error"])).http_routes[0].retries
    text = parse(with_retries(retry_on=" reset ,gateway-error")).http_routes[0].retries
    assert listed == text == RetryPolicy(retry_on=("reset", "gateway-error"))


def test_grpc_statuses_are_retry_conditions_and_grpc_ports_take_routes() -> None:
    service = parse(
        with_service(
            ports=[{"port": 9000, "protocol": "grpc"}],
            http=[{"retries": {"retry_on": "unavailable,cancelled,5xx"}}],
        )
    )
    retries = service.http_routes[0].retries
    assert retries.retry_on == ("unavailable", "cancelled", "5xx")


def test_status_codes_with_the_default_retry_on() -> None:
    retries = parse(with_retries(retriable_status_codes=[502])).http_routes[0].retries
    assert retries.retriable_status_codes == (502,)
    assert "retriable-status-codes" in retries.retry_on


def test_backoff_base_may_rise_with_its_cap() -> None:
    retries = parse(with_retries(backoff_base="1s", backoff_max="1s")).http_routes[0].retries
    assert (retries.backoff_base, retries.backoff_max) == (1.0, 1.0)


def test_fault_with_only_an_abort() -> None:
    fault = parse(with_route(fault={"abort": {"percentage": 100, "http_status": 429}}))
    assert fault.http_routes[0].fault == Fault(abort_percent=100.0, abort_status=429)


def test_empty_fault_injects_nothing() -> None:
    assert parse(with_route(fault={})).http_routes[0].fault == Fault()


def test_routes_on_an_auto_port() -> None:
    reviews = parse(with_service(ports=[{"port": 9080, "protocol": "auto"}], http=[{}]))
    assert reviews.ports[0].protocol == "auto"
    assert reviews.ports[0].name == "auto-9080"
    assert reviews.http_routes == (HttpRoute(name="route-0"),)


def test_routes_need_only_one_http_port() -> None:
    ports = [{"port": 7000}, {"port": 9080, "protocol": "http"}]
    assert len(parse(with_service(ports=ports, http=[{}])).http_routes) == 1


def test_subsets_without_routes_are_kept() -> None:
    assert [s.name for s in parse(with_service()).subsets] == ["v1", "v2"]


def test_an_empty_header_value_is_allowed() -> None:
    route = parse(with_headers(set={"x-empty": ""})).http_routes[0]
    assert route.request_headers == HeaderOperations(set=(("x-empty", ""),))


def test_header_values_may_hold_tabs_and_utf8() -> None:
    route = parse(with_headers(set={"x-a": "a\tb", "x-b": "café"})).http_routes[0]
    assert route.request_headers.set == (("x-a", "a\tb"), ("x-b", "café"))


def test_a_regex_keeps_its_text_and_may_hold_utf8() -> None:
    match = parse(with_match(uri={"regex": "/café/[0-9]+"})).http_routes[0].matches[0]
    assert match.uri == StringMatch("regex", "/café/[0-9]+")


def test_header_tokens_may_use_every_tchar() -> None:
    name = "x-!#$%&'*+.^_`|~09az"
    match = parse(with_match(headers={name: {"prefix": ""}})).http_routes[0].matches[0]
    assert match.headers == ((name, StringMatch("prefix", "")),)


def test_an_empty_match_item_matches_everything() -> None:
    assert parse(with_route(match=[{}])).http_routes[0].matches == (RouteMatch(),)


def test_circuit_breaker_and_pool_defaults() -> None:
    policy = parse(with_policy(circuit_breaker={})).policy
    assert policy.circuit_breaker == CircuitBreaker()
    assert (policy.http_idle_timeout, policy.max_requests_per_connection) == (3600.0, 0)


# --- refusals ---------------------------------------------------------------------------------

S = "services[0]"
R = "services[0].http[0]"
RQ = f"{R}.headers.request"
RT = f"{R}.retries"
M = f"{R}.match[0]"
CB = f"{S}.traffic_policy.circuit_breaker"
TCP_ONLY = {"services": [{"name": "echo", "ports": [{"port": 7000}], "http": [{}]}]}

REFUSALS: list[tuple[str, dict[str, Any], str, object, str]] = [
    # subsets
    ("subsets not list", with_service(subsets={"v1": {}}), f"{S}.subsets", {"v1": {}}, "a list"),
    ("subset null", with_service(subsets=[None]), f"{S}.subsets[0]", None, "expected a mapping"),
    (
        "subset name missing",
        with_service(subsets=[{"labels": {"a": "b"}}]),
        f"{S}.subsets[0].name",
        None,
        "required",
    ),
    (
        "subset name not label",
        with_service(subsets=[{"name": "V1", "labels": {"a": "b"}}]),
        f"{S}.subsets[0].name",
        "V1",
        "not a DNS label",
    ),
    (
        "subset name duplicate",
        with_service(subsets=[{"name": "v1", "labels": {"a": "b"}}] * 2),
        f"{S}.subsets[1].name",
        "v1",
        "duplicate subset name (also services[0].subsets[0])",
    ),
    (
        "subset labels missing",
        with_service(subsets=[{"name": "v1"}]),
        f"{S}.subsets[0].labels",
        None,
        "required",
    ),
    (
        "subset labels empty",
        with_service(subsets=[{"name": "v1", "labels": {}}]),
        f"{S}.subsets[0].labels",
        {},
        "a subset needs at least one label",
    ),
    (
        "subset label number",
        with_service(subsets=[{"name": "v1", "labels": {"version": 1.0}}]),
        f"{S}.subsets[0].labels.version",
        1.0,
        "quote it",
    ),
    (
        "subset unknown key",
        with_service(subsets=[{"name": "v1", "label": {"a": "b"}}]),
        f"{S}.subsets[0].label",
        {"a": "b"},
        "did you mean 'labels'",
    ),
    # the http section and route names
    ("http not list", with_service(http={"route": []}), f"{S}.http", {"route": []}, "a list"),
    ("route null", with_service(http=[None]), R, None, "expected a mapping"),
    (
        "http on a tcp-only service",
        TCP_ONLY,
        f"{S}.http",
        [{}],
        "HTTP routes need a port with protocol http, http2, grpc or auto; this service has "
        "tcp-7000 (tcp)",
    ),
    ("route unknown key", with_route(routes=[]), f"{R}.routes", [], "did you mean 'route'"),
    ("route name caps", with_route(name="Canary"), f"{R}.name", "Canary", "not a DNS label"),
    ("route name null", with_route(name=None), f"{R}.name", None, "expected a string"),
    (
        "route name duplicate",
        with_service(http=[{"name": "a"}, {"name": "a"}]),
        f"{S}.http[1].name",
        "a",
        "duplicate route name (also services[0].http[0])",
    ),
    (
        "route name clashes with a default",
        with_service(http=[{}, {"name": "route-0"}]),
        f"{S}.http[1].name",
        "route-0",
        "duplicate route name (also services[0].http[0])",
    ),
    # destinations
    (
        "unknown subset",
        with_route(route=[{"subset": "v3"}]),
        f"{R}.route[0].subset",
        "v3",
        "not a subset of this service (v1, v2)",
    ),
    (
        "subset of a service without subsets",
        with_service(subsets=[], http=[{"route": [{"subset": "v1"}]}]),
        f"{R}.route[0].subset",
        "v1",
        "not a subset of this service (it defines none)",
    ),
    ("route not list", with_route(route={"subset": "v1"}), f"{R}.route", {"subset": "v1"}, "list"),
    ("destination null", with_route(route=[None]), f"{R}.route[0]", None, "expected a mapping"),
    (
        "destination unknown key",
        with_route(route=[{"subset": "v1", "wieght": 100}]),
        f"{R}.route[0].wieght",
        100,
        "did you mean 'weight'",
    ),
    (
        "split weight missing",
        with_route(route=[{"subset": "v1", "weight": 100}, {"subset": "v2"}]),
        f"{R}.route[1].weight",
        None,
        "required when a route has several destinations",
    ),
    (
        "split weights sum",
        with_route(route=[{"subset": "v1", "weight": 10}, {"subset": "v2", "weight": 80}]),
        f"{R}.route",
        [10, 80],
        "weights add up to 90, not 100",
    ),
    (
        "split weight high",
        with_route(route=[{"subset": "v1", "weight": 101}, {"subset": "v2", "weight": 0}]),
        f"{R}.route[0].weight",
        101,
        "out of range (0-100)",
    ),
    (
        "split weight negative",
        with_route(route=[{"subset": "v1", "weight": 110}, {"subset": "v2", "weight": -10}]),
        f"{R}.route[0].weight",
        110,
        "out of range (0-100)",
    ),
    (
        "weight float",
        with_route(route=[{"subset": "v1", "weight": 50.5}, {"subset": "v2", "weight": 49.5}]),
        f"{R}.route[0].weight",
        50.5,
        "expected an integer",
    ),
    (
        "single weight not 100",
        with_route(route=[{"subset": "v1", "weight": 50}]),
        f"{R}.route[0].weight",
        50,
        "a single destination takes all the traffic",
    ),
    (
        "duplicate destination",
        with_route(route=[{"subset": "v1", "weight": 50}, {"subset": "v1", "weight": 50}]),
        f"{R}.route[1].subset",
        "v1",
        "duplicate destination (also services[0].http[0].route[0])",
    ),
    # timeout
    ("timeout zero", with_route(timeout=0), f"{R}.timeout", 0, "greater than zero"),
    ("timeout unit", with_route(timeout="2 s"), f"{R}.timeout", "2 s", "like 250ms"),
    ("timeout long", with_route(timeout="25h"), f"{R}.timeout", "25h", "at most one day"),
    # matches
    ("match mapping", with_route(match={"uri": {}}), f"{R}.match", {"uri": {}}, "expected a list"),
    ("match null item", with_route(match=[None]), M, None, "expected a mapping"),
    ("match unknown key", with_match(url={"exact": "/"}), f"{M}.url", {"exact": "/"}, "'uri'"),
    (
        "match plain string",
        with_match(uri="/api"),
        f"{M}.uri",
        "/api",
        "expected a mapping with one of: exact, prefix, regex (e.g. {prefix: /api})",
    ),
    (
        "match two kinds",
        with_match(uri={"exact": "/", "prefix": "/"}),
        f"{M}.uri",
        {"exact": "/", "prefix": "/"},
        "expected exactly one of: exact, prefix, regex",
    ),
    ("match no kind", with_match(method={}), f"{M}.method", {}, "expected exactly one of"),
    (
        "match unknown kind",
        with_match(uri={"suffix": ".js"}),
        f"{M}.uri.suffix",
        ".js",
        "unknown key (expected one of: exact, prefix, regex)",
    ),
    ("match bool", with_match(method={"exact": True}), f"{M}.method.exact", True, "quote it"),
    (
        "match bad regex",
        with_match(uri={"regex": "/api/(v1"}),
        f"{M}.uri.regex",
        "/api/(v1",
        "not a valid regular expression: missing ), unterminated subpattern",
    ),
    (
        "header match bad regex",
        with_match(headers={"x-a": {"regex": "*"}}),
        f"{M}.headers.x-a.regex",
        "*",
        "not a valid regular expression: nothing to repeat",
    ),
    (
        "regex valid only as text",
        with_match(authority={"regex": "caf\\u00e9"}),
        f"{M}.authority.regex",
        "caf\\u00e9",
        "not a valid regular expression: bad escape \\u",
    ),
    (
        "regex unicode flag",
        with_match(uri={"regex": "(?u)/a"}),
        f"{M}.uri.regex",
        "(?u)/a",
        "not a valid regular expression: bad inline flags",
    ),
    (
        "header match not mapping",
        with_match(headers=["x-a"]),
        f"{M}.headers",
        ["x-a"],
        "expected a mapping of header names to matches",
    ),
    (
        "header match name space",
        with_match(headers={"x a": {"exact": "1"}}),
        f"{M}.headers.x a",
        "x a",
        "not a header name (an HTTP token",
    ),
    (
        "header match pseudo header",
        with_match(headers={":path": {"exact": "/"}}),
        f"{M}.headers.:path",
        ":path",
        "not a header name",
    ),
    (
        "header match name not string",
        with_match(headers={1: {"exact": "1"}}),
        f"{M}.headers.1",
        1,
        "not a header name",
    ),
    (
        "header match twice",
        with_match(headers={"X-A": {"exact": "1"}, "x-a": {"exact": "2"}}),
        f"{M}.headers.x-a",
        "x-a",
        "header 'x-a' given twice (also services[0].http[0].match[0].headers.X-A)",
    ),
    # retries
    ("retries not mapping", with_route(retries=3), RT, 3, "expected a mapping"),
    ("retries unknown key", with_retries(attempt=1), f"{RT}.attempt", 1, "'attempts'"),
    ("attempts high", with_retries(attempts=11), f"{RT}.attempts", 11, "out of range (0-10)"),
    ("attempts negative", with_retries(attempts=-1), f"{RT}.attempts", -1, "out of range"),
    (
        "per try timeout",
        with_retries(per_try_timeout="0ms"),
        f"{RT}.per_try_timeout",
        "0ms",
        "greater than zero",
    ),
    (
        "retry on unknown",
        with_retries(retry_on="5xx,refused-stream"),
        f"{RT}.retry_on",
        "5xx,refused-stream",
        "unknown retry condition 'refused-stream'; expected one of: 5xx, gateway-error, "
        "connect-failure, reset, retriable-status-codes, cancelled, deadline-exceeded, internal, "
        "resource-exhausted, unavailable",
    ),
    (
        "retry on unknown in list",
        with_retries(retry_on=["5xx", "retriable-4xx"]),
        f"{RT}.retry_on[1]",
        "retriable-4xx",
        "unknown retry condition 'retriable-4xx'; expected one of: 5xx",
    ),
    (
        "retry on status code",
        with_retries(retry_on="5xx,503"),
        f"{RT}.retry_on",
        "5xx,503",
        "status codes go in retriable_status_codes",
    ),
    (
        "retry on status code in list",
        with_retries(retry_on=[503]),
        f"{RT}.retry_on[0]",
        503,
        "status codes go in retriable_status_codes",
    ),
    (
        "retry on stray comma",
        with_retries(retry_on="5xx,"),
        f"{RT}.retry_on",
        "5xx,",
        "an empty condition (a stray comma?)",
    ),
    (
        "retry on twice",
        with_retries(retry_on="reset,reset"),
        f"{RT}.retry_on",
        "reset,reset",
        "condition 'reset' given twice",
    ),
    (
        "retry on empty list",
        with_retries(retry_on=[]),
        f"{RT}.retry_on",
        [],
        "expected at least one condition",
    ),
    (
        "retry on number",
        with_retries(retry_on=5),
        f"{RT}.retry_on",
        5,
        "expected a comma-separated string or a list of conditions",
    ),
    (
        "status code low",
        with_retries(retriable_status_codes=[503, 99]),
        f"{RT}.retriable_status_codes[1]",
        99,
        "out of range (100-599)",
    ),
    (
        "status code high",
        with_retries(retriable_status_codes=[600]),
        f"{RT}.retriable_status_codes[0]",
        600,
        "out of range (100-599)",
    ),
    (
        "status code text",
        with_retries(retriable_status_codes="503"),
        f"{RT}.retriable_status_codes",
        "503",
        "expected a list",
    ),
    (
        "status code twice",
        with_retries(retriable_status_codes=[503, 503]),
        f"{RT}.retriable_status_codes[1]",
        503,
        "duplicate status code (also services[0].http[0].retries.retriable_status_codes[0])",
    ),
    (
        "status codes never used",
        with_retries(retry_on="5xx", retriable_status_codes=[502]),
        f"{RT}.retriable_status_codes",
        [502],
        "used only when retry_on includes retriable-status-codes",
    ),
    (
        "backoff max below base",
        with_retries(backoff_base="100ms", backoff_max="50ms"),
        f"{RT}.backoff_max",
        "50ms",
        "must be at least backoff_base (0.1s)",
    ),
    (
        "backoff base above default max",
        with_retries(backoff_base="1s"),
        f"{RT}.backoff_base",
        "1s",
        "must be at most backoff_max (0.25s, its default)",
    ),
    ("backoff zero", with_retries(backoff_base=0), f"{RT}.backoff_base", 0, "greater than zero"),
    # header operations
    ("headers unknown key", with_route(headers={"req": {}}), f"{R}.headers.req", {}, "'request'"),
    (
        "header ops unknown key",
        with_headers(append={"x-a": "1"}),
        f"{RQ}.append",
        {"x-a": "1"},
        "unknown key (expected one of: set, add, remove)",
    ),
    (
        "header set list",
        with_headers(set=["x-a"]),
        f"{RQ}.set",
        ["x-a"],
        "expected a mapping of header names to values",
    ),
    ("header remove mapping", with_headers(remove={"x-a": 1}), f"{RQ}.remove", {"x-a": 1}, "list"),
    ("header name colon", with_headers(set={"x:a": "1"}), f"{RQ}.set.x:a", "x:a", "header name"),
    ("header name empty", with_headers(add={"": "1"}), f"{RQ}.add.", "", "not a header name"),
    ("header remove bad", with_headers(remove=["x a"]), f"{RQ}.remove[0]", "x a", "header name"),
    (
        "header value number",
        with_headers(set={"x-a": 1}),
        f"{RQ}.set.x-a",
        1,
        "expected a string (quote it)",
    ),
    (
        "header value LF",
        with_headers(set={"x-a": "1\r\nx-evil: 1"}),
        f"{RQ}.set.x-a",
        "1\r\nx-evil: 1",
        "a header value cannot contain CR, LF, NUL or other control characters",
    ),
    (
        "header value NUL",
        with_headers(add={"x-a": "a\0b"}),
        f"{RQ}.add.x-a",
        "a\0b",
        "cannot contain CR, LF, NUL",
    ),
    (
        "header value control",
        with_headers(add={"x-a": "a\x01b"}),
        f"{RQ}.add.x-a",
        "a\x01b",
        "or other control characters",
    ),
    (
        "response header value CR",
        with_route(headers={"response": {"set": {"x-a": "a\rb"}}}),
        f"{R}.headers.response.set.x-a",
        "a\rb",
        "cannot contain CR, LF, NUL",
    ),
    (
        "header in set and remove",
        with_headers(set={"X-A": "1"}, remove=["x-a"]),
        f"{RQ}.remove[0]",
        "x-a",
        "header 'x-a' given twice (also services[0].http[0].headers.request.set.X-A)",
    ),
    (
        "header twice in set",
        with_headers(set={"X-A": "1", "x-a": "2"}),  # safe_dump sorts: X-A comes first
        f"{RQ}.set.x-a",
        "x-a",
        "header 'x-a' given twice (also services[0].http[0].headers.request.set.X-A)",
    ),
    *[
        (
            f"protected header {name} in {op}",
            with_headers(**{op: [name] if op == "remove" else {name: "x"}}),
            f"{RQ}.{op}[0]" if op == "remove" else f"{RQ}.{op}.{name}",
            name,
            "the proxy manages this header itself",
        )
        for op, name in [
            ("set", "connection"),
            ("add", "Keep-Alive"),
            ("remove", "proxy-connection"),
            ("set", "Transfer-Encoding"),
            ("add", "te"),
            ("remove", "trailer"),
            ("set", "upgrade"),
            ("set", "Content-Length"),
            ("remove", "host"),
        ]
    ],
    (
        "protected response header",
        with_route(headers={"response": {"remove": ["content-length"]}}),
        f"{R}.headers.response.remove[0]",
        "content-length",
        "the proxy manages this header itself",
    ),
    # fault
    ("fault unknown key", with_route(fault={"delays": {}}), f"{R}.fault.delays", {}, "'delay'"),
    (
        "delay percentage missing",
        with_route(fault={"delay": {"fixed_delay": "1s"}}),
        f"{R}.fault.delay.percentage",
        None,
        "required",
    ),
    (
        "delay missing",
        with_route(fault={"delay": {"percentage": 10}}),
        f"{R}.fault.delay.fixed_delay",
        None,
        "required",
    ),
    (
        "delay percentage high",
        with_route(fault={"delay": {"percentage": 100.5, "fixed_delay": "1s"}}),
        f"{R}.fault.delay.percentage",
        100.5,
        "out of range (0-100)",
    ),
    (
        "delay percentage text",
        with_route(fault={"delay": {"percentage": "10%", "fixed_delay": "1s"}}),
        f"{R}.fault.delay.percentage",
        "10%",
        "expected a number (0-100)",
    ),
    (
        "delay zero",
        with_route(fault={"delay": {"percentage": 10, "fixed_delay": 0}}),
        f"{R}.fault.delay.fixed_delay",
        0,
        "greater than zero",
    ),
    (
        "abort status",
        with_route(fault={"abort": {"percentage": 1, "http_status": 199}}),
        f"{R}.fault.abort.http_status",
        199,
        "out of range (200-599)",
    ),
    (
        "abort status missing",
        with_route(fault={"abort": {"percentage": 1}}),
        f"{R}.fault.abort.http_status",
        None,
        "required",
    ),
    (
        "abort percentage negative",
        with_route(fault={"abort": {"percentage": -1, "http_status": 503}}),
        f"{R}.fault.abort.percentage",
        -1,
        "out of range (0-100)",
    ),
    (
        "abort percentage bool",
        with_route(fault={"abort": {"percentage": True, "http_status": 503}}),
        f"{R}.fault.abort.percentage",
        True,
        "expected a number",
    ),
    (
        "abort unknown key",
        with_route(fault={"abort": {"percentage": 1, "status": 503}}),
        f"{R}.fault.abort.status",
        503,
        "did you mean 'http_status'",
    ),
    # traffic policy
    (
        "max requests zero",
        with_policy(circuit_breaker={"max_requests": 0}),
        f"{CB}.max_requests",
        0,
        "out of range",
    ),
    (
        "retry budget high",
        with_policy(circuit_breaker={"retry_budget_percent": 101}),
        f"{CB}.retry_budget_percent",
        101,
        "out of range (0-100)",
    ),
    (
        "retry budget text",
        with_policy(circuit_breaker={"retry_budget_percent": "20%"}),
        f"{CB}.retry_budget_percent",
        "20%",
        "expected a number (0-100)",
    ),
    (
        "min retry concurrency",
        with_policy(circuit_breaker={"min_retry_concurrency": -1}),
        f"{CB}.min_retry_concurrency",
        -1,
        "out of range (0-4294967295)",
    ),
    (
        "http idle timeout",
        with_policy(http_idle_timeout=0),
        f"{S}.traffic_policy.http_idle_timeout",
        0,
        "greater than zero",
    ),
    (
        "max requests per connection",
        with_policy(max_requests_per_connection=-1),
        f"{S}.traffic_policy.max_requests_per_connection",
        -1,
        "out of range (0-4294967295)",
    ),
    (
        "policy key typo",
        with_policy(http_idle_timout="1h"),
        f"{S}.traffic_policy.http_idle_timout",
        "1h",
        "did you mean 'http_idle_timeout'",
    ),
]


@pytest.mark.parametrize(
    ("document", "path", "value", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_refuses(document: dict[str, Any], path: str, value: object, reason: str) -> None:
    error = refusal(copy.deepcopy(document))
    assert error.path == path
    assert error.value == value
    assert f"{SOURCE}: {path} = {value!r}: " in str(error)
    assert reason in error.reason


def test_percentage_nan_is_refused() -> None:
    error = refusal(with_policy(circuit_breaker={"retry_budget_percent": float("nan")}))
    assert error.path == f"{CB}.retry_budget_percent"
    assert error.reason == "out of range (0-100)"


def test_refusal_names_the_file_path_value_and_reason() -> None:
    error = refusal(with_route(route=[{"subset": "v3"}]))
    assert str(error) == (
        "mesh.yaml: services[0].http[0].route[0].subset = 'v3': "
        "not a subset of this service (v1, v2)"
    )


def test_an_error_in_a_later_route_refuses_the_whole_document() -> None:
    split = [{"subset": "v1", "weight": 50}, {"subset": "v9", "weight": 50}]
    error = refusal(with_service(http=[{"name": "ok"}, {"route": split}]))
    assert error.path == "services[0].http[1].route[1].subset"


def test_http_is_checked_against_the_service_it_is_in() -> None:
    """Subsets are per service: a second service's subsets do not satisfy the first's routes."""
    first = {
        "name": "a",
        "ports": [{"port": 80, "protocol": "http"}],
        "http": [{"route": [{"subset": "v1"}]}],
    }
    second = {
        "name": "b",
        "ports": [{"port": 80}],
        "subsets": [{"name": "v1", "labels": {"a": "b"}}],
    }
    error = refusal({"services": [first, second]})
    assert (error.path, error.value) == ("services[0].http[0].route[0].subset", "v1")


def test_inbound_ports_may_declare_http_or_auto() -> None:
    mesh = parse_mesh(
        "workload:\n  name: app\n  inbound_ports: [9000, {port: 8080, protocol: http},"
        " {port: 8081, protocol: auto}, {port: 7000}]\n",
        "mesh.yaml",
    )
    workload = mesh.workload
    assert workload.inbound_ports == (9000, 8080, 8081, 7000)
    assert [workload.inbound_protocol(p) for p in (9000, 8080, 8081, 7000, 1)] == [
        "tcp",
        "http",
        "auto",
        "tcp",
        "tcp",
    ]


@pytest.mark.parametrize(
    ("ports", "path", "reason"),
    [
        ("[{port: 8080, protocol: grpc}]", "workload.inbound_ports[0].protocol", "grpc"),
        ("[{protocol: http}]", "workload.inbound_ports[0]", "port"),
        ("[{port: 8080, proto: http}]", "workload.inbound_ports[0]", "proto"),
        ("[8080, {port: 8080, protocol: http}]", "workload.inbound_ports[1]", "duplicate"),
    ],
)
def test_bad_inbound_port_declarations_are_refused(ports: str, path: str, reason: str) -> None:
    with pytest.raises(MeshConfigError) as caught:
        parse_mesh(f"workload:\n  inbound_ports: {ports}\n", "mesh.yaml")
    assert caught.value.path.startswith(path), caught.value
    assert reason in str(caught.value)
