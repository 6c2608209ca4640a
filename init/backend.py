"""The iptables backends (legacy and nft): saving, restoring, and choosing one.

The two backends keep separate rule sets in the kernel. A host uses one of them; installing
Detour's rules in the other would leave two interception layers fighting, so the choice is made
once, explicitly, and a conflicting installation is refused rather than mixed silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from init.kernel_tables import kernel_rules
from init.state import detour_view, parse_save

KINDS = ("legacy", "nft")


class BackendError(RuntimeError):
    """An iptables binary failed or is missing; the message says which and why."""


class Backend(Protocol):
    """What ``apply``/``cleanup`` need from an iptables backend, for one address family."""

    kind: str

    def save(self, family: int, counters: bool = False) -> str: ...

    def restore(
        self, family: int, text: str, noflush: bool = True, counters: bool = False
    ) -> None: ...


def _tool(kind: str, family: int, verb: str) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{kind}-{verb}"


@dataclass
class IptablesBackend:
    """A real backend: runs ``ip[6]tables-{legacy,nft}-{save,restore}``."""

    kind: str
    timeout: float = 30.0

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        binary = shutil.which(args[0])
        if binary is None:
            raise BackendError(
                f"{args[0]} not found: install Debian's iptables package (make setup)"
            )
        try:
            done = subprocess.run(
                [binary, *args[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"{args[0]} did not finish within {self.timeout}s") from None
        if done.returncode != 0:
            raise BackendError(_explain_failure(args[0], done.stderr, stdin))
        return done.stdout

    def save(self, family: int, counters: bool = False) -> str:
        return self._run([_tool(self.kind, family, "save"), *(["-c"] if counters else [])])

    def restore(self, family: int, text: str, noflush: bool = True, counters: bool = False) -> None:
        args = [_tool(self.kind, family, "restore"), "-w", "5"]
        if noflush:
            args.append("--noflush")
        if counters:
            args.append("--counters")
        self._run(args, stdin=text)


def _explain_failure(tool: str, stderr: str, stdin: str | None) -> str:
    """iptables-restore names the failing line by number; quote that line back."""
    message = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
    message = message or "failed with no message"
    line_number = re.search(r"line:? (\d+)", message)
    if stdin and line_number:
        lines = stdin.splitlines()
        number = int(line_number.group(1))
        if 1 <= number <= len(lines):
            message += f" [line {number}: {lines[number - 1]}]"
    hint = ""
    lowered = message.lower()
    if "permission denied" in lowered or "not permitted" in lowered:
        hint = " (needs root or CAP_NET_ADMIN)"
    elif "couldn't load" in lowered or "no chain/target/match" in lowered:
        hint = " (a kernel module or iptables extension is missing)"
    return f"{tool}: {message}{hint}"


@dataclass
class RecordingBackend:
    """A fake backend for unit tests: replays canned ``save`` text and records ``restore``.

    Named a fake on purpose: it interprets nothing. Tests that need real semantics run the
    real backend in a network namespace.
    """

    kind: str = "fake"
    saved: dict[int, str] = field(default_factory=dict)
    restores: list[tuple[int, str, bool]] = field(default_factory=list)
    fail_on_restore: int | None = None  # 1-based index of the restore call that fails

    def save(self, family: int, counters: bool = False) -> str:
        return self.saved.get(family, "")

    def restore(self, family: int, text: str, noflush: bool = True, counters: bool = False) -> None:
        self.restores.append((family, text, noflush))
        if self.fail_on_restore == len(self.restores):
            raise BackendError("injected failure")


# --- choosing a backend -------------------------------------------------------------------


@dataclass(frozen=True)
class BackendReport:
    """What one backend holds right now, for the families that exist here. For a backend
    whose tools are missing (``available`` False) the counts are read from the kernel
    (init/kernel_tables.py), and ``tables`` names where its rules are."""

    kind: str
    available: bool
    rule_count: int = 0
    has_detour: bool = False
    tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choice:
    kind: str
    reason: str


class BackendConflict(RuntimeError):
    """Rules in both backends, or Detour's rules in the backend the operator did not choose."""


