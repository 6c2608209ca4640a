"""A sidecar driven by a control plane over ADS: real sidecar, real pods, a test control plane.

The control plane (tests/support/xds_control_plane.py, a test control plane named as such:
istiod cannot be built here) listens on the lab's bridge; the client pod's sidecar starts
with ``--bootstrap`` naming it and an Istio node id, and no mesh file. Apps call services by
VIP and by name, as they would under Istio; the snapshots are istiod-shaped.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime

import pytest
import yaml
from support.control_plane_certs import ISTIOD_NAME, serving_certificate
from support.h2_mesh import prometheus_sum
from support.lab import wait_until
from support.mesh_lab import GATEWAY_V4, PROXY_UID, MeshLab, Pod
from support.mesh_lab import stat as sidecar_stat
from support.xds_control_plane import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    ServingTls,
    XdsTestControlPlane,
)
from support.xds_snapshots import (
    MESHED_ENDPOINT,
    assignment,
    bootstrap,
    cluster,
    http_listener,
    istio_mtls,
    outbound,
    passthrough_cluster,
    route,
    route_config,
    snapshot,
    tcp_listener,
    tls_transport_socket,
    virtual_host,
    virtual_outbound,
)

from ca.authority import create_root
from ca.store import load_authority

WEB_VIP = "10.96.0.7"
RAW_VIP = "10.96.0.20"
WEB = outbound(8080, "web.default")
WEB_V1 = outbound(8080, "web.default", "v1")
WEB_V2 = outbound(8080, "web.default", "v2")
RAW = outbound(9000, "raw.default")
NODE_ID = "sidecar~10.88.0.10~client-1.default~default.svc.cluster.local"


def mesh_snapshot(web: list[Pod], canary: list[Pod], raw: list[Pod]) -> dict:
    """web: v1 endpoints; canary: v2 ones (both in the service); /canary goes to v2."""
    everyone = web + canary
    return snapshot(
        passthrough_cluster(),
        cluster(WEB),
        cluster(WEB_V1),
        cluster(WEB_V2),
        cluster(RAW),
        assignment(WEB, [(p.ip, 8080) for p in everyone]),
        assignment(WEB_V1, [(p.ip, 8080) for p in web]),
        assignment(WEB_V2, [(p.ip, 8080) for p in canary]),
        assignment(RAW, [(p.ip, 8080) for p in raw]),
        virtual_outbound(),
        tcp_listener(RAW_VIP, 9000, RAW),
        http_listener(8080),
        route_config(
            "8080",
            [
                virtual_host(
                    "web.default",
                    8080,
                    WEB_VIP,
                    [
                        route(WEB_V2, "/canary"),
                        route(
                            WEB_V1, retry_policy={"retry_on": "connect-failure", "num_retries": 2}
                        ),
                    ],
                )
            ],
        ),
    )


@pytest.fixture
def control_plane(mesh_lab: MeshLab):
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=mesh_lab.bridge_ns.name)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


# Both variants of ADS, on every test: State of the World and Delta (incremental).
@pytest.fixture(params=["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def api_type(request: pytest.FixtureRequest) -> str:
    return request.param


def start_client(
    lab: MeshLab,
    plane: XdsTestControlPlane,
    api_type: str,
    *extra: str,
    client: Pod | None = None,
    transport_socket: dict | None = None,
    ready: bool = True,
) -> Pod:
    client = client or lab.add_pod("client", 10)
    config = lab.write_config(
        "bootstrap.json",
        json.dumps(bootstrap(NODE_ID, plane.address, api_type, transport_socket)),
    )
    lab.intercept(client, "--capture-dns")
    lab.start_sidecar(client, None, "--bootstrap", str(config), *extra, ready=ready)
    return client


def backends(lab: MeshLab, count: int) -> list[Pod]:
    pods = [lab.add_pod(f"backend{n}", 10 + n) for n in range(1, count + 1)]
    for pod in pods:
        pod.serve_http(8080, pod.name)
    return pods


def answered_by(reply: str) -> str:
    return reply.split(" ")[0]


def config_dump(pod: Pod) -> dict:
    code, body = pod.admin("/config_dump")
    assert code == 200
    return json.loads(body)


def test_a_sidecar_runs_the_mesh_its_control_plane_sends_and_follows_an_eds_change(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    one, two, three = backends(mesh_lab, 3)
    control_plane.set_snapshot("v1", mesh_snapshot([one], [two], [three]))
    client = start_client(mesh_lab, control_plane, api_type)  # ready only once v1 is applied
    control_plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE_ID)
    assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
    assert answered_by(client.curl("http://web:8080/")) == "backend1"  # by name, DNS proxy
    assert answered_by(client.curl("http://web.default.svc.cluster.local:8080/canary")) == (
        "backend2"
    )
    assert answered_by(client.curl(f"http://{RAW_VIP}:9000/")) == "backend3"  # tcp_proxy
    xds = config_dump(client)["xds"]
    assert xds["versions"]["CDS"] == "v1" and xds["connected"]
    assert xds["variant"] == {"GRPC": "sotw", "DELTA_GRPC": "delta"}[api_type]
    # The service moves: v1's endpoint is now backend3.
    control_plane.set_snapshot("v2", mesh_snapshot([three], [two], [three]))
    wait_until(
        lambda: answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend3",
        10,
        "the sidecar to follow the EDS change",
    )
    control_plane.wait_acked("v2", [TYPE_CLUSTER], node_id=NODE_ID)


def test_every_worker_process_follows_an_endpoint_update(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    """Two worker processes: an EDS-only push (istiod's usual one) reaches both, as only the
    services it replaced (the supervisor sends those, not the mesh)."""
    one, two, three = backends(mesh_lab, 3)
    control_plane.set_snapshot("v1", mesh_snapshot([one], [two], [three]))
    client = start_client(mesh_lab, control_plane, api_type, "--concurrency", "2")
    control_plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE_ID)
    control_plane.set_snapshot({TYPE_ENDPOINT: "v2"}, mesh_snapshot([three], [two], [three]))
    control_plane.wait_acked("v2", [TYPE_ENDPOINT], node_id=NODE_ID)
    # New connections land on either worker: every one of them must route by v2.
    answers = {answered_by(client.curl(f"http://{WEB_VIP}:8080/")) for _ in range(20)}
    assert answers == {"backend3"}
    assert answered_by(client.curl("http://web:8080/canary")) == "backend2"


def test_a_snapshot_detour_cannot_apply_is_nacked_and_the_running_mesh_keeps_serving(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    one, two = backends(mesh_lab, 2)
    control_plane.set_snapshot("v1", mesh_snapshot([one], [two], [one]))
    client = start_client(mesh_lab, control_plane, api_type)
    # One cluster Detour cannot run, and RAW's cluster gone: CDS v2 is refused whole, so RAW
    # (still in CDS v1) keeps serving; the other types of v2 are taken, as Envoy takes them.
    bad = mesh_snapshot([one], [two], [one])
    bad[TYPE_CLUSTER] = [
        cluster(WEB, lb_policy="MAGLEV"),
        *(c for c in bad[TYPE_CLUSTER] if c.name not in (WEB, RAW)),
    ]
    control_plane.set_snapshot("v2", bad)
    nack = control_plane.wait_nacked(TYPE_CLUSTER, node_id=NODE_ID)
    assert "lb_policy" in nack.error and WEB in nack.error
    control_plane.wait_acked("v2", [TYPE_LISTENER], node_id=NODE_ID)
    assert answered_by(client.curl(f"http://{RAW_VIP}:9000/")) == "backend1"
    assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
    dump = config_dump(client)["xds"]
    assert dump["versions"]["CDS"] == "v1" and "lb_policy" in dump["last_nack"]
    assert RAW in dump["resources"]["CDS"]


def test_traffic_outlives_the_control_plane_and_the_sidecar_resyncs_when_it_returns(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    one, two = backends(mesh_lab, 2)
    control_plane.set_snapshot("v1", mesh_snapshot([one], [two], [one]))
    client = start_client(mesh_lab, control_plane, api_type)
    control_plane.stop()
    wait_until(lambda: not config_dump(client)["xds"]["connected"], 10, "the stream to end")
    assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
    control_plane.set_snapshot("v2", mesh_snapshot([two], [two], [two]))
    control_plane.start()  # the same port
    control_plane.wait_acked("v2", [TYPE_CLUSTER], node_id=NODE_ID, timeout=40)
    wait_until(
        lambda: answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend2",
        10,
        "the resynced mesh to route",
    )
    assert config_dump(client)["xds"]["streams"] >= 2


def test_a_restarted_sidecar_serves_its_cached_snapshot_while_the_control_plane_is_down(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    one, two = backends(mesh_lab, 2)
    control_plane.set_snapshot("v1", mesh_snapshot([one], [two], [one]))
    cache_dir = mesh_lab.workdir / "xds"
    cache_dir.mkdir()
    os.chown(cache_dir, PROXY_UID, PROXY_UID)  # the sidecar writes it as uid 1337
    cache = cache_dir / "snapshot.json"
    client = start_client(mesh_lab, control_plane, api_type, "--xds-cache", str(cache))
    control_plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE_ID)
    wait_until(cache.exists, 10, "the applied snapshot to be written")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    control_plane.stop()
    client.sidecar.terminate()
    client.sidecar.wait(10)
    config = mesh_lab.workdir / "bootstrap.json"
    mesh_lab.start_sidecar(
        client, None, "--bootstrap", str(config), "--xds-cache", str(cache)
    )  # ready from the cache, the control plane still down
    assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
    assert answered_by(client.curl("http://web:8080/canary")) == "backend2"
    xds = config_dump(client)["xds"]
    assert not xds["connected"] and xds["applied"].startswith("xds cache")
    assert xds["versions"]["CDS"] == "v1"


# --- TLS to the control plane (istiod's 15012) ------------------------------------------------


def tls_plane(lab: MeshLab, impostor: bool = False) -> XdsTestControlPlane:
    """A test control plane serving over TLS as istiod.istio-system.svc, requiring a client
    certificate of the lab's mesh CA; ``impostor``: its certificate is from another root."""
    ca_dir = lab.workdir / "ca"
    now = datetime.now(UTC)
    signer = create_root("cluster.local", now) if impostor else load_authority(ca_dir, now)
    served = serving_certificate(signer)
    # Either way it accepts the mesh's sidecars: an impostor is wrong only about itself.
    tls = ServingTls(served.cert_chain, served.key, (ca_dir / "root-cert.pem").read_bytes())
    return XdsTestControlPlane(GATEWAY_V4, 0, netns=lab.bridge_ns.name, tls=tls)


def client_with_identity(lab: MeshLab) -> tuple[Pod, dict]:
    client = lab.add_pod("client", 10)
    return client, lab.issue_identity(client, "client")  # makes the lab's CA "ca"


def mutual_tls(identity: dict) -> dict:
    return tls_transport_socket(
        identity["root_cert"], ISTIOD_NAME, identity["cert_chain"], identity["private_key"]
    )


def test_a_sidecar_takes_its_mesh_over_mutual_tls_and_the_control_plane_knows_its_spiffe_id(
    mesh_lab: MeshLab, api_type: str
) -> None:
    (one,) = backends(mesh_lab, 1)
    client, identity = client_with_identity(mesh_lab)
    plane = tls_plane(mesh_lab)
    plane.set_snapshot("v1", mesh_snapshot([one], [one], [one]))
    plane.start()
    try:
        start_client(
            mesh_lab, plane, api_type, client=client, transport_socket=mutual_tls(identity)
        )
        plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE_ID)
        assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
        assert plane.peers == [["spiffe://cluster.local/ns/default/sa/client"]]
        dump = config_dump(client)
        assert dump["xds"]["tls"] == {
            "server_name": ISTIOD_NAME,
            "trusted_ca": identity["root_cert"],
            "client_certificate": identity["cert_chain"],
        }
        assert "PRIVATE KEY" not in json.dumps(dump)
    finally:
        plane.stop()


