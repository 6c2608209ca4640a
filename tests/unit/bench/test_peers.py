"""Each peer's rendered config says what the benchmark claims it says: the capture port, the
original destination as upstream, the layer, one thread. Where the peer's own binary is on the
machine (after ``make bench-peers``), it is asked to validate the rendered file too."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.envoy_validate import envoy_validate
from support.prereq import require

from bench.peers import OUTBOUND_PORT, VenvPaths, detour, envoy, haproxy, mitmproxy, pproxy
from bench.peers.mtls import MtlsPlan, TlsFiles
from bench.peers.registry import launch_for
from bench.scenarios import ROWS
from proxy.config.loader import parse_mesh

REPO = Path(__file__).resolve().parents[3]
VENV = VenvPaths(REPO / "build" / "bench-venv")


def _listener(bootstrap: dict) -> dict:
    (listener,) = bootstrap["static_resources"]["listeners"]
    return listener


@pytest.mark.parametrize("layer", ["tcp", "http"])
def test_envoy_listens_on_the_capture_port_and_sends_to_the_original_destination(layer):
    bootstrap = json.loads(envoy.render_config(layer, "/logs/access.log"))
    listener = _listener(bootstrap)
    assert listener["address"]["socket_address"]["port_value"] == OUTBOUND_PORT
    (listener_filter,) = listener["listener_filters"]
    assert listener_filter["name"] == "envoy.filters.listener.original_dst"
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert (cluster["type"], cluster["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    # Istio's thresholds, not Envoy's default 1,024 connections: thousands are held open.
    (thresholds,) = cluster["circuit_breakers"]["thresholds"]
    assert thresholds["max_connections"] == 2**32 - 1
    (chain,) = listener["filter_chains"]
    (network_filter,) = chain["filters"]
    config = network_filter["typed_config"]
    assert config["access_log"][0]["typed_config"]["path"] == "/logs/access.log"
    if layer == "tcp":
        assert network_filter["name"] == "envoy.filters.network.tcp_proxy"
        assert config["cluster"] == cluster["name"]
    else:
        assert network_filter["name"] == "envoy.filters.network.http_connection_manager"
        (vhost,) = config["route_config"]["virtual_hosts"]
        assert vhost["domains"] == ["*"]
        assert vhost["routes"][0]["route"]["cluster"] == cluster["name"]
        assert [f["name"] for f in config["http_filters"]] == ["envoy.filters.http.router"]
    # The admin port stays on loopback, where only the pod itself reaches it.
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_envoy_runs_single_threaded_without_hot_restart():
    launch = envoy.launch("/x/envoy", "tcp", 1401)
    argv = list(launch.argv)
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "--disable-hot-restart" in argv
    assert launch.resolved_argv(Path("/w"))[2] == "/w/envoy.yaml"
    assert launch.uid == 1401


@pytest.mark.parametrize("layer", ["tcp", "http"])
def test_envoy_itself_accepts_the_rendered_bootstrap(layer, tmp_path):
    require(Path(VENV.envoy).exists(), "Envoy in build/bench-venv (make bench-peers)")
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render_config(layer, str(tmp_path / "access.log")))
    envoy_validate(VENV.envoy, config)


@pytest.mark.parametrize("layer", ["tcp", "http"])
def test_haproxy_follows_the_original_destination_in_its_mode(layer):
    text = haproxy.render_config(layer, 9500)
    lines = [line.strip() for line in text.splitlines()]
    assert "server s 0.0.0.0" in lines  # no port: the client's original port
    assert f"mode {layer}" in lines
    assert f"bind 0.0.0.0:{OUTBOUND_PORT}" in lines
    assert "nbthread 1" in lines
    assert "maxconn 9500" in lines
    assert ("option httplog" in lines) == (layer == "http")


def test_haproxy_maxconn_fits_the_descriptor_limit():
    # Two sockets per proxied connection plus its own: 20,000 descriptors hold 9,500.
    assert haproxy.maxconn_for(20000) == 9500
    assert haproxy.maxconn_for(1 << 20) == 40000
    assert haproxy.maxconn_for(1500) == 1000


@pytest.mark.parametrize("layer", ["tcp", "http"])
def test_haproxy_itself_accepts_the_rendered_config(layer, tmp_path):
    require(shutil.which("haproxy") is not None, "haproxy (make bench-peers)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy.render_config(layer, 1000))
    done = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pproxy_and_mitmproxy_listen_transparently_on_the_capture_port():
    assert pproxy.listen_uri() == f"redir://0.0.0.0:{OUTBOUND_PORT}"
    argv = list(mitmproxy.launch("/x/mitmdump", 1406).resolved_argv(Path("/w")))
    assert argv[argv.index("--mode") + 1] == "transparent"
    assert argv[argv.index("--listen-port") + 1] == str(OUTBOUND_PORT)
    assert "confdir=/w/mitmproxy" in argv  # its CA goes where its uid may write


@pytest.mark.parametrize("protocol", ["tcp", "http"])
def test_detour_mesh_file_loads_with_the_sidecars_own_loader(protocol):
    text = detour.render_mesh("10.96.0.10", "10.88.0.20", {"http": 8080, "bulk": 9000}, protocol)
    mesh = parse_mesh(text, "bench")
    (service,) = mesh.services
    assert [str(vip) for vip in service.vips] == ["10.96.0.10"]
    assert {p.name: (p.port, p.protocol) for p in service.ports} == {
        "http": (8080, protocol),
        "bulk": (9000, "tcp"),
    }
    assert [str(e.address) for e in service.endpoints] == ["10.88.0.20"]
    breaker = service.policy.circuit_breaker
    assert breaker.max_connections == breaker.max_pending == 2**32 - 1


def test_detour_passthrough_has_no_config_and_extra_flags_come_last():
    launch = detour.launch("/x/detour-proxy", "passthrough", ("--concurrency", "2"))
    assert "--config" not in launch.argv
    assert launch.argv[-2:] == ("--concurrency", "2")  # argparse: the last one wins
    assert launch.uid == detour.PROXY_UID


def test_every_proxy_row_gets_a_launch_as_its_own_uid():
    meshes = {"mesh": "m", "http": "h"}
    seen = {}
    for row in ROWS:
        if row.uid is None:
            with pytest.raises(ValueError):
                launch_for(row, VENV, "/x/detour-proxy", meshes)
            continue
        plan = None
        if row.mtls:  # a pair's client side needs the pair's plan (see test_mtls.py)
            tls = TlsFiles.in_dir("/certs")
            plan = MtlsPlan(row.mtls, "10.96.0.10", "10.88.0.100", 8080, tls, tls)
        launch = launch_for(row, VENV, "/x/detour-proxy", meshes, mtls=plan)
        assert launch.uid == row.uid
        seen.setdefault(row.peer, set()).add(row.uid)
    # Each peer runs as its own uid; Detour's rows all as 1337.
    assert seen["detour"] == {1337}
    others = [uid for peer, uids in seen.items() if peer != "detour" for uid in uids]
    assert len(others) == len(set(others)) and 1337 not in others
