"""Issue 19, case 13: interception faults. Init run several times at once, interrupted half-way,
run without its backend's tools, run in a namespace with IPv6 disabled: each ends with the
whole rule set or none of it, and says which; cleanup always converges.

"Whole" and "none" are byte for byte: every state is compared with the fingerprint (both
families' tables, policy routes, lo addresses) of a reference namespace that had the same
config applied alone, or nothing at all.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from support.lab import DETOUR_INIT, SYSTEM_PYTHON, Netns, fingerprint, wait_until

from .conftest import Figure

BACKEND = "nft"
# Four configs that differ in what they install (the inbound port shows in every family's
# TPROXY rule), in TPROXY mode so that policy routes and lo addresses are part of the change.
PORTS = (15006, 15016, 15026, 15036)
CONFIGS = {port: ("--mode", "TPROXY", "--inbound-port", str(port)) for port in PORTS}
FIRST, SECOND = 15006, 15016

Namespaces = Callable[[str], Netns]


def apply(ns: Netns, port: int, *extra: str) -> subprocess.CompletedProcess:
    return ns.detour_init("apply", "--backend", BACKEND, *CONFIGS[port], *extra)


@pytest.fixture
def reference(netns: Namespaces) -> dict[int | None, str]:
    """The fingerprint of each config applied alone, and (None) of a namespace without any."""
    ns = netns("ref")
    states: dict[int | None, str] = {None: fingerprint(ns, BACKEND)}
    for port in CONFIGS:
        assert apply(ns, port).returncode == 0
        states[port] = fingerprint(ns, BACKEND)
    assert len(set(states.values())) == len(states), "the configs must install different rules"
    return states


def start_apply(ns: Netns, port: int) -> subprocess.Popen:
    return ns.spawn(DETOUR_INIT, "apply", "--backend", BACKEND, *CONFIGS[port])


def stop_mid_apply(ns: Netns, proc: subprocess.Popen, port: int, sig: signal.Signals) -> str:
    """Send ``sig`` as soon as the IPv4 rules of ``port``'s config are visible (the change is
    under way: IPv6, the routes and lo are still ahead), unless the run ended first."""
    marker = f"--on-port {port}"
    wait_until(
        lambda: proc.poll() is not None or marker in ns.run(f"iptables-{BACKEND}-save").stdout,
        15,
        "the IPv4 rules to appear",
        interval=0.005,
    )
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.communicate(timeout=30)[1]


def test_13_concurrent_inits_take_turns_and_leave_one_whole_rule_set(
    netns: Namespaces, reference: dict[int | None, str], figure: Figure
) -> None:
    """Pass: five rounds of four applies started at once, each with a different config, in
    one namespace: every run exits 0 (the later ones wait for the earlier), and the namespace
    then holds exactly one config's rule set, as if it alone had been applied."""
    ns = netns("concurrent")
    waited = 0
    for _round in range(5):
        runs = [start_apply(ns, port) for port in CONFIGS]
        outcomes = [(run.wait(60), run.communicate()[1]) for run in runs]
        assert [code for code, _ in outcomes] == [0] * len(CONFIGS), outcomes
        waited += sum("waiting for the detour-init changing" in err for _, err in outcomes)
        assert fingerprint(ns, BACKEND) in {reference[port] for port in CONFIGS}
    assert waited > 0, "no run ever overlapped another: the case did not test concurrency"
    figure("concurrent applies", 5 * len(CONFIGS), "exit 0", "one whole rule set after each round")
    figure("runs that waited their turn", waited, f"of {5 * len(CONFIGS)}", "> 0")


