"""Envoy resources → Detour's Mesh: what a snapshot becomes, and what it is refused for.

The snapshots are istiod-shaped (support.xds_snapshots); a refusal must name the resource and
the field, since its text is the NACK an operator reads in the control plane's logs.
"""

from __future__ import annotations

import ipaddress

import pytest
from support.xds_snapshots import (
    assignment,
    checked,
    cluster,
    http_listener,
    outbound,
    passthrough_cluster,
    resources,
    route,
    route_config,
    tcp_listener,
    virtual_host,
    virtual_outbound,
)

from proxy.config.model import Mesh, OutlierDetection, Service, StringMatch
from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_ROUTE,
    XdsRejected,
)
from proxy.xds.translate import build_mesh, missing

BACKEND = outbound(8080, "backend.default")
BACKEND_V1 = outbound(8080, "backend.default", "v1")
BACKEND_V2 = outbound(8080, "backend.default", "v2")
DB = outbound(9000, "db.default")


def mesh_of(*messages) -> Mesh:
    return build_mesh(checked(*messages), Mesh(), "xds test")


def service(mesh: Mesh, key: str) -> Service:
    found = mesh.service(key)
    assert found is not None, [s.key for s in mesh.services]
    return found


def http_backend(*routes, extra=()) -> tuple:
    return (
        cluster(BACKEND),
        assignment(BACKEND, [("10.88.0.3", 80), ("10.88.0.4", 80)]),
        http_listener(8080),
        route_config("8080", [virtual_host("backend.default", 8080, "10.96.0.8", list(routes))]),
        *extra,
    )


def test_a_tcp_service_gets_its_vip_port_and_endpoints_from_the_listener_and_eds():
    mesh = mesh_of(
        cluster(DB), assignment(DB, [("10.88.0.5", 5432)]), tcp_listener("10.96.0.9", 9000, DB)
    )
    db = service(mesh, "db.default")
    assert db.vips == (ipaddress.ip_address("10.96.0.9"),)
    assert [(p.port, p.protocol) for p in db.ports] == [(9000, "tcp")]
    assert [(str(e.address), e.port_for(db.ports[0])) for e in db.endpoints] == [
        ("10.88.0.5", 5432)
    ]
    assert db.policy.connect_timeout == 1.0
    assert db.policy.connect_attempts == 1  # Envoy's tcp_proxy default


def test_an_http_service_gets_routes_retries_and_timeout_as_envoy_would_apply_them():
    mesh = mesh_of(
        *http_backend(
            {"match": {"path": "/exact"}, "route": {"cluster": BACKEND, "timeout": "2s"}},
            route(BACKEND, retry_policy={"retry_on": "5xx,connect-failure", "num_retries": 3}),
        )
    )
    backend = service(mesh, "backend.default")
    assert backend.vips == (ipaddress.ip_address("10.96.0.8"),)
    assert [(p.port, p.protocol) for p in backend.ports] == [(8080, "http")]
    exact, fallback = backend.http_routes
    assert exact.matches[0].uri == StringMatch("exact", "/exact")
    assert exact.timeout == 2.0
    assert exact.retries.attempts == 0  # no retry policy: Envoy does not retry
    assert fallback.matches[0].uri is None  # prefix "/" matches everything
    assert fallback.timeout == 15.0  # Envoy's default route timeout
    assert fallback.retries.attempts == 3
    assert fallback.retries.retry_on == ("5xx", "connect-failure")


def test_weighted_subset_clusters_become_subsets_with_label_selected_endpoints():
    mesh = mesh_of(
        *http_backend(
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [
                            {"name": BACKEND_V1, "weight": 80},
                            {"name": BACKEND_V2, "weight": 20},
                        ]
                    }
                },
            },
            extra=(
                cluster(BACKEND_V1),
                cluster(BACKEND_V2),
                assignment(BACKEND_V1, [("10.88.0.3", 80)]),
                assignment(BACKEND_V2, [("10.88.0.4", 80)]),
            ),
        )
    )
    backend = service(mesh, "backend.default")
    assert [(d.subset, d.weight) for d in backend.http_routes[0].destinations] == [
        ("v1", 80),
        ("v2", 20),
    ]
    chosen = {
        subset.name: [str(e.address) for e in backend.endpoints if subset.selects(e)]
        for subset in backend.subsets
    }
    assert chosen == {"v1": ["10.88.0.3"], "v2": ["10.88.0.4"]}


