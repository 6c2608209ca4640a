"""The image's two entrypoints under podman, each in a network namespace the test made.

- init: ``--cap-add NET_ADMIN,NET_RAW`` as root installs the rules from DETOUR_* variables,
  validates them and exits 0; the rules are visible from the host side. Without capabilities
  it exits 2 naming CAP_NET_ADMIN and touches nothing.
- sidecar: uid 1337, no capabilities, read-only root filesystem (and no tmpfs either): becomes
  ready and relays an intercepted connection to a server in another namespace.

DETOUR_BACKEND is always given. Without it, detour-init in a fresh namespace takes the default
``iptables`` binary *of the container* (Debian's alternatives: nft), whatever the host's
default is; a host set to legacy would then not see the rules with its plain iptables-save.
Naming the backend makes the container and the host agree by construction (and the test
checks both backends work from inside the image).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.lab import Netns, fingerprint, veth, wait_until

from .conftest import Containers, podman

POD_V4, WORLD_V4 = "10.77.0.1", "10.77.0.2"
POD_V6, WORLD_V6 = "fd77::1", "fd77::2"
INIT_ENV = {"DETOUR_CAPTURE_DNS": "true", "DETOUR_EXCLUDE_OUTBOUND_PORTS": "22"}


def make_pod(lab) -> tuple[Netns, Netns]:
    """A pod namespace with a default route (validate dials a documentation address, which
    needs a route to be consulted at all) through a veth to a "world" namespace."""
    pod, world = lab("pod"), lab("world")
    veth(pod, [f"{POD_V4}/24", f"{POD_V6}/64"], world, [f"{WORLD_V4}/24", f"{WORLD_V6}/64"])
    pod.run("ip", "route", "add", "default", "via", WORLD_V4)
    pod.run("ip", "-6", "route", "add", "default", "via", WORLD_V6)
    return pod, world


def netfilter_state(pod: Netns) -> str:
    """lab.fingerprint (both backends' tables, ip rules, lo's addresses) minus the full route
    dump, in which the veth's link-local routes appear whenever IPv6 gets to them; policy
    routing table 133 (the only one init would use) is kept."""
    parts = []
    for kind in ("nft", "legacy"):
        whole = fingerprint(pod, kind)
        parts += [
            p
            for p in whole.split("## ")
            if not p.startswith("ip route show table all")
            and not p.startswith("ip -6 route show table all")
        ]
    for argv in (
        ["ip", "route", "show", "table", "133"],
        ["ip", "-6", "route", "show", "table", "133"],
    ):
        parts.append(" ".join(argv) + "\n" + pod.run(*argv, check=False).stdout)
    return "## ".join(parts)


def run_init(image: str, ns: Netns, *podman_args: str, env: dict[str, str]):
    argv = ["run", "--rm", "--user", "0", "--network", f"ns:/run/netns/{ns.name}", *podman_args]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    return podman(*argv, image, "init", timeout=60)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_init_container_installs_and_validates_from_env(image: str, lab, backend: str) -> None:
    pod, _ = make_pod(lab)
    env = {**INIT_ENV, "DETOUR_BACKEND": backend}
    done = run_init(image, pod, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN,NET_RAW", env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"interception installed (backend {backend}, IPv4/6)" in output
    assert "validat" in output.lower(), output

    # From the host side, with the host's own tools for the same backend.
    other = "legacy" if backend == "nft" else "nft"
    for family in ("iptables", "ip6tables"):
        rules = pod.run(f"{family}-{backend}-save").stdout
        assert ":DETOUR_OUTPUT " in rules and "-A OUTPUT -j DETOUR_OUTPUT" in rules, rules
        assert ":DETOUR_OUTPUT_DNS " in rules, rules  # DETOUR_CAPTURE_DNS=true
        assert "--dport 22 -j RETURN" in rules or "--dports 22 -j RETURN" in rules, rules
        assert "DETOUR_" not in pod.run(f"{family}-{other}-save").stdout
    shown = pod.detour_init("show", "--backend", backend)
    assert shown.returncode == 0, shown.stderr

    # The same container again: apply is idempotent and validate still passes.
    again = run_init(image, pod, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN,NET_RAW", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to change" in again.stdout + again.stderr


def test_init_container_without_capabilities_fails_and_touches_nothing(image: str, lab) -> None:
    pod, _ = make_pod(lab)
    before = netfilter_state(pod)
    env = {**INIT_ENV, "DETOUR_BACKEND": "nft"}
    done = run_init(image, pod, "--cap-drop", "ALL", env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "CAP_NET_ADMIN" in output, output
    assert netfilter_state(pod) == before


def _ready(pod: Netns) -> bool:
    done = pod.run(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "1",
        "http://127.0.0.1:15021/healthz/ready",
        check=False,
    )
    return done.stdout == "200"


def test_sidecar_container_read_only_uid_1337_relays_intercepted_traffic(
    image: str, lab, containers: Containers
) -> None:
    pod, world = make_pod(lab)
    world.peer("http", "8080", "server")
    done = run_init(
        image,
        pod,
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN,NET_RAW",
        env={"DETOUR_BACKEND": "nft"},
    )
    assert done.returncode == 0, done.stdout + done.stderr

    name = containers.name("sidecar")
    # No --user: the image's own USER (1337:1337). --read-only-tmpfs=false: not even /tmp,
    # /var/tmp or /run are writable, as with Kubernetes' readOnlyRootFilesystem.
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        f"ns:/run/netns/{pod.name}",
        "--cap-drop",
        "ALL",
        "--read-only",
        "--read-only-tmpfs=false",
        "--security-opt",
        "no-new-privileges",
        image,
        check=True,
    )

    def logs() -> str:
        out = podman("logs", name)
        return out.stdout + out.stderr

    try:
        wait_until(lambda: _ready(pod), timeout=20, what="the sidecar's /healthz/ready")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{logs()}") from None

    pid = podman("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout.strip()
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    assert status["Uid"].split() == ["1337"] * 4, status["Uid"]
    assert status["Gid"].split() == ["1337"] * 4, status["Gid"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert "detour-proxy" in (proc / "cmdline").read_text()
    readonly = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name, check=True)
    assert readonly.stdout.strip() == "true"

    # An app (root here: any uid but 1337 is captured) calls the world through the sidecar.
    body = pod.run("curl", "-sS", "--max-time", "5", f"http://{WORLD_V4}:8080/").stdout
    assert body.strip() == "server original=none", logs()
    stats = pod.run(
        "curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/stats?filter=downstream_cx_total"
    ).stdout
    assert "downstream_cx_total.listener=virtualOutbound: 1" in stats, stats + logs()

    # SIGTERM (podman stop): readiness fails, the proxy drains and exits 0.
    podman("stop", "--time", "20", name, check=True, timeout=60)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=True).stdout
    assert code.strip() == "0", logs()
