"""TLS to the control plane: the bootstrap's transport socket on the ADS cluster, what is
refused by name, and the checks of the files it names (read as a stream opens)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.control_plane_certs import ISTIOD_NAME, serving_certificate
from support.envoy_validate import envoy_validate
from support.prereq import require
from support.xds_snapshots import bootstrap as make_bootstrap
from support.xds_snapshots import tls_transport_socket

from ca.authority import create_root, issue
from proxy.xds.bootstrap import BootstrapError, parse_bootstrap
from proxy.xds.control_plane_tls import ControlPlaneTlsError

REPO = Path(__file__).resolve().parents[4]
ENVOY = REPO / "build" / "bench-venv" / "lib" / "python3.11" / "site-packages" / "envoy" / "_bin"
NODE = "sidecar~10.88.0.10~client-1.default~default.svc.cluster.local"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A mesh root, a workload's chain and key from it, istiod's serving certificate, and
    a second root nothing here is signed by."""
    base = tmp_path_factory.mktemp("cp-tls")
    now = datetime.now(UTC)
    authority = create_root("cluster.local", now)
    workload = issue(authority, "default", "client", now)
    other = issue(create_root("cluster.local", now), "default", "client", now)
    written = {
        "root": workload.root,
        "chain": workload.cert_chain,
        "key": workload.key,
        "other_key": other.key,
        "server_chain": serving_certificate(authority).cert_chain,
        "garbage": b"not a certificate\n",
    }
    paths = {}
    for name, data in written.items():
        paths[name] = base / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def text_of(socket: dict) -> str:
    return json.dumps(make_bootstrap(NODE, "10.88.0.1:15012", "GRPC", socket))


def mutual(files: dict[str, Path], **changes: str) -> dict:
    names = {"root": "root", "chain": "chain", "key": "key", **changes}
    return tls_transport_socket(
        str(files[names["root"]]),
        ISTIOD_NAME,
        str(files[names["chain"]]),
        str(files[names["key"]]),
    )


def test_an_mtls_bootstrap_names_the_server_to_verify_and_the_files_to_present(files):
    boot = parse_bootstrap(text_of(mutual(files)), "b.json")
    assert boot.server == "10.88.0.1:15012"
    tls = boot.tls
    assert tls is not None and tls.server_name == ISTIOD_NAME
    material = tls.load()
    assert (material.root, material.chain, material.key) == (
        files["root"].read_bytes(),
        files["chain"].read_bytes(),
        files["key"].read_bytes(),
    )
    assert tls.describe() == {
        "server_name": ISTIOD_NAME,
        "trusted_ca": str(files["root"]),
        "client_certificate": str(files["chain"]),
    }


def test_without_a_client_certificate_it_is_server_verified_tls(files):
    socket = tls_transport_socket(str(files["root"]), ISTIOD_NAME)
    tls = parse_bootstrap(text_of(socket), "b.json").tls
    assert tls is not None and tls.load().chain is None and tls.load().key is None


def test_a_plaintext_bootstrap_has_no_tls():
    assert parse_bootstrap(text_of({}), "b.json").tls is None


def test_inline_sources_are_taken_as_written(files):
    socket = mutual(files)
    common = socket["typed_config"]["common_tls_context"]
    common["validation_context"]["trusted_ca"] = {"inline_string": files["root"].read_text()}
    tls = parse_bootstrap(text_of(socket), "b.json").tls
    assert tls is not None and tls.load().root == files["root"].read_bytes()
    assert tls.describe()["trusted_ca"] == "<inline>"


def _common(socket: dict) -> dict:
    return socket["typed_config"]["common_tls_context"]


def _uri_matcher(socket: dict) -> None:
    _common(socket)["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/istio-system/sa/x"}}
    ]


def _prefix_matcher(socket: dict) -> None:
    _common(socket)["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "DNS", "matcher": {"prefix": "istiod."}}
    ]


def _no_matcher(socket: dict) -> None:
    del _common(socket)["validation_context"]["match_typed_subject_alt_names"]


def _no_validation(socket: dict) -> None:
    del _common(socket)["validation_context"]


def _other_sni(socket: dict) -> None:
    socket["typed_config"]["sni"] = "elsewhere.example"


def _chain_without_key(socket: dict) -> None:
    del _common(socket)["tls_certificates"][0]["private_key"]


def _unsupported_field(socket: dict) -> None:
    socket["typed_config"]["max_session_keys"] = 4


def _other_socket(socket: dict) -> None:
    socket["name"] = "envoy.transport_sockets.raw_buffer"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_uri_matcher, "validation_context.match_typed_subject_alt_names"),
        (_prefix_matcher, "match_typed_subject_alt_names[0].matcher.prefix"),
        (_no_matcher, "validation_context.match_typed_subject_alt_names"),
        (_no_validation, "common_tls_context.validation_context"),
        (_other_sni, "typed_config.sni"),
        (_chain_without_key, "tls_certificates[0]"),
        (_unsupported_field, "typed_config.max_session_keys"),
        (_other_socket, "transport_socket.name"),
    ],
)
def test_a_transport_socket_detour_cannot_honour_is_refused_naming_the_field(files, change, named):
    socket = mutual(files)
    change(socket)
    with pytest.raises(BootstrapError) as caught:
        parse_bootstrap(text_of(socket), "b.json")
    assert named in caught.value.field, caught.value
    assert str(caught.value).startswith("b.json: static_resources.clusters[0].transport_socket")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"key": "other_key"}, "private_key (%(other_key)s): not the key of"),
        ({"root": "garbage"}, "trusted_ca (%(garbage)s): not PEM certificates"),
        ({"chain": "garbage"}, "certificate_chain (%(garbage)s): not PEM certificates"),
        ({"key": "garbage"}, "private_key: not an unencrypted PEM private key"),
        ({"root": "missing"}, "trusted_ca (%(missing)s): cannot read"),
    ],
)
def test_files_that_cannot_be_used_are_an_error_naming_the_field_and_the_file(files, changes, says):
    paths = {**files, "missing": files["root"].with_name("missing.pem")}
    tls = parse_bootstrap(text_of(mutual(paths, **changes)), "b.json").tls
    assert tls is not None
    with pytest.raises(ControlPlaneTlsError) as caught:
        tls.load()
    assert says % {k: str(v) for k, v in paths.items()} in str(caught.value)
    assert "BEGIN" not in str(caught.value)  # never the material itself


def test_envoy_itself_accepts_the_same_tls_bootstrap(files, tmp_path):
    envoy = ENVOY / "envoy"
    require(envoy.exists(), "Envoy in build/bench-venv (make bench-peers)")
    config = tmp_path / "bootstrap.json"
    config.write_text(text_of(mutual(files)))
    envoy_validate(str(envoy), config)