def test_unhealthy_and_draining_endpoints_get_no_traffic_and_weights_are_kept():
    mesh = mesh_of(
        cluster(DB),
        assignment(DB, [("10.88.0.5", 5432)], load_balancing_weight=3),
        tcp_listener("10.96.0.9", 9000, DB),
    )
    assert [e.weight for e in service(mesh, "db.default").endpoints] == [3]
    drained = mesh_of(
        cluster(DB),
        assignment(DB, [("10.88.0.5", 5432)], health_status="DRAINING"),
        tcp_listener("10.96.0.9", 9000, DB),
    )
    assert service(drained, "db.default").endpoints == ()


def test_the_virtual_outbound_listener_sets_the_outbound_traffic_policy():
    base = (cluster(DB), assignment(DB, [("10.88.0.5", 5432)]), passthrough_cluster())
    assert mesh_of(*base, virtual_outbound(allow_any=True)).outbound_traffic_policy == "ALLOW_ANY"
    closed = mesh_of(*base, virtual_outbound(allow_any=False))
    assert closed.outbound_traffic_policy == "REGISTRY_ONLY"


def test_lb_policy_circuit_breakers_and_health_check_map_onto_the_traffic_policy():
    spec = {
        "lb_policy": "LEAST_REQUEST",
        "least_request_lb_config": {"choice_count": 3},
        "circuit_breakers": {
            "thresholds": [{"max_connections": 7, "max_requests": 9, "max_retries": 2}]
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 1,
                "tcp_health_check": {},
            }
        ],
    }
    mesh = mesh_of(
        cluster(DB, **spec),
        assignment(DB, [("10.88.0.5", 5432)]),
        tcp_listener("10.96.0.9", 9000, DB),
    )
    policy = service(mesh, "db.default").policy
    assert (policy.load_balancer.policy, policy.load_balancer.choice_count) == ("least_request", 3)
    breaker = policy.circuit_breaker
    assert (breaker.max_connections, breaker.max_requests, breaker.max_pending) == (7, 9, 1024)
    # max_retries 2 is "at most 2 retries in flight": a 0% budget with a floor of 2
    assert (breaker.retry_budget_percent, breaker.min_retry_concurrency) == (0.0, 2)
    assert policy.health_check is not None and policy.health_check.interval == 2.0


# What istiod sends for a DestinationRule's outlierDetection (consecutive5xxErrors: 3,
# interval: 5s, baseEjectionTime: 15s, maxEjectionPercent: 50): success rate explicitly off.
ISTIO_OUTLIER = {
    "consecutive_5xx": 3,
    "interval": "5s",
    "base_ejection_time": "15s",
    "max_ejection_percent": 50,
    "enforcing_consecutive_5xx": 100,
    "enforcing_success_rate": 0,
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ISTIO_OUTLIER, OutlierDetection(3, 0, 15.0, 50)),
        (  # consecutiveGatewayErrors set: istiod enforces that run too
            {
                **ISTIO_OUTLIER,
                "consecutive_gateway_failure": 2,
                "enforcing_consecutive_gateway_failure": 100,
            },
            OutlierDetection(3, 2, 15.0, 50),
        ),
        (  # only the gateway run: the 5xx one not enforced
            {
                "enforcing_success_rate": 0,
                "enforcing_consecutive_5xx": 0,
                "enforcing_consecutive_gateway_failure": 100,
            },
            OutlierDetection(0, 5, 30.0, 10),  # Envoy's defaults
        ),
    ],
)
def test_outlier_detection_maps_envoys_consecutive_detectors(spec, expected):
    mesh = mesh_of(
        cluster(DB, outlier_detection=spec),
        assignment(DB, [("10.88.0.5", 5432)]),
        tcp_listener("10.96.0.9", 9000, DB),
    )
    assert service(mesh, "db.default").policy.outlier_detection == expected


