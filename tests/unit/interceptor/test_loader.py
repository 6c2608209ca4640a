"""Pure parts of interceptor.loader and the CLI's error handling (no root, no BPF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interceptor import cli, loader

MOUNTS = """\
sysfs /sys sysfs rw 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw 0 0
"""
ROOT = Path("/sys/fs/cgroup/unified")


def test_cgroup_paths_resolve_absolute_or_relative_to_the_mount():
    assert loader.resolve_cgroup("pod/a", MOUNTS) == (ROOT, ROOT / "pod/a")
    assert loader.resolve_cgroup(f"{ROOT}/pod/a/", MOUNTS) == (ROOT, ROOT / "pod/a")


def test_cgroup_outside_the_mount_or_escaping_it_is_refused():
    with pytest.raises(loader.InterceptorError, match="not under a cgroup v2 mount"):
        loader.resolve_cgroup("/tmp/x", MOUNTS)
    with pytest.raises(loader.InterceptorError, match="not under a cgroup v2 mount"):
        loader.resolve_cgroup("../../x", MOUNTS)
    with pytest.raises(loader.InterceptorError, match="no cgroup v2 mount"):
        loader.resolve_cgroup("pod", "sysfs /sys sysfs rw 0 0\n")


@pytest.mark.parametrize("cgroup", [ROOT / "pod/a", ROOT / "with%percent", ROOT])
def test_pin_names_are_flat_and_reversible(cgroup):
    name = loader.pin_name(ROOT, cgroup)
    assert "/" not in name
    assert loader.cgroup_from_pin_name(ROOT, name) == cgroup


def test_preflight_names_what_is_missing(tmp_path):
    with pytest.raises(loader.InterceptorError, match="must run as root"):
        loader.preflight(1000, "6.1.0", True)
    with pytest.raises(loader.InterceptorError, match="python3-bpfcc"):
        loader.preflight(0, "6.1.0", False)
    with pytest.raises(loader.InterceptorError, match="kernel headers not found"):
        loader.preflight(0, "0.0.0-no-such-kernel", True)


def test_every_program_has_its_source_and_is_commented():
    for program in loader.PROGRAMS:
        text = (loader.BPF_DIR / f"{program.key}.c").read_text()
        assert f"int {program.function}(" in text
        assert "Reads:" in text and "Writes:" in text
    assert "PROXY_UID" in loader.source_text()


def test_cli_reports_refusals_on_stderr_with_exit_1(monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise loader.InterceptorError("cgroup not found: /x")

    monkeypatch.setattr(loader, "attach", refuse)
    assert cli.main(["attach", "--cgroup", "/x"]) == 1
    assert "detour-ebpf: cgroup not found: /x" in capsys.readouterr().err


def test_cli_status_is_nonzero_when_a_program_went_missing(monkeypatch, capsys):
    item = loader.Attachment(
        ROOT / "pod",
        Path("/sys/fs/bpf/detour/pod"),
        {"connect4": True, "sockops": False, "getsockopt": True},
    )
    monkeypatch.setattr(loader, "status", lambda: [item])
    assert cli.main(["status"]) == 1
    assert "degraded" in capsys.readouterr().out


def test_cli_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exited:
        cli.main(["attach"])
    assert exited.value.code == 2