def test_13_a_run_kept_waiting_past_its_wait_names_the_holder_and_changes_nothing(
    netns: Namespaces, reference: dict[int | None, str]
) -> None:
    """Pass: while something holds the namespace's lock, apply --wait 0.5 exits 1 within a
    few seconds, names the holder's pid, and the namespace is as it was."""
    ns = netns("held")
    holder = ns.spawn(
        SYSTEM_PYTHON, "-c",
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX)\ns.bind(b'\\0detour-init.lock')\ns.listen(1)\n"
        "print('ready', flush=True)\ntime.sleep(60)",
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "ready"
    started = time.monotonic()
    done = apply(ns, FIRST, "--wait", "0.5")
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 10
    assert f"another detour-init (pid {holder.pid})" in done.stderr, done.stderr
    assert "(nothing was changed)" in done.stderr
    assert fingerprint(ns, BACKEND) == reference[None]
    holder.kill()
    holder.wait()
    assert apply(ns, FIRST).returncode == 0  # the kernel freed the name with its holder
    assert fingerprint(ns, BACKEND) == reference[FIRST]


@pytest.mark.parametrize("before", [None, FIRST], ids=["from-nothing", "replacing"])
def test_13_sigterm_half_way_rolls_back_to_the_state_before(
    netns: Namespaces, reference: dict[int | None, str], figure: Figure, before: int | None
) -> None:
    """Pass: SIGTERM sent while apply is half-way (its IPv4 rules in, the rest not yet), six
    times: each run either finished (exit 0, the new rule set whole) or was rolled back
    (exit 1, 'interrupted by SIGTERM ... rolled back', the state before byte for byte);
    never anything between, and at least one was really interrupted."""
    ns = netns("sigterm")
    interrupted = 0
    for _trial in range(6):
        if before is not None:
            assert apply(ns, before).returncode == 0
        run = start_apply(ns, SECOND)
        stderr = stop_mid_apply(ns, run, SECOND, signal.SIGTERM)
        if run.returncode == 0:
            assert fingerprint(ns, BACKEND) == reference[SECOND], stderr
        else:
            assert run.returncode == 1, stderr
            assert "interrupted by SIGTERM before" in stderr and "rolled back" in stderr, stderr
            assert fingerprint(ns, BACKEND) == reference[before], stderr
            interrupted += 1
        assert ns.detour_init("cleanup").returncode == 0
    assert interrupted > 0, "every run finished before its signal: nothing was interrupted"
    start = "replacing" if before else "fresh"
    figure(f"SIGTERM half-way ({start})", interrupted, "of 6 rolled back", "the rest whole")


def test_13_what_sigkill_leaves_is_converged_by_the_next_apply_or_cleanup(
    netns: Namespaces, reference: dict[int | None, str], figure: Figure
) -> None:
    """Pass: after kill -9 half-way (which no process can defer), the next apply installs the
    whole rule set (exit 0), cleanup then removes all of it, and a second cleanup has
    nothing to change."""
    ns = netns("sigkill")
    partial = 0
    for _trial in range(4):
        run = start_apply(ns, SECOND)
        stop_mid_apply(ns, run, SECOND, signal.SIGKILL)
        partial += fingerprint(ns, BACKEND) not in (reference[None], reference[SECOND])
        assert apply(ns, SECOND).returncode == 0
        assert fingerprint(ns, BACKEND) == reference[SECOND]
        assert ns.detour_init("cleanup").returncode == 0
        assert fingerprint(ns, BACKEND) == reference[None]
        again = ns.detour_init("cleanup")
        assert again.returncode == 0 and "nothing to change" in again.stderr, again.stderr
    figure("SIGKILL half-way, then apply/cleanup", 4, "converged", f"{partial} left partial")


def test_13_a_missing_backend_is_named_and_nothing_changes(
    netns: Namespaces, reference: dict[int | None, str], tmp_path
) -> None:
    """Pass: without any iptables tools, or asked for a backend whose tools are absent, apply
    exits 2 naming what is missing, and the namespace is unchanged."""
    ns = netns("nobackend")
    legacy_only = only_tools(tmp_path / "bin", "legacy")
    cases = [
        ("/nonexistent", ["apply"], "no iptables backend is installed"),
        (legacy_only, ["apply", "--backend", "nft"], "--backend=nft: iptables-nft is not"),
    ]
    for path, args, message in cases:
        done = ns.run("env", f"PATH={path}", DETOUR_INIT, *args, check=False)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "(nothing was changed)" in done.stderr, done.stderr
        assert fingerprint(ns, BACKEND) == reference[None]