def test_fault_and_header_rules_of_a_route_are_taken():
    fault = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 418, "percentage": {"numerator": 50}},
    }
    mesh = mesh_of(
        *http_backend(
            {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "x-user", "string_match": {"exact": "tester"}}],
                },
                "route": {"cluster": BACKEND},
                "typed_per_filter_config": {"envoy.filters.http.fault": fault},
                "request_headers_to_add": [
                    {
                        "header": {"key": "X-Mesh", "value": "detour"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "response_headers_to_remove": ["server"],
            }
        )
    )
    only = service(mesh, "backend.default").http_routes[0]
    assert only.fault is not None
    assert (only.fault.abort_status, only.fault.abort_percent) == (418, 50.0)
    assert only.matches[0].headers == (("x-user", StringMatch("exact", "tester")),)
    assert only.request_headers.set == (("x-mesh", "detour"),)
    assert only.response_headers.remove == ("server",)


# --- refusals: each names the resource and the field -------------------------------------------


def regex_route(match: dict) -> object:
    return route_config(
        "8080",
        [
            virtual_host(
                "backend.default",
                8080,
                "10.96.0.8",
                [{"match": match, "route": {"cluster": BACKEND}}],
            )
        ],
    )


@pytest.mark.parametrize(
    ("messages", "kind", "name", "field"),
    [
        (
            (cluster(DB, lb_policy="MAGLEV"),),
            TYPE_CLUSTER,
            DB,
            "lb_policy",
        ),
        (
            (cluster(DB, outlier_detection={"consecutive_5xx": 5}),),  # success rate enforced
            TYPE_CLUSTER,
            DB,
            "outlier_detection.enforcing_success_rate",
        ),
        (
            (cluster(DB, outlier_detection={**ISTIO_OUTLIER, "enforcing_consecutive_5xx": 50}),),
            TYPE_CLUSTER,
            DB,
            "outlier_detection.enforcing_consecutive_5xx",
        ),
        (
            (
                cluster(
                    DB, outlier_detection={**ISTIO_OUTLIER, "enforcing_failure_percentage": 100}
                ),
            ),
            TYPE_CLUSTER,
            DB,
            "outlier_detection.enforcing_failure_percentage",
        ),
        (
            (cluster(DB, outlier_detection={**ISTIO_OUTLIER, "max_ejection_time": "60s"}),),
            TYPE_CLUSTER,
            DB,
            "outlier_detection.max_ejection_time",
        ),
        (
            (cluster(DB, outlier_detection={**ISTIO_OUTLIER, "always_eject_one_host": True}),),
            TYPE_CLUSTER,
            DB,
            "outlier_detection.always_eject_one_host",
        ),
        (
            (cluster("backend"),),
            TYPE_CLUSTER,
            "backend",
            "name",
        ),
        (
            (cluster(DB, type="STRICT_DNS"),),
            TYPE_CLUSTER,
            DB,
            "type",
        ),
        (
            (assignment(DB, [("not-an-ip", 1)]),),
            TYPE_ENDPOINT,
            DB,
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        ),
        (
            (
                route_config(
                    "8080",
                    [
                        virtual_host(
                            "backend.default",
                            8080,
                            "10.96.0.8",
                            [
                                {
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": BACKEND, "prefix_rewrite": "/v2"},
                                }
                            ],
                        )
                    ],
                ),
            ),
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].route.prefix_rewrite",
        ),
        (
            (
                route_config(
                    "8080",
                    [
                        virtual_host(
                            "backend.default",
                            8080,
                            "10.96.0.8",
                            [route(BACKEND, retry_policy={"retry_on": "retriable-4xx"})],
                        )
                    ],
                ),
            ),
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on",
        ),
        (
            (
                route_config(
                    "8080",
                    [
                        virtual_host(
                            "backend.default",
                            8080,
                            "10.96.0.8",
                            [
                                {
                                    "match": {"prefix": "/", "query_parameters": [{"name": "a"}]},
                                    "route": {"cluster": BACKEND},
                                }
                            ],
                        )
                    ],
                ),
            ),
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].match.query_parameters",
        ),
        (
            (regex_route({"safe_regex": {"regex": "/canary("}}),),
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].match.safe_regex.regex",
        ),
        (
            (regex_route({"safe_regex": {"regex": "/(?!admin).*"}}),),  # Python's, not RE2's
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].match.safe_regex.regex",
        ),
        (
            (
                regex_route(
                    {
                        "prefix": "/",
                        "headers": [
                            {"name": "x-a", "string_match": {"safe_regex": {"regex": "["}}}
                        ],
                    }
                ),
            ),
            TYPE_ROUTE,
            "8080",
            "virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex",
        ),
    ],
    ids=[
        "maglev",
        "outlier-success-rate-enforced",
        "outlier-partly-enforced",
        "outlier-failure-percentage",
        "outlier-max-ejection-time",
        "outlier-always-eject-one",
        "non-istio-name",
        "strict-dns",
        "bad-address",
        "prefix-rewrite",
        "retry-on-4xx",
        "query-match",
        "invalid-path-regex",
        "lookahead-not-re2",
        "invalid-header-regex",
    ],
)
def test_a_resource_with_a_field_detour_does_not_implement_is_refused_naming_it(
    messages, kind, name, field
):
    with pytest.raises(XdsRejected) as caught:
        checked(*messages)
    assert (caught.value.type_url, caught.value.name, caught.value.field) == (kind, name, field)
    assert field in str(caught.value) and name in str(caught.value)