def test_a_control_plane_with_a_certificate_from_another_root_is_never_trusted(
    mesh_lab: MeshLab, api_type: str
) -> None:
    (one,) = backends(mesh_lab, 1)
    client, identity = client_with_identity(mesh_lab)
    plane = tls_plane(mesh_lab, impostor=True)
    plane.set_snapshot("v1", mesh_snapshot([one], [one], [one]))
    plane.start()
    try:
        start_client(
            mesh_lab,
            plane,
            api_type,
            client=client,
            transport_socket=mutual_tls(identity),
            ready=False,
        )

        def refusals() -> int:
            return client.read_sidecar_log().count(f"xDS stream to {plane.address}: UNAVAILABLE")

        # It keeps trying (with back-off), and no stream ever reaches the impostor.
        wait_until(lambda: refusals() >= 2, 15, "two refused connections to the impostor")
        assert plane.streams_opened == 0 and plane.replies() == []
        xds = config_dump(client)["xds"]
        assert not xds["connected"] and xds["versions"]["CDS"] == ""
    finally:
        plane.stop()


def test_a_key_that_is_not_the_certificate_s_stops_the_sidecar_at_start_naming_the_field(
    mesh_lab: MeshLab,
) -> None:
    client, identity = client_with_identity(mesh_lab)
    other = mesh_lab.issue_identity(mesh_lab.add_pod("other", 11), "other")
    socket = mutual_tls({**identity, "private_key": other["private_key"]})
    plane = XdsTestControlPlane(GATEWAY_V4, 0, netns=mesh_lab.bridge_ns.name)
    start_client(mesh_lab, plane, "GRPC", client=client, transport_socket=socket, ready=False)
    assert client.sidecar is not None
    assert client.sidecar.wait(15) == 2
    log = client.read_sidecar_log()
    assert "tls_certificates[0].private_key" in log and "not the key of" in log
    assert other["private_key"] in log and "BEGIN" not in log


