"""TPROXY policy routing through pyroute2 (netlink), never by shelling out to ``ip``.

TPROXY marks diverted packets; these two entries per family deliver marked packets locally:
``ip rule add fwmark 1337 lookup 133`` and ``ip route add local default dev lo table 133``.
Detour owns exactly those entries and touches nothing else in the routing tables.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from init.rules import PolicyRoute

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTN_LOCAL = 2
_SCOPE_HOST = 254
# Below the main table's 32766 so marked packets meet table 133 before the default route,
# and well away from 0 (local) so the kernel's own lookups stay first.
RULE_PRIORITY = 32000


class RoutingError(RuntimeError):
    """A netlink request failed; the message says which entry and why."""


class PolicyRouting:
    """Reads and reconciles Detour's policy-routing entries in the current network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> PolicyRouting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lo(self) -> int:
        return self._ipr.link_lookup(ifname="lo")[0]

    def _has_rule(self, route: PolicyRoute) -> bool:
        for rule in self._ipr.get_rules(family=_AF[route.family]):
            table = rule.get_attr("FRA_TABLE") or rule["table"]
            if rule.get_attr("FRA_FWMARK") == route.mark and table == route.table:
                return True
        return False

    def _has_route(self, route: PolicyRoute) -> bool:
        try:
            found = self._ipr.get_routes(family=_AF[route.family], table=route.table)
        except NetlinkError:
            return False  # IPv6 answers "FIB table does not exist" for an unused table
        return any(
            r["type"] == _RTN_LOCAL and r["dst_len"] == 0 and r.get_attr("RTA_OIF") == self._lo()
            for r in found
        )

    def installed(self, families: Iterable[int], mark: int, table: int) -> set[PolicyRoute]:
        """The entries present now, as PolicyRoutes (a family counts if either entry exists)."""
        present = set()
        for family in families:
            candidate = PolicyRoute(family, mark, table)
            if self._has_rule(candidate) or self._has_route(candidate):
                present.add(candidate)
        return present

    def add(self, route: PolicyRoute) -> None:
        family = _AF[route.family]
        try:
            if not self._has_rule(route):
                self._ipr.rule(
                    "add",
                    family=family,
                    fwmark=route.mark,
                    table=route.table,
                    priority=RULE_PRIORITY,
                )
            if not self._has_route(route):
                self._local_default_route("add", route)
        except NetlinkError as err:
            raise RoutingError(f"adding {'; '.join(route.describe())}: {err}") from None

    def _local_default_route(self, action: str, route: PolicyRoute) -> None:
        """``ip route {add,del} local default dev lo table T`` (IPv4 needs scope host)."""
        self._ipr.route(
            action,
            family=_AF[route.family],
            type="local",
            table=route.table,
            oif=self._lo(),
            dst_len=0,
            scope=_SCOPE_HOST,
        )

    def remove(self, route: PolicyRoute) -> None:
        family = _AF[route.family]
        try:
            while self._has_rule(route):
                self._ipr.rule("del", family=family, fwmark=route.mark, table=route.table)
            if self._has_route(route):
                self._local_default_route("del", route)
        except NetlinkError as err:
            raise RoutingError(f"removing IPv{route.family} policy routing: {err}") from None

    # --- the inbound passthrough address on lo ------------------------------------------

    def lo_addresses(self, candidates: Iterable[str]) -> set[str]:
        """Which of ``candidates`` (CIDR text, e.g. "::6/128") are on lo now."""
        present = set()
        for candidate in candidates:
            address, _, prefix = candidate.partition("/")
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for entry in self._ipr.get_addr(family=family, index=self._lo()):
                if entry.get_attr("IFA_ADDRESS") == address and str(entry["prefixlen"]) == prefix:
                    present.add(candidate)
        return present

    def reconcile_lo_addresses(self, wanted: set[str], owned: Iterable[str]) -> bool:
        """Make the ``owned`` addresses on lo equal ``wanted``; True if anything changed."""
        have = self.lo_addresses(owned)
        try:
            for candidate in sorted(have - wanted):
                address, _, prefix = candidate.partition("/")
                self._ipr.addr("del", index=self._lo(), address=address, prefixlen=int(prefix))
            for candidate in sorted(wanted - have):
                address, _, prefix = candidate.partition("/")
                self._ipr.addr("add", index=self._lo(), address=address, prefixlen=int(prefix))
        except NetlinkError as err:
            raise RoutingError(f"setting the lo addresses {sorted(wanted)}: {err}") from None
        return have != wanted

    def reconcile(
        self, wanted: set[PolicyRoute], families: Iterable[int], mark: int, table: int
    ) -> bool:
        """Make the installed entries equal ``wanted``; returns whether anything changed."""
        have = self.installed(families, mark, table)
        complete = {r for r in have if self._has_rule(r) and self._has_route(r)}
        changed = False
        for route in have - wanted:
            self.remove(route)
            changed = True
        for route in wanted - complete:
            self.add(route)
            changed = True
        return changed