def test_a_route_to_another_service_is_refused_when_the_snapshot_is_built():
    other = outbound(8080, "other.default")
    messages = http_backend(
        route(other), extra=(cluster(other), assignment(other, [("10.88.0.9", 80)]))
    )
    messages = (
        messages[0],
        messages[1],
        messages[2],
        route_config(
            "8080",
            [
                virtual_host(
                    "backend.default", 8080, "10.96.0.8", [route(BACKEND, "/a"), route(other)]
                )
            ],
        ),
        *messages[4:],
    )
    with pytest.raises(XdsRejected) as caught:
        mesh_of(*messages)
    assert caught.value.type_url == TYPE_ROUTE
    assert caught.value.field == "virtual_hosts[0].routes[1].route.cluster"


def test_a_route_to_a_removed_subset_cluster_stands_in_with_no_endpoints():
    """Envoy answers a route to a cluster it does not have 503 NC; here the subset is there
    with no endpoints, so its requests get 503 (and a malformed name is still refused)."""
    gone = outbound(8080, "backend.default", "v2")
    mesh = mesh_of(*http_backend(route(gone, "/canary"), route(BACKEND)))
    backend = service(mesh, "backend.default")
    assert [s.name for s in backend.subsets] == ["v2"]
    assert not [e for e in backend.endpoints if backend.subsets[0].selects(e)]
    assert len(backend.endpoints) == 2  # the service's own endpoints are untouched


def test_a_removed_service_whose_listener_remains_has_no_endpoints_and_keeps_its_vip():
    mesh = mesh_of(tcp_listener("10.96.0.9", 9000, DB))  # the cluster went first
    db = service(mesh, "db.default")
    assert db.endpoints == () and db.vips == (ipaddress.ip_address("10.96.0.9"),)


def test_a_route_to_a_cluster_name_that_is_not_istios_is_refused():
    with pytest.raises(XdsRejected, match="by Istio's name"):
        mesh_of(*http_backend(route("ghost")))


def test_endpoints_that_differ_between_ports_of_one_service_are_refused():
    other_port = outbound(9090, "backend.default")
    with pytest.raises(XdsRejected, match="one endpoint list per service"):
        mesh_of(
            *http_backend(route(BACKEND)),
            cluster(other_port),
            assignment(other_port, [("10.88.0.3", 90)]),
        )


def test_two_services_claiming_one_vip_are_refused():
    with pytest.raises(XdsRejected, match="also the VIP"):
        mesh_of(
            cluster(DB),
            assignment(DB, [("10.88.0.5", 5432)]),
            tcp_listener("10.96.0.8", 9000, DB),
            *http_backend(route(BACKEND)),
        )


def test_warming_waits_for_the_endpoints_of_eds_clusters_and_the_routes_of_listeners():
    partial = resources(cluster(BACKEND), http_listener(8080))
    assert missing(partial) == (f"EDS {BACKEND}", "RDS 8080")
    complete = resources(*http_backend(route(BACKEND)))
    assert missing(complete) == ()
