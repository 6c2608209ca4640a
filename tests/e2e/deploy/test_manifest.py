"""deploy/kubernetes/pod.yaml: schema-valid, and saying what Detour depends on.

Two layers:
- kubernetes-validate (PyPI; ships the Kubernetes JSON schemas, so it works offline) checks
  the documents against the Pod and ConfigMap schemas, strictly (unknown fields are errors).
  It is installed by the test itself into build/deploy/validator-venv (once, from PyPI), not
  into the project's venv; if that install is impossible the test skips, or fails under CI.
- PyYAML checks what Detour relies on: capabilities, uids, probe, annotations, that every
  DETOUR_* variable is a real detour-init option with a valid value, that the sidecar's
  arguments parse and the mounted mesh config loads.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support.lab import REPO
from support.prereq import require

from init.config import OPTIONS, parse_config
from proxy.cli import build_parser as proxy_parser
from proxy.config.loader import parse_mesh

MANIFEST = REPO / "deploy" / "kubernetes" / "pod.yaml"
VALIDATOR_VENV = REPO / "build" / "deploy" / "validator-venv"
VALIDATOR = "kubernetes-validate>=1.30"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def kubernetes_validate() -> Path:
    tool = VALIDATOR_VENV / "bin" / "kubernetes-validate"
    if not tool.exists():
        shutil.rmtree(VALIDATOR_VENV, ignore_errors=True)
        made = subprocess.run(
            ["/usr/bin/python3", "-m", "venv", str(VALIDATOR_VENV)], capture_output=True, text=True
        )
        require(made.returncode == 0, f"a venv for kubernetes-validate: {made.stderr}")
        pip = [str(VALIDATOR_VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        done = subprocess.run(
            [*pip, "install", "--quiet", VALIDATOR], capture_output=True, text=True, timeout=300
        )
        require(
            done.returncode == 0 and tool.exists(),
            f"{VALIDATOR} (pip install from PyPI into {VALIDATOR_VENV}): {done.stderr[-2000:]}",
        )
    return tool


def _containers(documents: dict[str, dict]) -> dict[str, dict]:
    spec = documents["Pod"]["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def test_manifest_is_valid_for_kubernetes_schema_offline(kubernetes_validate: Path) -> None:
    require(shutil.which("unshare") is not None, "the unshare command (util-linux)")
    # unshare --net: no network at all, proving the schemas come with the package.
    done = subprocess.run(
        ["unshare", "--net", str(kubernetes_validate), "--strict", str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pod/client" in done.stdout + done.stderr
    assert "configmap/detour-mesh" in done.stdout + done.stderr


def test_validator_catches_a_broken_pod(kubernetes_validate: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text().replace("containerPort: 15021", "contanerPort: 15021"))
    done = subprocess.run(
        [str(kubernetes_validate), "--strict", str(broken)], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "containerPort" in done.stdout + done.stderr


def test_init_container_is_istio_like_and_env_is_real_options(documents) -> None:
    init = _containers(documents)["detour-init"]
    assert init["args"][0] == "init"
    sc = init["securityContext"]
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc.get("privileged", False) is False
    known = {option.env for option in OPTIONS}
    env = {item["name"]: item.get("value", "") for item in init["env"]}
    assert env, "the init container is configured by DETOUR_* variables only"
    for name in env:
        assert name.startswith("DETOUR_") and name in known, f"{name} is not a detour-init option"
    config = parse_config({}, env)  # every value parses, as detour-init would read it
    assert config.backend == "nft" and config.capture_dns is True


def test_sidecar_runs_as_1337_read_only_with_probe_and_mesh(documents) -> None:
    pod = documents["Pod"]
    sidecar = _containers(documents)["detour-proxy"]
    sc = sidecar["securityContext"]
    assert sc["runAsUser"] == 1337 and sc["runAsGroup"] == 1337
    assert sc["readOnlyRootFilesystem"] is True
    assert "add" not in sc.get("capabilities", {})
    probe = sidecar["readinessProbe"]["httpGet"]
    assert probe["port"] == 15021 and probe["path"] == "/healthz/ready"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15020"
    assert annotations["prometheus.io/path"] == "/stats/prometheus"

    role, *args = sidecar["args"]
    assert role == "sidecar"
    options = proxy_parser().parse_args(args)
    config = Path(options.config)
    mounts = {Path(m["mountPath"]): m["name"] for m in sidecar["volumeMounts"]}
    volume = mounts[config.parent]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    configmap = documents["ConfigMap"]
    assert volumes[volume]["configMap"]["name"] == configmap["metadata"]["name"]
    parse_mesh(configmap["data"][config.name], f"ConfigMap {config.name}")


def test_app_container_is_not_the_proxy_uid(documents) -> None:
    app = _containers(documents)["app"]
    assert app["securityContext"]["runAsUser"] not in (0, 1337)