# --- mesh mTLS from CDS (istiod's transport_socket_matches) ------------------------------------

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


def meshed_web_snapshot(backend: Pod, spiffe_id: str) -> dict:
    """web's one endpoint has a sidecar (tlsMode: istio), verified as ``spiffe_id``."""
    return snapshot(
        passthrough_cluster(),
        cluster(WEB, **istio_mtls(spiffe_id, 8080, "web.default.svc.cluster.local")),
        assignment(WEB, [(backend.ip, 8080)], **MESHED_ENDPOINT),
        virtual_outbound(),
        http_listener(8080),
        route_config("8080", [virtual_host("web.default", 8080, WEB_VIP, [route(WEB)])]),
    )


def strict_backend(lab: MeshLab) -> Pod:
    """A pod whose sidecar (mesh file) accepts only mesh mTLS, as service account web."""
    backend = lab.add_pod("backend1", 11)
    backend.serve_http(8080, backend.name)
    lab.intercept(backend)
    workload = {
        "name": "web",
        "namespace": "default",
        "service_account": "web",
        "inbound_ports": [{"port": 8080, "protocol": "http"}],
        "tls": lab.issue_identity(backend, "web"),
        "peer_authentication": {"mode": "STRICT"},
    }
    lab.start_sidecar(backend, lab.write_config("web.yaml", yaml.safe_dump({"workload": workload})))
    return backend


