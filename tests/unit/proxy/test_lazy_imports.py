"""What a sidecar does not use is not loaded (idle memory): h2 comes with the first HTTP/2
connection, PyYAML with the first mesh file; starting without either loads neither."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

START = "import json, sys\nimport proxy.cli, proxy.sidecar, proxy.workers\n"
LOADED = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {MODULES})))\n"


def loaded_after(code: str, modules: set[str]) -> tuple[list[str], list[str]]:
    """Top-level ``modules`` loaded by a fresh interpreter after the sidecar's imports, then
    after ``code``."""
    probe = START + LOADED + code + "\n" + LOADED
    done = subprocess.run(
        [sys.executable, "-c", probe.replace("{MODULES}", repr(modules))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after = done.stdout.splitlines()
    return json.loads(before), json.loads(after)


@pytest.mark.parametrize(
    ("code", "modules"),
    [
        ("import proxy.filters.http2_downstream", {"h2", "hpack", "hyperframe"}),
        (
            "from proxy.config.loader import parse_mesh\n"
            "parse_mesh('workload: {name: a, namespace: b}', 'mesh.yaml')",
            {"yaml"},
        ),
        ("import proxy.xds.client", {"grpc", "envoy", "google"}),
    ],
    ids=["h2-with-http2", "yaml-with-a-mesh-file", "grpc-with-a-bootstrap"],
)
def test_starting_a_sidecar_does_not_load_it_and_using_it_does(code, modules):
    before, after = loaded_after(code, modules)
    assert before == []
    assert after == sorted(modules)
