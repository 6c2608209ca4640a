"""vagrant/Vagrantfile: `vagrant validate` under the variable combinations users are told
about (no box, no VM, no hypervisor needed: a second or two each).

The VM itself boots in `make test-vm` (vagrant/test-vm.sh), which CI runs after this suite:
it builds the offline box, runs `vagrant up` under libvirt with TCG, then `make demo` and the
end-to-end tests marked `vm` inside it, and cleans up every daemon, network and pool it made.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import run_vagrant, vagrant_env

COMBINATIONS = {
    "default": {},
    "libvirt-tcg-offline-box": {
        "DETOUR_VM_BOX": "local/bookworm",
        "DETOUR_VM_TCG": "1",
        "DETOUR_VM_ISOLATED": "1",
        "DETOUR_VM_POOL": "detour",
        "DETOUR_VM_MEMORY": "1024",
        "DETOUR_VM_CPUS": "1",
    },
    "sizes-only": {"DETOUR_VM_MEMORY": "4096", "DETOUR_VM_CPUS": "4"},
}


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_vagrantfile_validates(vagrant_cli: str, tmp_path: Path, name: str) -> None:
    env = vagrant_env(tmp_path, **COMBINATIONS[name])
    done = run_vagrant(vagrant_cli, env, "validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout


def test_vagrantfile_refuses_a_bad_number(vagrant_cli: str, tmp_path: Path) -> None:
    done = run_vagrant(vagrant_cli, vagrant_env(tmp_path, DETOUR_VM_MEMORY="lots"), "validate")
    assert done.returncode != 0
    assert "DETOUR_VM_MEMORY" in done.stdout + done.stderr


def test_libvirt_plugin_checks_provider_options(vagrant_cli: str, tmp_path: Path) -> None:
    """validate really checks the libvirt block (so the passes above mean something): a
    Vagrantfile with an option vagrant-libvirt does not know is refused."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |c|\n  c.vm.box = "x"\n'
        '  c.vm.provider :libvirt do |lv|\n    lv.cmdline = "x"\n  end\nend\n'
    )
    env = vagrant_env(tmp_path)
    env["VAGRANT_CWD"] = str(bad)
    done = subprocess.run(
        [vagrant_cli, "validate"], capture_output=True, text=True, env=env, cwd=bad, timeout=120
    )
    assert done.returncode != 0, done.stdout
    assert "cmdline" in done.stdout + done.stderr
