"""make demo: a small mesh of namespaced pods where an unmodified curl calls a service by name.

A client pod and three backend pods sit on a bridge; each gets Detour's interception
(detour-init) and a sidecar (detour-proxy, uid 1337). The client's plain curl dials the
``backend`` service's virtual IP; its sidecar balances the calls over the three backends, whose
sidecars take them in on the inbound port and hand them to the app (Python's http.server).
Every pod has a workload certificate from the lab's mesh CA (detour-ca), so the calls between
sidecars are mutual TLS; the backends' sidecars say who called them (the client's SPIFFE ID).
Then the HTTP router at work: a 90/10 traffic split by header, and retries hiding a backend
failure rate of 50%. Everything is torn down at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from support.mesh_lab import MeshLab  # noqa: E402

from proxy.config.loader import load_mesh  # noqa: E402

CALLS = 6


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


# Who may call the backends (Istio's AuthorizationPolicy): the client's service account only,
# and nobody /admin; paths are matched (and served) normalised, so /public/../admin is /admin.
BACKEND_POLICIES = [
    {
        "name": "deny-admin",
        "action": "DENY",
        "rules": [{"to": [{"operation": {"ports": ["8080"], "paths": ["/admin", "/admin/*"]}}]}],
    },
    {
        "name": "clients-only",
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}]}],
    },
]


def main() -> int:
    started = time.monotonic()
    example = REPO / "examples" / "mesh.yaml"
    mesh = load_mesh(example)
    backend = mesh.service("backend.default")
    vip = str(backend.vips[0])
    lab = MeshLab.create()
    try:
        step("pods on a bridge, each with detour-init (iptables) and detour-proxy (uid 1337)")
        lab.start_cluster_dns()  # the pods' resolv.conf nameserver; it knows nothing of the mesh
        client = lab.add_pod("client", 10)
        lab.intercept(client, "--capture-dns")
        config = yaml.safe_load(example.read_text())
        config["workload"]["tls"] = lab.issue_identity(client, "client")  # the lab's files
        lab.start_sidecar(client, lab.write_config("client.yaml", yaml.safe_dump(config)))
        print(f"client    {client.ip:<12} sidecar config: examples/mesh.yaml, as sa/client")
        for n, endpoint in enumerate(backend.endpoints, start=1):
            pod = lab.add_pod(f"backend{n}", int(str(endpoint.address).rsplit(".", 1)[1]))
            version = dict(endpoint.labels).get("version", "")
            pod.serve_http11(8080, f"backend{n} ({version})")
            workload = {
                "name": f"backend-{version}",
                "inbound_ports": [{"port": 8080, "protocol": "http"}],  # counted here too
                "service_account": "backend",
                "tls": lab.issue_identity(pod, "backend"),
                "peer_authentication": {"mode": "STRICT"},  # mesh mTLS only
                "authorization_policies": BACKEND_POLICIES,
            }
            lab.intercept(pod)
            config_file = lab.write_config(
                f"backend{n}.yaml", yaml.safe_dump({"workload": workload})
            )
            lab.start_sidecar(pod, config_file)
            print(f"backend{n}  {pod.ip:<12} app on :8080, inbound through its sidecar (STRICT)")

        step(
            f"service backend.default: VIP {vip}:8080 (auto-allocated, stable), "
            f"{len(backend.endpoints)} endpoints, {backend.policy.load_balancer.policy}"
        )
        resolved = client.run("getent", "hosts", "backend").stdout.split()
        print(
            f"getent hosts backend -> {resolved[0] if resolved else 'nothing'} "
            "(answered by the client's sidecar, DNS captured by init)"
        )
        for call in range(1, CALLS + 1):
            print(
                f"curl http://backend:8080/  #{call} -> {_label(client.curl('http://backend:8080/'))}"
            )

        step("traffic split: route 'canary' sends x-canary: yes 90% to subset v2, 10% to v1")
        replies = client.http_client("http://backend:8080/", 200, "--header", "x-canary:yes")
        shares = Counter(reply["label"] for reply in replies)
        for label, count in sorted(shares.items()):
            print(f"{count:4d} of 200 answered by {label}")

        step("retries: every backend fails half its requests with 503 (?fail=0.5)")
        replies = client.http_client("http://backend:8080/?fail=0.5", 100)
        ok = sum(reply["status"] == 200 for reply in replies)
        failed = sum(
            # asked inside each backend pod (a local call is not intercepted; from outside,
            # STRICT would refuse a plaintext caller)
            json.loads(pod.curl("http://127.0.0.1:8080/__counts"))["failures"]
            for pod in lab.pods[1:]
        )
        _, retried = client.admin("/stats?filter=^upstream_rq_retry")
        print(f"{ok} of 100 requests succeeded; the backends answered 503 {failed} times")
        print(retried.strip())

        step("mutual TLS between the sidecars: who called backend1, as its sidecar saw it")
        metrics = (
            lab.pods[1]
            .run("curl", "-s", "http://127.0.0.1:15020/stats/prometheus", uid=None)
            .stdout
        )
        for line in metrics.splitlines():
            if line.startswith("istio_requests_total{") and 'response_code="200"' in line:
                print(_short(line, ("source_principal", "connection_security_policy")))
        outsider = client.run("curl", "-sS", "--max-time", "3", f"http://{lab.pods[1].ip}:8080/")
        refused = outsider.stderr.strip() or outsider.stdout.strip() or "refused"
        print(
            f"curl http://{lab.pods[1].ip}:8080/ (a pod address, not a service: passed through "
            f"as plaintext, so STRICT refuses it): {refused}"
        )

        step("authorization on the backends: only sa/client may call them, never /admin")
        for path in ("/admin", "/public/../admin", "/public/%2e%2e/admin", "/public%2F..%2Fadmin"):
            reply = client.curl(
                f"http://backend:8080{path}", "--path-as-is", "-w", " [%{http_code}]"
            )
            print(f"curl --path-as-is http://backend:8080{path} -> {_short_body(reply)}")

        step("client sidecar, Istio metrics (curl 127.0.0.1:15020/stats/prometheus)")
        metrics = client.run(
            "curl", "-s", "http://127.0.0.1:15020/stats/prometheus", uid=None
        ).stdout
        for line in metrics.splitlines():
            if line.startswith(("istio_requests_total{", "dns_answers_total{")):
                print(_short(line))

        step("client sidecar endpoints (curl 127.0.0.1:15000/clusters)")
        _, clusters = client.admin("/clusters")
        for line in clusters.splitlines():
            if "::cx_total::" in line or "::health_flags::" in line:
                print(line)

        step("backend3 sidecar: the requests it handed to its app (reporter=destination)")
        metrics = (
            lab.pods[3]
            .run("curl", "-s", "http://127.0.0.1:15020/stats/prometheus", uid=None)
            .stdout
        )
        for line in metrics.splitlines():
            if line.startswith("istio_requests_total{"):
                print(_short(line))
    finally:
        step("tearing down")
        for pod in lab.pods:
            if pod.sidecar is not None and pod.sidecar.poll() is None:
                pod.sidecar.terminate()
        lab.destroy_quietly()
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


def _short_body(reply: str) -> str:
    return reply if len(reply) < 60 else reply[:57] + "..."


def _short(line: str, keep: tuple[str, ...] = ()) -> str:
    """Keep the labels a reader cares about."""
    keep = keep or (
        "reporter",
        "destination_workload=",
        "destination_service_name",
        "source_workload=",
        "response_code",
        "response_flags",
        "cluster=",
        "source=",
    )
    name, _, rest = line.partition("{")
    labels, _, value = rest.rpartition("}")
    shown = [part for part in labels.split(",") if part.startswith(keep)]
    return f"{name}{{{','.join(shown)}}}{value}"


def _label(reply: str) -> str:
    """Who answered, from the backend's JSON (or the error curl printed)."""
    try:
        return json.loads(reply)["label"]
    except ValueError:
        return reply


if __name__ == "__main__":
    sys.exit(main())