def test_a_meshed_endpoint_from_cds_is_reached_over_mtls_as_the_identity_cds_names(
    mesh_lab: MeshLab, control_plane: XdsTestControlPlane, api_type: str
) -> None:
    backend = strict_backend(mesh_lab)
    control_plane.set_snapshot(
        "v1", meshed_web_snapshot(backend, "spiffe://cluster.local/ns/default/sa/web")
    )
    client = mesh_lab.add_pod("client", 10)
    workload = {
        "name": "client",
        "namespace": "default",
        "service_account": "client",
        "tls": mesh_lab.issue_identity(client, "client"),
    }
    mesh_file = mesh_lab.write_config("client.yaml", yaml.safe_dump({"workload": workload}))
    start_client(mesh_lab, control_plane, api_type, "--config", str(mesh_file), client=client)
    control_plane.wait_acked("v1", [TYPE_CLUSTER], node_id=NODE_ID)
    # The backend takes nothing but mesh mTLS: an answer means the client's sidecar made it.
    assert answered_by(client.curl(f"http://{WEB_VIP}:8080/")) == "backend1"
    assert answered_by(client.curl("http://web:8080/")) == "backend1"
    mtls = ('connection_security_policy="mutual_tls"', f'source_principal="{CLIENT_ID}"')
    assert prometheus_sum(backend, "istio_requests_total", 'reporter="destination"', *mtls) == 2
    # The control plane now says web runs as another account: the backend's certificate no
    # longer proves it, so the client's sidecar refuses the peer (503), as Envoy would.
    control_plane.set_snapshot(
        "v2", meshed_web_snapshot(backend, "spiffe://cluster.local/ns/default/sa/other")
    )
    control_plane.wait_acked("v2", [TYPE_CLUSTER], node_id=NODE_ID)
    code = client.curl(f"http://{WEB_VIP}:8080/", "-o", "/dev/null", "-w", "%{http_code}")
    assert code == "503"
    assert sidecar_stat(client, "ssl_fail_verify_san") >= 1
