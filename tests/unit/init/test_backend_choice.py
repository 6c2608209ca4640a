"""backend.choose (which iptables backend to use) and the failure messages of a real backend."""

from __future__ import annotations

import pytest

from init.backend import (
    KINDS,
    BackendConflict,
    BackendReport,
    RecordingBackend,
    _explain_failure,
    choose,
)


def reports(
    legacy: tuple[bool, int, bool] = (True, 0, False),
    nft: tuple[bool, int, bool] = (True, 0, False),
) -> dict[str, BackendReport]:
    """(available, rule_count, has_detour) for each backend."""
    return {
        "legacy": BackendReport("legacy", *legacy),
        "nft": BackendReport("nft", *nft),
    }


EMPTY = (True, 0, False)
HOST = (True, 12, False)
DETOUR = (True, 20, True)
MISSING = (False, 0, False)

# requested, legacy, nft, default kind -> chosen kind
DECISIONS = [
    # Detour's own rules decide first, whatever else holds rules and whatever the default.
    ("auto", DETOUR, EMPTY, "nft", "legacy"),
    ("auto", DETOUR, (True, 500, False), "nft", "legacy"),
    ("auto", EMPTY, DETOUR, "legacy", "nft"),
    ("auto", (True, 500, False), DETOUR, "legacy", "nft"),
    ("auto", MISSING, DETOUR, None, "nft"),
    # Then the host's rules.
    ("auto", HOST, EMPTY, "nft", "legacy"),
    ("auto", EMPTY, HOST, "legacy", "nft"),
    ("auto", (True, 3, False), (True, 40, False), "legacy", "nft"),
    ("auto", (True, 40, False), (True, 3, False), "nft", "legacy"),
    # A backend that is not installed and holds nothing in the kernel is no obstacle.
    ("auto", MISSING, EMPTY, "legacy", "nft"),
    # Then the default iptables binary.
    ("auto", EMPTY, EMPTY, "nft", "nft"),
    ("auto", EMPTY, EMPTY, "legacy", "legacy"),
    # Default unknown or not installed: the only installed backend.
    ("auto", EMPTY, MISSING, None, "legacy"),
    ("auto", MISSING, EMPTY, None, "nft"),
    ("auto", MISSING, EMPTY, "legacy", "nft"),
    # Forced backends, when nothing contradicts them.
    ("legacy", EMPTY, HOST, "nft", "legacy"),
    ("nft", HOST, EMPTY, "legacy", "nft"),
    ("legacy", DETOUR, EMPTY, "nft", "legacy"),
    ("nft", EMPTY, DETOUR, "legacy", "nft"),
    ("nft", MISSING, EMPTY, None, "nft"),
    # The operator's choice stands beside another's rules the tools cannot read.
    ("nft", (False, 7, False), EMPTY, None, "nft"),
]


@pytest.mark.parametrize(("requested", "legacy", "nft", "default", "chosen"), DECISIONS)
def test_decision_table(requested, legacy, nft, default, chosen) -> None:
    choice = choose(requested, reports(legacy, nft), default)
    assert choice.kind == chosen
    assert choice.kind in KINDS
    assert choice.reason


def test_reasons_say_why() -> None:
    assert "already installed" in choose("auto", reports(DETOUR, EMPTY), "nft").reason
    assert "nft" in choose("auto", reports(EMPTY, HOST), "legacy").reason
    assert "more" in choose("auto", reports((True, 1, False), (True, 2, False)), None).reason
    assert "--backend" in choose("legacy", reports(), "nft").reason


def test_detour_rules_in_both_backends_is_a_conflict() -> None:
    with pytest.raises(BackendConflict) as caught:
        choose("auto", reports(DETOUR, DETOUR), "nft")
    message = str(caught.value)
    assert "both" in message
    assert "detour-init cleanup --backend legacy" in message
    assert "--backend nft" in message


@pytest.mark.parametrize(("requested", "other"), [("legacy", "nft"), ("nft", "legacy")])
def test_forcing_a_backend_while_the_other_holds_detour_rules(requested: str, other: str) -> None:
    holding = {requested: EMPTY, other: DETOUR}
    with pytest.raises(BackendConflict) as caught:
        choose(requested, reports(holding["legacy"], holding["nft"]), requested)
    message = str(caught.value)
    assert f"--backend={requested}" in message
    assert f"the {other} backend" in message
    assert f"detour-init cleanup --backend {other}" in message


@pytest.mark.parametrize("requested", ["legacy", "nft"])
def test_forcing_an_unavailable_backend_is_a_conflict(requested: str) -> None:
    state = {"legacy": EMPTY, "nft": EMPTY, requested: MISSING}
    with pytest.raises(BackendConflict) as caught:
        choose(requested, reports(state["legacy"], state["nft"]), None)
    assert f"--backend={requested}" in str(caught.value)
    assert "not installed" in str(caught.value)


