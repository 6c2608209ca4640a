"""The mesh mTLS pairs: both ends of each pair are configured from one plan with the same
certificates, Envoy's configs say what bench/README.md claims (TLS both ways, the peer's
SPIFFE ID checked, a client certificate required, full handshakes), Detour's mesh files load
with the sidecar's own loader, and Envoy itself accepts its configs with real certificates
from detour-ca."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.envoy_validate import envoy_validate
from support.prereq import require

from bench import load, scenarios
from bench.peers import OUTBOUND_PORT, VenvPaths, detour, envoy, mtls
from bench.peers.registry import launch_for, server_launch_for
from proxy.config.loader import parse_mesh

REPO = Path(__file__).resolve().parents[3]
VENV = VenvPaths(REPO / "build" / "bench-venv")
DETOUR_CA = REPO / ".venv" / "bin" / "detour-ca"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/backend"


def plan(inner: mtls.Inner = "http", certs: Path = Path("/certs")) -> mtls.MtlsPlan:
    return mtls.MtlsPlan(
        inner=inner,
        vip="10.96.0.10",
        server_ip="10.88.0.113",
        port=8080,
        client_tls=mtls.TlsFiles.in_dir(certs / "client"),
        server_tls=mtls.TlsFiles.in_dir(certs / "backend"),
    )


def _tls(config: dict) -> dict:
    assert config["name"] == "envoy.transport_sockets.tls"
    return config["typed_config"]


# --- the rows -----------------------------------------------------------------------------


def test_each_mtls_row_is_compared_with_the_envoy_pair_of_its_kind():
    by = scenarios.BY_NAME
    assert scenarios.envoy_reference(by["detour-mtls"]) == "envoy-mtls"
    assert scenarios.envoy_reference(by["envoy-mtls"]) == "envoy-mtls"
    assert scenarios.envoy_reference(by["detour-mtls-tcp"]) == "envoy-mtls-tcp"
    # The other rows keep their layer's reference.
    assert scenarios.envoy_reference(by["detour-http"]) == "envoy-http"


def test_mtls_rows_run_the_groups_the_issue_asks_for():
    for name in ("detour-mtls", "envoy-mtls", "detour-mtls-tcp", "envoy-mtls-tcp"):
        row = scenarios.BY_NAME[name]
        assert row.groups == ("newconn", "keepalive", "latency", "memory"), name
        assert row.via_vip and row.server_uid is not None
    assert scenarios.BY_NAME["detour-mtls"].mtls == "http"
    assert scenarios.BY_NAME["envoy-mtls-tcp"].mtls == "tcp"


def test_every_server_side_runs_as_its_own_uid():
    servers = [r for r in scenarios.ROWS if r.mtls]
    assert {r.server_uid for r in servers if r.peer == "detour"} == {1337}
    envoys = [r.server_uid for r in servers if r.peer == "envoy"]
    clients = [r.uid for r in scenarios.ROWS if r.uid is not None and r.peer != "detour"]
    assert len(set(envoys)) == len(envoys)
    assert not set(envoys) & set(clients)


def test_an_mtls_row_needs_its_plan_and_a_plain_row_has_no_server_side():
    row = scenarios.BY_NAME["envoy-mtls"]
    with pytest.raises(ValueError, match="plan"):
        launch_for(row, VENV, "/x/detour-proxy", {})
    with pytest.raises(ValueError, match="no server side"):
        server_launch_for(scenarios.BY_NAME["envoy-http"], VENV, "/x/detour-proxy", plan())


@pytest.mark.parametrize("name", ["detour-mtls", "envoy-mtls", "detour-mtls-tcp", "envoy-mtls-tcp"])
def test_both_sides_of_a_pair_get_a_launch(name):
    row = scenarios.BY_NAME[name]
    the_plan = plan(row.mtls)
    client = launch_for(row, VENV, "/x/detour-proxy", {}, mtls=the_plan)
    server = server_launch_for(row, VENV, "/x/detour-proxy", the_plan, ("--concurrency", "1"))
    assert (client.uid, server.uid) == (row.uid, row.server_uid)
    # Both ends name the same certificate files of the plan.
    assert "/certs/client/key.pem" in client.config
    assert "/certs/backend/key.pem" in server.config
    if row.peer == "detour":
        assert "--config" in server.argv and server.config_name == "mesh.yaml"


# --- Envoy --------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["http", "tcp"])
def test_envoy_client_originates_mtls_to_the_server_pod_and_checks_its_spiffe_id(inner):
    bootstrap = json.loads(envoy.render_mtls_client(plan(inner), "/logs/access.log"))
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == OUTBOUND_PORT
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    expected = "http_connection_manager" if inner == "http" else "tcp_proxy"
    assert network_filter["name"] == f"envoy.filters.network.{expected}"
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    address = endpoints["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("10.88.0.113", 8080)
    upstream = _tls(cluster["transport_socket"])
    assert upstream["@type"].endswith("tls.v3.UpstreamTlsContext")
    assert "max_session_keys" not in upstream  # Envoy's (and Istio's) default: resume
    common = upstream["common_tls_context"]
    assert common["alpn_protocols"] == ["istio-http/1.1" if inner == "http" else "istio"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    (certificate,) = common["tls_certificates"]
    assert certificate["certificate_chain"]["filename"] == "/certs/client/cert-chain.pem"
    assert certificate["private_key"]["filename"] == "/certs/client/key.pem"
    validation = common["validation_context"]
    assert validation["trusted_ca"]["filename"] == "/certs/client/root-cert.pem"
    (san,) = validation["match_typed_subject_alt_names"]
    assert san == {"san_type": "URI", "matcher": {"exact": SERVER_ID}}


@pytest.mark.parametrize("inner", ["http", "tcp"])
def test_envoy_server_terminates_mtls_on_the_inbound_port_and_requires_a_client_cert(inner):
    bootstrap = json.loads(envoy.render_mtls_server(plan(inner), "/logs/access.log"))
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 15006
    names = [f["name"] for f in listener["listener_filters"]]
    assert names == ["envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector"]
    (chain,) = listener["filter_chains"]
    assert chain["filter_chain_match"]["transport_protocol"] == "tls"
    downstream = _tls(chain["transport_socket"])
    assert downstream["@type"].endswith("tls.v3.DownstreamTlsContext")
    assert downstream["require_client_certificate"] is True
    common = downstream["common_tls_context"]
    assert common["tls_certificates"][0]["private_key"]["filename"] == "/certs/backend/key.pem"
    (san,) = common["validation_context"]["match_typed_subject_alt_names"]
    assert san["matcher"] == {"prefix": "spiffe://cluster.local/"}
    (cluster,) = bootstrap["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    address = endpoints["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 8080)
    assert "transport_socket" not in cluster  # plaintext to the app


# --- Detour -------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["http", "tcp"])
def test_detour_client_mesh_file_meshes_the_server_endpoint(inner):
    mesh = parse_mesh(detour.render_mtls_client(plan(inner)), "bench")
    assert mesh.workload.service_account == "client"
    assert mesh.workload.tls.private_key == "/certs/client/key.pem"
    (service,) = mesh.services
    assert [str(vip) for vip in service.vips] == ["10.96.0.10"]
    assert [(p.port, p.protocol) for p in service.ports] == [(8080, inner)]
    (endpoint,) = service.endpoints
    assert (str(endpoint.address), endpoint.service_account) == ("10.88.0.113", "backend")


@pytest.mark.parametrize("inner", ["http", "tcp"])
def test_detour_server_mesh_file_serves_the_port_in_strict_mtls(inner):
    mesh = parse_mesh(detour.render_mtls_server(plan(inner)), "bench")
    workload = mesh.workload
    assert workload.service_account == "backend"
    assert workload.inbound_ports == (8080,)
    assert workload.inbound_protocols == (((8080, "http"),) if inner == "http" else ())
    assert workload.peer_authentication.mode == "STRICT"
    assert workload.tls.cert_chain == "/certs/backend/cert-chain.pem"


# --- with real certificates ---------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    require(DETOUR_CA.exists(), "detour-ca in .venv (make setup)")
    base = tmp_path_factory.mktemp("certs")
    ca = base / "ca"
    subprocess.run([str(DETOUR_CA), "init", "--dir", str(ca)], check=True, capture_output=True)
    for account in ("client", "backend"):
        argv = [str(DETOUR_CA), "issue", "--dir", str(ca), "--namespace", "default"]
        argv += ["--service-account", account, "--out", str(base / account)]
        subprocess.run(argv, check=True, capture_output=True)
    return base


def test_the_issued_files_are_identities_the_sidecar_accepts(certificates):
    from proxy.tls.identity import TlsFiles, load_identity

    for account in ("client", "backend"):
        files = mtls.TlsFiles.in_dir(certificates / account)
        identity = load_identity(
            TlsFiles(Path(files.cert_chain), Path(files.private_key), Path(files.root_cert)),
            mtls.TRUST_DOMAIN,
            datetime.now(UTC),
        )
        assert str(identity.spiffe) == mtls.spiffe_id(account)


@pytest.mark.parametrize("inner", ["http", "tcp"])
@pytest.mark.parametrize("side", ["client", "server"])
def test_envoy_itself_accepts_the_mtls_configs(certificates, tmp_path, inner, side):
    require(Path(VENV.envoy).exists(), "Envoy in build/bench-venv (make bench-peers)")
    render = envoy.render_mtls_client if side == "client" else envoy.render_mtls_server
    config = tmp_path / "envoy.yaml"
    config.write_text(render(plan(inner, certificates), str(tmp_path / "access.log")))
    envoy_validate(VENV.envoy, config)


# --- handshake counters -------------------------------------------------------------------

ENVOY_STATS = """cluster.backend.ssl.ciphers.TLS_AES_128_GCM_SHA256: 40
cluster.backend.ssl.connection_error: 0
cluster.backend.ssl.handshake: 41
cluster.backend.ssl.session_reused: 0
listener.0.0.0.0_15006.ssl.handshake: 39
listener.0.0.0.0_15006.ssl.session_reused: 2
"""
DETOUR_STATS = """downstream_ssl_handshake.listener=inbound4: 12
ssl_connection_error.cluster=outbound|8080||backend.default.svc.cluster.local: 1
ssl_handshake.cluster=outbound|8080||backend.default.svc.cluster.local: 30
ssl_handshake.cluster=outbound|9000||other.default.svc.cluster.local: 3
"""


def test_handshake_counters_are_read_from_either_admin_port():
    assert load.stat_sum(ENVOY_STATS, envoy.CLIENT_HANDSHAKES) == 41
    assert load.stat_sum(ENVOY_STATS, envoy.SERVER_HANDSHAKES) == 39
    assert load.stat_sum(ENVOY_STATS, envoy.RESUMED) == 2
    assert load.stat_sum(DETOUR_STATS, detour.CLIENT_HANDSHAKES) == 33
    assert load.stat_sum(DETOUR_STATS, detour.SERVER_HANDSHAKES) == 12
    assert load.stat_sum("", detour.SERVER_HANDSHAKES) == 0