def inspect(kind: str, families: tuple[int, ...]) -> BackendReport:
    backend = IptablesBackend(kind)
    if shutil.which(_tool(kind, 4, "save")) is None:
        try:
            found = kernel_rules(kind, families)
        except Exception as err:  # libiptc's or netlink's own errors, whatever their class
            raise BackendError(
                f"{_tool(kind, 4, 'save')} is not installed, and reading the {kind} backend's "
                f"tables from the kernel instead failed: {err}"
            ) from err
        return BackendReport(kind, False, found.rules, found.has_detour, found.tables)
    rules, detour = 0, False
    for family in families:
        tables = parse_save(backend.save(family))
        rules += sum(len(t.rules) for t in tables.values())
        detour = detour or not detour_view(tables).is_empty
    return BackendReport(kind, True, rules, detour)


def choose(requested: str, reports: dict[str, BackendReport], default_kind: str | None) -> Choice:
    """Pure decision: which backend to use, given what each one holds.

    Detour's own rules decide first (so apply, show and cleanup find them again), then rules of
    anyone else (the host's existing choice), then the default ``iptables`` binary.
    """
    with_detour = [k for k, r in reports.items() if r.has_detour]
    if requested != "auto":
        if not reports.get(requested, BackendReport(requested, False)).available:
            raise BackendConflict(f"--backend={requested}: iptables-{requested} is not installed")
        others = [k for k in with_detour if k != requested]
        if others:
            raise BackendConflict(
                f"--backend={requested}: Detour's rules are installed with the {others[0]} "
                f"backend; mixing backends would leave two interception layers. "
                f"{_cleanup_hint(reports[others[0]])}"
            )
        return Choice(requested, "requested with --backend")
    if len(with_detour) > 1:
        raise BackendConflict(
            "Detour's rules are installed in both the legacy and the nft backend; run "
            "'detour-init cleanup --backend legacy' and '... --backend nft', then apply again"
        )
    if with_detour:
        found = reports[with_detour[0]]
        if not found.available:
            raise BackendConflict(
                f"Detour's rules are in the kernel's {found.kind} tables "
                f"({', '.join(found.tables)}), but iptables-{found.kind} is not installed "
                f"here to change or remove them: install it (Debian's iptables package)"
            )
        return Choice(with_detour[0], "Detour's rules are already installed there")
    unseen = [r for r in reports.values() if not r.available and r.rule_count]
    if unseen:
        hidden = unseen[0]
        raise BackendConflict(
            f"the {hidden.kind} backend holds {hidden.rule_count} "
            f"rule{'s' if hidden.rule_count != 1 else ''} in the kernel "
            f"({', '.join(hidden.tables)}), but iptables-{hidden.kind} is not installed, so "
            f"rules installed with the other backend would run beside rules Detour cannot "
            f"read: install iptables-{hidden.kind}, or choose a backend with --backend"
        )
    busy = sorted((r.rule_count, k) for k, r in reports.items() if r.available and r.rule_count)
    if len(busy) == 1:
        return Choice(busy[0][1], f"the host's rules are in the {busy[0][1]} backend")
    if len(busy) > 1:
        return Choice(busy[-1][1], f"both backends hold rules; {busy[-1][1]} holds more")
    available = [k for k, r in reports.items() if r.available]
    if default_kind in available:
        return Choice(default_kind, "no rules anywhere; the default iptables binary uses it")
    if available:
        return Choice(available[0], "no rules anywhere; the only backend installed")
    raise BackendConflict(
        "no iptables backend is installed: install Debian's iptables (make setup)"
    )


def _cleanup_hint(other: BackendReport) -> str:
    if other.available:
        return f"Run 'detour-init cleanup --backend {other.kind}' first."
    return (
        f"iptables-{other.kind} is not installed here: install it, then run "
        f"'detour-init cleanup --backend {other.kind}'."
    )


def default_kind() -> str | None:
    """The backend the plain ``iptables`` command uses on this host."""
    binary = shutil.which("iptables")
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    if "nf_tables" in done.stdout:
        return "nft"
    if "legacy" in done.stdout:
        return "legacy"
    return None