def test_forcing_a_backend_missing_from_the_reports_is_a_conflict() -> None:
    with pytest.raises(BackendConflict):
        choose("nft", {"legacy": BackendReport("legacy", True)}, "legacy")


@pytest.mark.parametrize(("hidden", "seen"), [("legacy", "nft"), ("nft", "legacy")])
def test_rules_in_the_kernel_of_a_backend_without_tools_stop_the_automatic_choice(
    hidden: str, seen: str
) -> None:
    """Its tools missing, the backend's rules were read from the kernel: the other backend
    would run beside rules nothing here can read, so auto refuses, naming where they are."""
    state = {
        hidden: BackendReport(hidden, False, 5, False, ("nat (IPv4)", "filter (IPv6)")),
        seen: BackendReport(seen, True),
    }
    with pytest.raises(BackendConflict) as caught:
        choose("auto", state, seen)
    message = str(caught.value)
    assert f"the {hidden} backend holds 5 rules in the kernel" in message
    assert "nat (IPv4), filter (IPv6)" in message
    assert f"iptables-{hidden} is not installed" in message and "--backend" in message


def test_detours_rules_in_a_backend_without_tools_cannot_be_changed_and_say_so() -> None:
    state = {
        "legacy": BackendReport("legacy", False, 9, True, ("nat (IPv4)",)),
        "nft": BackendReport("nft", True),
    }
    with pytest.raises(BackendConflict) as caught:
        choose("auto", state, "nft")
    assert "Detour's rules are in the kernel's legacy tables (nat (IPv4))" in str(caught.value)
    with pytest.raises(BackendConflict) as caught:
        choose("nft", state, "nft")
    assert "iptables-legacy is not installed here: install it, then run" in str(caught.value)


def test_no_backend_installed_is_a_conflict() -> None:
    with pytest.raises(BackendConflict) as caught:
        choose("auto", reports(MISSING, MISSING), None)
    assert "no iptables backend" in str(caught.value)


# --- failure messages ---------------------------------------------------------------------------

RESTORE_INPUT = (
    "*nat\n"
    ":DETOUR_OUTPUT - [0:0]\n"
    "-A OUTPUT -p tcp -j DETOUR_OUTPUT\n"
    "-A DETOUR_OUTPUT -p tcp -j TPROXY --on-port 15006\n"
    "COMMIT\n"
)


@pytest.mark.parametrize(
    "stderr",
    [
        "iptables-restore: line 4 failed\n",
        "iptables-restore v1.8.9 (legacy): Couldn't load target `TPROXY':No such file or "
        "directory\n\nError occurred at line: 4\nTry `iptables-restore -h' for more information.\n",
    ],
)
def test_explain_failure_quotes_the_failing_line(stderr: str) -> None:
    message = _explain_failure("iptables-legacy-restore", stderr, RESTORE_INPUT)
    assert message.startswith("iptables-legacy-restore: ")
    assert "[line 4: -A DETOUR_OUTPUT -p tcp -j TPROXY --on-port 15006]" in message


def test_explain_failure_hints_at_a_missing_module() -> None:
    stderr = "iptables-restore: Couldn't load target `TPROXY'\nError occurred at line: 4\n"
    message = _explain_failure("iptables-nft-restore", stderr, RESTORE_INPUT)
    assert "kernel module or iptables extension" in message
    assert "-j TPROXY" in message


def test_explain_failure_hints_at_missing_privilege() -> None:
    message = _explain_failure(
        "iptables-nft-save", "iptables-save: Permission denied (you must be root)\n", None
    )
    assert "Permission denied" in message
    assert "CAP_NET_ADMIN" in message


def test_explain_failure_out_of_range_line_is_not_quoted() -> None:
    message = _explain_failure("iptables-restore", "line 40 failed\n", RESTORE_INPUT)
    assert "[line" not in message
    assert "line 40 failed" in message


def test_explain_failure_without_stderr() -> None:
    assert _explain_failure("iptables-restore", "  \n", None) == (
        "iptables-restore: failed with no message"
    )


def test_explain_failure_skips_numbers_that_are_not_the_line_number() -> None:
    stderr = (
        "Warning: Extension TPROXY revision 0 not supported, missing kernel module?\n"
        "iptables-restore: line 4 failed\n"
    )
    message = _explain_failure("iptables-restore", stderr, RESTORE_INPUT)
    assert "[line 4: -A DETOUR_OUTPUT -p tcp -j TPROXY --on-port 15006]" in message


# --- the recording fake ---------------------------------------------------------------------------


def test_recording_backend_replays_and_records() -> None:
    fake = RecordingBackend(saved={4: "*nat\nCOMMIT\n"}, fail_on_restore=2)
    assert fake.save(4) == "*nat\nCOMMIT\n"
    assert fake.save(6) == ""
    fake.restore(4, "first")
    with pytest.raises(RuntimeError, match="injected failure"):
        fake.restore(6, "second", noflush=False)
    assert fake.restores == [(4, "first", True), (6, "second", False)]
