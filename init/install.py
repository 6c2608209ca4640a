"""Apply and cleanup: move the namespace from what is installed to what is wanted, or back.

One mechanism serves ``apply`` (wanted = the rendered rule sets), ``cleanup`` (wanted =
nothing) and idempotency (installed == wanted means no restore at all). Every family's tables
are snapshotted first; any failure, including a read-back that does not match what was
rendered, restores the touched tables and routes from the snapshot and says what failed.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from detour_common.conventions import TPROXY_MARK, TPROXY_ROUTE_TABLE
from init.backend import Backend, BackendError
from init.config import INBOUND_PASSTHROUGH_V6
from init.interrupts import Interrupted
from init.render import transition
from init.routing import PolicyRouting, RoutingError
from init.rules import BUILTIN_CHAINS, RuleSet
from init.state import DetourView, detour_view, fingerprint, parse_save, view_of_ruleset

log = logging.getLogger("detour.init")

# The only lo address Detour ever adds (and so the only one cleanup may remove).
OWNED_LO = (f"{INBOUND_PASSTHROUGH_V6}/128",)

# Reads the targets of Detour's rules through an independent path (python-iptables for the
# legacy backend); None where no such reader exists (nft).
CrossCheck = Callable[[int, RuleSet | None, tuple[str, ...]], list[str]]


def _never_interrupted() -> str | None:
    return None


class ApplyError(RuntimeError):
    """Apply or cleanup failed; the namespace was rolled back (the message says if not)."""


class VerifyError(RuntimeError):
    """What the kernel reports differs from what was rendered."""


@dataclass
class Installer:
    backend: Backend
    routing: PolicyRouting | None
    families: tuple[int, ...]  # families whose tables exist in this namespace
    cross_check: CrossCheck | None = None
    # Asked between steps: the name of a termination signal that arrived (see
    # init.interrupts), which rolls the change back; None to go on.
    interrupted: Callable[[], str | None] = _never_interrupted
    _touched: dict[int, set[str]] = field(default_factory=dict)

    def installed(self, family: int) -> DetourView:
        return detour_view(parse_save(self.backend.save(family)))

    def converge(self, wanted: dict[int, RuleSet | None]) -> bool:
        """Make each family's Detour rules (and routes) equal ``wanted``; True if anything changed.

        Families missing from ``wanted`` are cleaned up, so switching a config from dual
        stack to IPv4 only removes the IPv6 rules too.
        """
        plan = {family: wanted.get(family) for family in self.families}
        snapshots = {family: self.backend.save(family, counters=True) for family in plan}
        routes_before = self._routes_installed()
        addresses_before = self._lo_addresses_installed()
        self._touched = {family: set() for family in plan}
        changed = False
        step = "reading the installed rules"
        try:
            for family, ruleset in plan.items():
                step = self._next_step(f"installing the IPv{family} rules")
                text = transition(self.installed(family), ruleset)
                if text:
                    self._touched[family] |= {
                        line[1:] for line in text.splitlines() if line.startswith("*")
                    }
                    self.backend.restore(family, text)
                    changed = True
                step = self._next_step(f"verifying the IPv{family} rules")
                self._verify(family, ruleset)
            step = self._next_step("installing the policy routes")
            wanted_routes = {r for rs in plan.values() if rs for r in rs.routes}
            if self.routing is not None:
                changed |= self.routing.reconcile(
                    wanted_routes, self.families, TPROXY_MARK, TPROXY_ROUTE_TABLE
                )
                if 6 in self.families:
                    step = self._next_step("setting the inbound passthrough address on lo")
                    wanted_lo = {a for rs in plan.values() if rs for a in rs.lo_addresses}
                    changed |= self.routing.reconcile_lo_addresses(wanted_lo, OWNED_LO)
        except Interrupted as err:
            outcome = self._rollback(snapshots, routes_before, addresses_before)
            raise ApplyError(f"{err}; {outcome}") from None
        except (BackendError, RoutingError, VerifyError) as err:
            outcome = self._rollback(snapshots, routes_before, addresses_before)
            raise ApplyError(f"{step} failed: {err}; {outcome}") from None
        return changed

    def _next_step(self, step: str) -> str:
        """Start ``step`` unless a termination signal arrived since the last one."""
        signal_name = self.interrupted()
        if signal_name is not None:
            raise Interrupted(signal_name, before=step)
        return step

    def _lo_addresses_installed(self) -> set[str]:
        if self.routing is None or 6 not in self.families:
            return set()
        return self.routing.lo_addresses(OWNED_LO)

    def _routes_installed(self) -> set:
        if self.routing is None:
            return set()
        return self.routing.installed(self.families, TPROXY_MARK, TPROXY_ROUTE_TABLE)

    def _verify(self, family: int, ruleset: RuleSet | None) -> None:
        want = view_of_ruleset(ruleset) if ruleset else DetourView({})
        have = self.installed(family)
        if have != want:
            raise VerifyError(
                f"IPv{family} rules read back differ from the rendered ones:\n"
                + "\n".join(_diff(want, have))
            )
        if self.cross_check is not None:
            tables = tuple(sorted(set(want.tables) | set(have.tables)))
            problems = self.cross_check(family, ruleset, tables)
            if problems:
                raise VerifyError("python-iptables disagrees: " + "; ".join(problems))

    def _rollback(
        self,
        snapshots: dict[int, str],
        routes_before: set,
        addresses_before: set[str] = frozenset(),
    ) -> str:
        failures: list[str] = []
        for family, tables in self._touched.items():
            if not tables:
                continue
            try:
                text = snapshot_tables(snapshots[family], tables)
                self.backend.restore(family, text, noflush=False, counters=True)
                if fingerprint(self.backend.save(family)) != fingerprint(snapshots[family]):
                    failures.append(f"IPv{family} tables differ from the snapshot after rollback")
            except BackendError as err:
                failures.append(f"IPv{family}: {err}")
        if self.routing is not None:
            try:
                self.routing.reconcile(
                    routes_before, self.families, TPROXY_MARK, TPROXY_ROUTE_TABLE
                )
                if 6 in self.families:
                    self.routing.reconcile_lo_addresses(set(addresses_before), OWNED_LO)
            except RoutingError as err:
                failures.append(str(err))
        if failures:
            return "ROLLBACK INCOMPLETE: " + "; ".join(failures)
        return "rolled back to the state before"


def snapshot_tables(snapshot: str, tables: set[str]) -> str:
    """Restore text (full-table, with counters) that puts ``tables`` back as in ``snapshot``.

    A table absent from the snapshot had never been instantiated; it goes back to its
    built-in chains with ACCEPT policies and no rules, which is the same thing to a packet.
    """
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in snapshot.splitlines():
        if line.startswith("*"):
            current = blocks.setdefault(line[1:], [line])
        elif current is not None and not line.startswith("#"):
            current.append(line)
            if line == "COMMIT":
                current = None
    out: list[str] = []
    for name in sorted(tables):
        if name in blocks:
            out.extend(blocks[name])
        else:
            out.append(f"*{name}")
            out.extend(f":{chain} ACCEPT [0:0]" for chain in BUILTIN_CHAINS[name])
            out.append("COMMIT")
    return "\n".join(out) + "\n"


def _flatten(view: DetourView) -> list[str]:
    lines = []
    for table in sorted(view.tables):
        tv = view.tables[table]
        lines.extend(f"{table}: chain {c}" for c in sorted(tv.chains))
        for chain in sorted(tv.rules):
            lines.extend(f"{table}: -A {chain} {s}" for s in tv.rules[chain])
    return lines


def _diff(want: DetourView, have: DetourView) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(
            _flatten(want), _flatten(have), "rendered", "installed", lineterm="", n=0
        )
    ]