def only_tools(directory, kind: str):
    """A PATH directory holding only ``kind``'s iptables-save/-restore tools."""
    directory.mkdir()
    for family in ("iptables", "ip6tables"):
        for verb in ("save", "restore"):
            tool = f"{family}-{kind}-{verb}"
            (directory / tool).symlink_to(shutil.which(tool))
    return directory


@pytest.mark.parametrize(("hidden", "seen"), [("nft", "legacy"), ("legacy", "nft")])
def test_13_rules_of_a_backend_whose_tools_are_missing_are_seen_in_the_kernel(
    netns: Namespaces, tmp_path, hidden: str, seen: str
) -> None:
    """Pass: where only one backend's tools are installed but the other backend holds rules
    in the namespace (another container's, or Detour's own from an image that had them), an
    automatic apply exits 2 naming the other backend and its tables, and changes nothing; the
    kernel was read without those tools (libiptc for legacy, netlink for nft)."""
    ns = netns("hidden")
    path = only_tools(tmp_path / "bin", seen)
    foreign = ("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
    ns.run(f"iptables-{hidden}", *foreign)
    before = {kind: fingerprint(ns, kind) for kind in ("legacy", "nft")}
    done = ns.run("env", f"PATH={path}", DETOUR_INIT, "apply", check=False)
    assert done.returncode == 2, done.stderr
    assert f"the {hidden} backend holds 1 rule in the kernel (nat (IPv4))" in done.stderr
    assert "(nothing was changed)" in done.stderr, done.stderr
    assert {kind: fingerprint(ns, kind) for kind in ("legacy", "nft")} == before
    # Detour's own rules there: named as such, with what to do.
    ns.run(f"iptables-{hidden}", "-t", "nat", "-F", "OUTPUT")
    assert ns.detour_init("apply", "--backend", hidden).returncode == 0
    done = ns.run("env", f"PATH={path}", DETOUR_INIT, "apply", check=False)
    assert done.returncode == 2, done.stderr
    assert f"Detour's rules are in the kernel's {hidden} tables" in done.stderr
    # The operator's explicit choice of the other backend is still refused while Detour's
    # rules are in this one: two interception layers.
    done = ns.run("env", f"PATH={path}", DETOUR_INIT, "apply", "--backend", seen, check=False)
    assert done.returncode == 2 and f"iptables-{hidden} is not installed here" in done.stderr


def test_13_a_namespace_with_ipv6_disabled_gets_ipv4_and_cleanup_still_finds_ipv6(
    netns: Namespaces, reference: dict[int | None, str]
) -> None:
    """Pass: with net.ipv6.conf.*.disable_ipv6=1 (a container runtime's network without
    IPv6), apply captures IPv4 only and says why; --ipv6 on is refused naming the flag; rules
    installed before IPv6 was disabled are all removed by cleanup."""
    ns = netns("noipv6")
    assert apply(ns, FIRST).returncode == 0  # both families, while IPv6 is on
    disable = [f"net.ipv6.conf.{i}.disable_ipv6=1" for i in ("all", "default", "lo")]
    ns.run("sysctl", "-qw", *disable)
    assert ns.detour_init("cleanup").returncode == 0
    for family in ("iptables", "ip6tables"):
        assert "DETOUR" not in ns.run(f"{family}-{BACKEND}-save").stdout, family
    done = apply(ns, FIRST)
    assert done.returncode == 0, done.stderr
    assert "IPv6 disabled (net.ipv6.conf.lo.disable_ipv6=1): capturing IPv4 only" in done.stderr
    assert "--on-port" in ns.run(f"iptables-{BACKEND}-save").stdout
    assert "DETOUR" not in ns.run(f"ip6tables-{BACKEND}-save").stdout
    refused = apply(ns, FIRST, "--ipv6", "on")
    assert refused.returncode == 2 and "--ipv6='on'" in refused.stderr, refused.stderr
    assert ns.detour_init("cleanup").returncode == 0
    for family in ("iptables", "ip6tables"):
        assert "DETOUR" not in ns.run(f"{family}-{BACKEND}-save").stdout, family
