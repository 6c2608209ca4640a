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


ROOT_CAPS = (1 << 41) - 1
BPF_AND_NET_ADMIN = 1 << loader.CAP_BPF | 1 << loader.CAP_NET_ADMIN


def test_preflight_names_what_is_missing_and_the_fix(tmp_path):
    (tmp_path / "6.1.0" / "build" / "include").mkdir(parents=True)
    loader.preflight(ROOT_CAPS, "6.1.0", True, tmp_path)  # everything there: no complaint
    loader.preflight(BPF_AND_NET_ADMIN, "6.1.0", True, tmp_path)
    loader.preflight(1 << loader.CAP_SYS_ADMIN, "6.1.0", True, tmp_path)
    with pytest.raises(loader.InterceptorError, match=r"CAP_BPF and CAP_NET_ADMIN \(or CAP_SYS"):
        loader.preflight(0, "6.1.0", True, tmp_path)
    with pytest.raises(loader.InterceptorError, match=r"missing privilege: CAP_NET_ADMIN \("):
        loader.preflight(1 << loader.CAP_BPF, "6.1.0", True, tmp_path)
    with pytest.raises(loader.InterceptorError, match="install python3-bpfcc"):
        loader.preflight(ROOT_CAPS, "6.1.0", False, tmp_path)
    with pytest.raises(loader.InterceptorError, match=r"install linux-headers-6\.2\.0"):
        loader.preflight(ROOT_CAPS, "6.2.0", True, tmp_path)


def test_every_program_has_its_source_and_is_commented():
    for program in loader.PROGRAMS:
        text = (loader.BPF_DIR / f"{program.key}.c").read_text()
        assert f"int {program.function}(" in text
        assert "Reads:" in text and "Writes:" in text


def test_the_module_text_inlines_our_headers_once():
    text = loader.source_text()
    assert '#include "' not in text  # bcc rewrites map calls only outside included files
    assert text.count("#define DETOUR_MAPS_H") == 1
    for program in loader.PROGRAMS:
        assert f"int {program.function}(" in text


def test_cli_reports_refusals_on_stderr_with_exit_1(monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise loader.InterceptorError("cgroup not found: /x")

    monkeypatch.setattr(loader, "attach", refuse)
    assert cli.main(["attach", "--cgroup", "/x"]) == 1
    assert "detour-ebpf: cgroup not found: /x" in capsys.readouterr().err


def test_cli_refuses_bad_options_with_init_s_message_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(loader, "attach", lambda *_a, **_k: pytest.fail("must not attach"))
    assert cli.main(["attach", "--cgroup", "/x", "--exclude-ports", "80,http"]) == 2
    assert "--exclude-outbound-ports='80,http': 'http' is not a port number" in (
        capsys.readouterr().err
    )
    assert cli.main(["attach", "--cgroup", "/x", "--exclude-cidrs", "10.0.0.0/33"]) == 2
    assert "is not an IPv4 or IPv6 CIDR" in capsys.readouterr().err


def test_cli_status_is_nonzero_when_a_program_went_missing(monkeypatch, capsys):
    item = loader.Attachment(
        ROOT / "pod",
        Path("/sys/fs/bpf/detour/pod"),
        {"connect4": True, "sockops": False, "getsockopt": True},
        {"sockmap_redirected": 3},
        {"handoff_by_client": 0},
    )
    monkeypatch.setattr(loader, "status", lambda: [item])
    assert cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert "degraded" in out and "sockops=MISSING" in out
    assert "sockmap_redirected=3" in out and "handoff_by_client=0" in out


def test_cli_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exited:
        cli.main(["attach"])
    assert exited.value.code == 2
