"""Detour against real Envoy on the same xDS snapshots: what a client sees must match.

Two pods, identical but for their sidecar: one runs Envoy 1.40 (the benchmark's, from
build/bench-venv), the other Detour; both are intercepted by detour-init the same way, both
are driven by one test control plane (tests/support/xds_control_plane.py) serving one
istiod-shaped snapshot to every node. Each scenario is a request a client makes; the
comparison is what the client saw (status, which origin answered) and, where the route
retries, how many requests the origin received. A snapshot Envoy refuses, Detour must refuse.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.lab import wait_until
from support.mesh_lab import GATEWAY_V4, PROXY_UID, MeshLab, Pod
from support.prereq import require
from support.xds_control_plane import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    XdsTestControlPlane,
)
from support.xds_snapshots import (
    FAULT_TYPE,
    assignment,
    bootstrap,
    cluster,
    http_listener,
    outbound,
    passthrough_cluster,
    route,
    route_config,
    snapshot,
    virtual_host,
    virtual_outbound,
)

REPO = Path(__file__).resolve().parents[3]
ENVOY = REPO / "build/bench-venv/lib/python3.11/site-packages/envoy/_bin/envoy"
ALL_TYPES = [TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE]
WEB_VIP = "10.96.0.7"
WEB = outbound(8080, "web.default")
WEB_V1 = outbound(8080, "web.default", "v1")
WEB_V2 = outbound(8080, "web.default", "v2")


def node_id(pod: Pod) -> str:
    return f"sidecar~{pod.ip}~{pod.name}-1.default~default.svc.cluster.local"


@dataclass
class Backends:
    one: Pod
    two: Pod
    three: Pod

    def requests_seen(self, pod: Pod) -> int:
        done = pod.run("curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/__counts")
        return int(json.loads(done.stdout)["requests"])


def fault(status: int) -> dict:
    abort = {"http_status": status, "percentage": {"numerator": 100}}
    return {"envoy.filters.http.fault": {"@type": FAULT_TYPE, "abort": abort}}


# What istiod sends for a DestinationRule's outlierDetection {consecutive5xxErrors: 3}.
OUTLIER = {
    "consecutive_5xx": 3,
    "interval": "1s",
    "base_ejection_time": "30s",
    "max_ejection_percent": 100,
    "enforcing_consecutive_5xx": 100,
    "enforcing_success_rate": 0,
}


def mesh(
    b: Backends, v1: list[Pod] | None = None, with_v2: bool = True, outlier: bool = False
) -> dict:
    """The scenarios' snapshot: one service, two subsets, a route per behaviour (``/both``
    to the whole service, outlier detection on it when ``outlier``)."""
    v1 = [b.one] if v1 is None else v1
    v2 = [b.two]
    routes = [
        route(WEB, "/both"),
        route(WEB_V2, "/canary"),
        {
            "match": {"prefix": "/", "headers": [{"name": "x-canary", "exact_match": "yes"}]},
            "route": {"cluster": WEB_V2},
        },
        {
            "match": {"prefix": "/split"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": WEB_V1, "weight": 0}, {"name": WEB_V2, "weight": 100}]
                }
            },
        },
        route(WEB_V1, "/retry", retry_policy={"retry_on": "5xx", "num_retries": 2}),
        route(WEB_V1, "/slow", timeout="0.5s"),
        {**route(WEB_V1, "/teapot"), "typed_per_filter_config": fault(418)},
        route(WEB_V1, "/"),
    ]
    allow_any = {
        "name": "allow_any",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}],
    }
    # A DestinationRule's policy reaches every subset's cluster, as istiod sends it.
    policy = {"outlier_detection": OUTLIER} if outlier else {}
    clusters = [cluster(WEB, **policy), cluster(WEB_V1, **policy)]
    endpoints = [
        assignment(WEB, [(p.ip, 8080) for p in v1 + v2]),
        assignment(WEB_V1, [(p.ip, 8080) for p in v1]),
    ]
    if with_v2:
        clusters.append(cluster(WEB_V2, **policy))
        endpoints.append(assignment(WEB_V2, [(p.ip, 8080) for p in v2]))
    return snapshot(
        passthrough_cluster(),
        *clusters,
        *endpoints,
        virtual_outbound(),
        http_listener(8080),
        route_config("8080", [virtual_host("web.default", 8080, WEB_VIP, routes), allow_any]),
    )


@dataclass(frozen=True)
class Seen:
    status: int
    origin: str | None  # the label of the origin that answered; None for a local reply


def call(pod: Pod, url: str, *extra: str) -> Seen:
    done = pod.run(
        "curl", "-sS", "-g", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", *extra, url
    )
    body, _, code = done.stdout.rpartition("\n")
    try:
        origin = json.loads(body)["label"]
    except (ValueError, KeyError, TypeError):
        origin = None
    return Seen(int(code or 0), origin)


class Pair:
    """The Envoy pod and the Detour pod, and the control plane serving them both."""

    def __init__(self, lab: MeshLab, plane: XdsTestControlPlane, api_type: str) -> None:
        self.lab, self.plane, self.api_type = lab, plane, api_type
        self.envoy = lab.add_pod("envoy", 20)
        self.detour = lab.add_pod("detour", 21)
        self.nodes = {self.envoy.name: node_id(self.envoy), self.detour.name: node_id(self.detour)}

    def start(self) -> None:
        for pod in (self.envoy, self.detour):
            self.lab.intercept(pod)
        envoy_config = self.lab.write_config(
            "envoy.json",
            json.dumps(bootstrap(self.nodes["envoy"], self.plane.address, self.api_type)),
        )
        self.envoy.sidecar_log = self.lab.workdir / "envoy.sidecar.log"
        with self.envoy.sidecar_log.open("w") as log:
            self.envoy.sidecar = subprocess.Popen(
                self.envoy.command(
                    str(ENVOY),
                    "-c",
                    str(envoy_config),
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    uid=PROXY_UID,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.envoy.ns._procs.append(self.envoy.sidecar)
        detour_config = self.lab.write_config(
            "detour.json",
            json.dumps(bootstrap(self.nodes["detour"], self.plane.address, self.api_type)),
        )
        self.lab.start_sidecar(self.detour, None, "--bootstrap", str(detour_config))
        wait_until(lambda: self.envoy.admin("/ready")[0] == 200, 15, "Envoy to be ready")

    def publish(self, version: str, resources: dict) -> None:
        """Serve ``resources`` as ``version`` and wait until both sidecars ACKed all of it."""
        self.plane.set_snapshot(version, resources)
        for node in self.nodes.values():
            self.plane.wait_acked(version, ALL_TYPES, node_id=node)

    def both(self, request: Callable[[Pod], object]) -> tuple[object, object]:
        return request(self.envoy), request(self.detour)


@pytest.fixture
def api_type() -> str:
    return "GRPC"  # State of the World; a test asks for Delta by parametrizing api_type


@pytest.fixture
def pair(mesh_lab: MeshLab, api_type: str):
    require(ENVOY.exists(), f"Envoy at {ENVOY} (make bench-peers installs it)")
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=mesh_lab.bridge_ns.name)
    plane.start()
    try:
        yield Pair(mesh_lab, plane, api_type)
    finally:
        plane.stop()


@pytest.fixture
def backends(mesh_lab: MeshLab) -> Backends:
    pods = [mesh_lab.add_pod(f"origin{n}", 10 + n) for n in (1, 2, 3)]
    for pod, label in zip(pods, ("one", "two", "three"), strict=True):
        pod.serve_http11(8080, label)
    pods[2].serve_http11(7070, "three-direct")  # no listener on 7070: passthrough
    return Backends(*pods)


SCENARIOS = [
    # (what, path, curl arguments, what the client must see)
    ("default route", "/", (), Seen(200, "one")),
    ("path prefix", "/canary/x", (), Seen(200, "two")),
    ("header match", "/", ("-H", "x-canary: yes"), Seen(200, "two")),
    ("weighted 0/100", "/split", (), Seen(200, "two")),
    ("retry on 503, exhausted", "/retry?status=503", (), Seen(503, "one")),
    ("route timeout", "/slow?delay=2", (), Seen(504, None)),
    ("fault abort", "/teapot", (), Seen(418, None)),
]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_envoy_and_detour_route_the_same_snapshot_the_same_way(
    pair: Pair, backends: Backends
) -> None:
    pair.plane.set_snapshot("v1", mesh(backends))
    pair.start()
    for node in pair.nodes.values():
        pair.plane.wait_acked("v1", ALL_TYPES, node_id=node)
    table = []
    for what, path, extra, expected in SCENARIOS:
        seen = {}
        retried = {}
        for pod in (pair.envoy, pair.detour):
            before = backends.requests_seen(backends.one)
            seen[pod.name] = call(pod, f"http://{WEB_VIP}:8080{path}", *extra)
            retried[pod.name] = backends.requests_seen(backends.one) - before
        table.append((what, seen, retried))
        assert seen["envoy"] == expected, (what, seen)  # the scenario means what it says
        assert seen["detour"].status == seen["envoy"].status, (what, seen)
        assert seen["detour"].origin == seen["envoy"].origin, (what, seen)
        assert retried["detour"] == retried["envoy"], (what, retried)
    retry_row = next(row for row in table if row[0].startswith("retry"))
    assert retry_row[2]["envoy"] == 3  # one try and two retries reached the origin
    # ORIGINAL_DST passthrough: an address no listener knows goes where the app sent it.
    direct = f"http://{backends.three.ip}:7070/"
    assert pair.both(lambda pod: call(pod, direct)) == (Seen(200, "three-direct"),) * 2
    # ... and an HTTP port the mesh has, on an address it does not: istiod's allow_any.
    unknown = f"http://{backends.three.ip}:8080/"
    assert pair.both(lambda pod: call(pod, unknown)) == (Seen(200, "three"),) * 2


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_envoy_and_detour_follow_an_endpoint_removal_alike(pair: Pair, backends: Backends) -> None:
    pair.plane.set_snapshot("v1", mesh(backends, v1=[backends.one, backends.three]))
    pair.start()
    for node in pair.nodes.values():
        pair.plane.wait_acked("v1", ALL_TYPES, node_id=node)
    # EDS: backend one leaves the v1 subset; no request goes to it any more.
    pair.publish("v2", mesh(backends, v1=[backends.three]))
    for pod in (pair.envoy, pair.detour):
        origins = {call(pod, f"http://{WEB_VIP}:8080/").origin for _ in range(6)}
        assert origins == {"three"}, (pod.name, origins)
    assert (
        pair.both(lambda pod: call(pod, f"http://{WEB_VIP}:8080/canary")) == (Seen(200, "two"),) * 2
    )


def test_a_cluster_removed_under_a_route_is_taken_and_answers_503_as_in_envoy(
    pair: Pair, backends: Backends
) -> None:
    """istiod removes a service's clusters before the routes that name them: Envoy takes
    that and answers the route 503 (NC); so must Detour, not keep the old cluster."""
    pair.plane.set_snapshot("v1", mesh(backends))
    pair.start()
    for node in pair.nodes.values():
        pair.plane.wait_acked("v1", ALL_TYPES, node_id=node)
    pair.plane.set_snapshot("v2", mesh(backends, with_v2=False))
    pair.plane.wait_acked("v2", ALL_TYPES, node_id=pair.nodes["envoy"])
    assert call(pair.envoy, f"http://{WEB_VIP}:8080/canary") == Seen(503, None)  # NC
    pair.plane.wait_acked("v2", ALL_TYPES, node_id=pair.nodes["detour"])
    assert call(pair.detour, f"http://{WEB_VIP}:8080/canary") == Seen(503, None)
    assert pair.both(lambda pod: call(pod, f"http://{WEB_VIP}:8080/")) == (Seen(200, "one"),) * 2


def test_envoy_and_detour_eject_an_endpoint_after_the_same_run_of_5xx(
    pair: Pair, backends: Backends
) -> None:
    pair.plane.set_snapshot("v1", mesh(backends, outlier=True))
    pair.start()
    for node in pair.nodes.values():
        pair.plane.wait_acked("v1", ALL_TYPES, node_id=node)
    url = f"http://{WEB_VIP}:8080/both?status_of=two:500"  # only origin two answers 500
    seen = {}
    for pod in (pair.envoy, pair.detour):
        replies = [call(pod, url) for _ in range(12)]
        seen[pod.name] = (replies.count(Seen(500, "two")), replies[-6:])
    # Round robin over one and two: two's third 500 ejects it, then only one answers.
    assert seen["envoy"] == (3, [Seen(200, "one")] * 6), seen
    assert seen["detour"] == seen["envoy"]


def _duplicate_cluster(resources: dict) -> dict:
    resources[TYPE_CLUSTER].append(resources[TYPE_CLUSTER][1])
    return resources


def _negative_timeout(resources: dict) -> dict:
    resources[TYPE_CLUSTER][1] = cluster(WEB, connect_timeout="-1s")
    return resources


def _bad_regex(resources: dict) -> dict:
    config = resources[TYPE_ROUTE][0]
    config.virtual_hosts[0].routes[0].match.ClearField("prefix")
    config.virtual_hosts[0].routes[0].match.safe_regex.regex = "/canary("
    return resources


@pytest.mark.parametrize(
    ("corrupt", "type_url"),
    [
        (_duplicate_cluster, TYPE_CLUSTER),
        (_negative_timeout, TYPE_CLUSTER),
        (_bad_regex, TYPE_ROUTE),
    ],
    ids=["duplicate-cluster", "negative-connect-timeout", "invalid-regex"],
)
def test_a_snapshot_envoy_refuses_detour_refuses(
    pair: Pair, backends: Backends, corrupt: Callable[[dict], dict], type_url: str
) -> None:
    pair.plane.set_snapshot("v1", mesh(backends))
    pair.start()
    for node in pair.nodes.values():
        pair.plane.wait_acked("v1", ALL_TYPES, node_id=node)
    pair.plane.set_snapshot("bad", corrupt(mesh(backends)))
    envoy = pair.plane.wait_nacked(type_url, node_id=pair.nodes["envoy"])
    detour = pair.plane.wait_nacked(type_url, node_id=pair.nodes["detour"])
    assert envoy.version == detour.version == "v1"  # both still hold v1
    assert detour.error
    # Both keep serving v1.
    assert (
        pair.both(lambda pod: call(pod, f"http://{WEB_VIP}:8080/canary")) == (Seen(200, "two"),) * 2
    )
