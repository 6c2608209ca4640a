"""Which DNS names are mesh services, and their VIPs: the table the sidecar's DNS server answers
from without asking upstream. Pure; built once per mesh version.

Why the server needs more than the FQDN: applications ask for ``backend`` or
``backend.prod``, and the pod's stub resolver turns that into a sequence of queries by appending
each resolv.conf search domain (``backend.default.svc.cluster.local``,
``backend.svc.cluster.local``, ..., then ``backend``; see ``resolvconf.stub_candidates``).
Whichever of those reaches the server first must get the VIP, or the stub moves on and the name
leaks upstream. So every form a service is known by is registered, both bare and followed by
each search domain, like Istio's DNS proxy does.

A service ``name`` in ``namespace`` with cluster domain ``cd`` and search list ``S`` is known as

- rank 0, its FQDN ``name.namespace.svc.cd``;
- rank 1, ``name.namespace`` and ``name.namespace.svc``, and each rank 0/1 form followed by
  each ``s`` in ``S`` (``name.namespace.default.svc.cd``, ``name.namespace.svc.cd.example.com``);
- rank 2, its short name ``name`` and ``name.s`` for each ``s`` in ``S``, if it owns the short
  name (below).

When two services claim one name the lower rank wins, so a short-name alias can never shadow a
namespace-qualified name; equal ranks from different services cannot arise from these forms
(every rank 0/1 name starts with ``name.namespace``), but if they did the name would be
withdrawn rather than answered arbitrarily. A short-name alias is also never registered for a
name shaped like a service FQDN (``a.b.svc.cd``): that shape means "service a in namespace b"
and answers only for that service, so ``backend.default.svc.cd`` is NXDOMAIN when only
``backend.prod`` exists, even though ``default.svc.cd`` is a search domain. The stub then moves
on to the next search domain, whose short-name alias answers.

Short-name rule. In Kubernetes a short name is relative to the client's namespace; this mesh
lets a short name reach any namespace, as long as the answer is unambiguous:

1. the service of that name in the workload's own namespace (``mesh.workload.namespace``) owns
   it, as Kubernetes would resolve it;
2. otherwise, if exactly one service in the mesh has that name, that service owns it;
3. otherwise (several namespaces, none of them the workload's) nobody owns it: guessing would
   route traffic to a namespace the application never named, and it would silently change when
   a same-named service is added elsewhere.

Answers. ``Found`` for a registered name; ``NoSuchName`` (NXDOMAIN, answered locally) for any
other name inside the mesh's own domains: ``cd`` and everything under it, and
``svc.cd.s`` and everything under it for each search domain ``s`` outside ``cd`` (what a stub
makes of a mesh FQDN by appending such a domain), because upstream can only say NXDOMAIN too,
slower and while learning the pod's service names; ``NotMesh`` for everything else, which the
caller forwards upstream. Domain checks are on whole labels: ``xcluster.local`` is not in
``cluster.local``.

Caveat worth knowing: a search domain outside the mesh (``example.com``) makes
``backend.example.com`` a mesh name, so an explicit query for a real external host of that name
gets the mesh VIP. That is the price of answering every form a stub sends (Istio pays it too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.config.model import Mesh, Service

_FQDN, _QUALIFIED, _SHORT = 0, 1, 2
_WITHDRAWN = ""  # the service key of a name claimed by two services at the same rank


@dataclass(frozen=True)
class Found:
    """A mesh service's name. An empty tuple for the asked family is NOERROR/NODATA, not
    NXDOMAIN: the name exists. The caller picks the family; both are here."""

    v4: tuple[str, ...]
    v6: tuple[str, ...]
    service_key: str


@dataclass(frozen=True)
class NoSuchName:
    """Inside the mesh's domains but no service has the name: NXDOMAIN, without upstream."""


@dataclass(frozen=True)
class NotMesh:
    """Not a mesh name: forward upstream."""


Answer = Found | NoSuchName | NotMesh

NO_SUCH_NAME = NoSuchName()
NOT_MESH = NotMesh()


def name_inputs(mesh: Mesh) -> tuple[object, ...]:
    """Everything :meth:`MeshNames.build` reads of ``mesh`` (besides the search list): equal
    inputs build equal tables."""
    services = tuple((s.name, s.namespace, s.vips) for s in mesh.services)
    return (mesh.cluster_domain, mesh.workload.namespace, services)


class MeshNames:
    """Every name of every mesh service, for one mesh version and one search list.

    ``lookup`` is one dict access plus a suffix test against a handful of zones (one per search
    domain), independent of the number of services. A mesh reload builds a new instance; names
    of removed services disappear with the old one.
    """

    __slots__ = ("_names", "_table", "_zone_suffixes", "_zones", "cluster_domain", "search")

    def __init__(
        self,
        table: dict[str, Found],
        names: dict[str, tuple[str, ...]],
        zones: tuple[str, ...],
        cluster_domain: str,
        search: tuple[str, ...],
    ) -> None:
        self._table = table
        self._names = names
        self._zones = frozenset(zones)
        self._zone_suffixes = tuple(f".{zone}" for zone in zones)
        self.cluster_domain = cluster_domain
        self.search = search

    @classmethod
    def build(cls, mesh: Mesh, search: Sequence[str] = ()) -> MeshNames:
        """The table for ``mesh`` as seen by a pod whose resolv.conf searches ``search``."""
        cd = _normalise(mesh.cluster_domain)
        suffixes = tuple(dict.fromkeys(d for d in map(_normalise, search) if d))
        owners = _short_name_owners(mesh.services, _normalise(mesh.workload.namespace))
        claims: dict[str, tuple[int, str]] = {}
        found: dict[str, Found] = {}
        for service in mesh.services:
            key = service.key
            found[key] = _found(service)
            name, namespace = _normalise(service.name), _normalise(service.namespace)
            fqdn = f"{name}.{namespace}.svc.{cd}"
            qualified = (f"{name}.{namespace}", f"{name}.{namespace}.svc")
            _claim(claims, fqdn, _FQDN, key)
            for form in (*qualified, fqdn):
                for alias in (form, *_extended(form, suffixes)):
                    if alias != fqdn:
                        _claim(claims, alias, _QUALIFIED, key)
            if owners.get(name) == key:
                for alias in (name, *_extended(name, suffixes)):
                    if not _is_fqdn_shaped(alias, cd):
                        _claim(claims, alias, _SHORT, key)
        table = {name: found[key] for name, (_, key) in claims.items() if key != _WITHDRAWN}
        by_key: dict[str, list[tuple[int, str]]] = {}
        for name, (rank, key) in claims.items():
            if key != _WITHDRAWN:
                by_key.setdefault(key, []).append((rank, name))
        names = {
            key: tuple(n for _, n in sorted(ranked, key=lambda r: (r[0], r[1].count("."), r[1])))
            for key, ranked in by_key.items()
        }
        zones = (cd, *(f"svc.{cd}.{s}" for s in suffixes if not _within(s, cd)))
        return cls(table, names, tuple(dict.fromkeys(zones)), cd, suffixes)

    def lookup(self, name: str) -> Answer:
        """Answer for ``name``, which the caller has lower-cased and stripped of the root dot
        (the server does that once per query; doing it here would hide a caller that forgot)."""
        found = self._table.get(name)
        if found is not None:
            return found
        if self.in_mesh_domain(name):
            return NO_SUCH_NAME
        return NOT_MESH

    def in_mesh_domain(self, name: str) -> bool:
        """True when ``name`` is at or under one of the mesh's zones, on label boundaries."""
        return name in self._zones or name.endswith(self._zone_suffixes)

    def names_of(self, service_key: str) -> tuple[str, ...]:
        """Every name that answers with ``service_key``'s VIPs, most specific first (FQDN,
        namespace-qualified, short); empty for an unknown key. For tests and debug output."""
        return self._names.get(service_key, ())

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table


def _short_name_owners(services: Iterable[Service], workload_namespace: str) -> dict[str, str]:
    """Short name -> key of the service that owns it, by the rule in the module docstring."""
    by_name: dict[str, list[Service]] = {}
    for service in services:
        by_name.setdefault(_normalise(service.name), []).append(service)
    owners: dict[str, str] = {}
    for name, group in by_name.items():
        local = [s for s in group if _normalise(s.namespace) == workload_namespace]
        if local:
            owners[name] = local[0].key
        elif len(group) == 1:
            owners[name] = group[0].key
    return owners


def _claim(claims: dict[str, tuple[int, str]], name: str, rank: int, key: str) -> None:
    """Record that ``key`` answers for ``name`` at ``rank``: the lower rank wins, and two
    different services at the same rank withdraw the name rather than pick one."""
    current = claims.get(name)
    if current is None or rank < current[0]:
        claims[name] = (rank, key)
    elif rank == current[0] and current[1] != key:
        claims[name] = (rank, _WITHDRAWN)


def _extended(name: str, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """``name`` as the stub sends it after appending each search domain."""
    return tuple(f"{name}.{suffix}" for suffix in suffixes)


def _is_fqdn_shaped(name: str, cd: str) -> bool:
    """``a.b.svc.<cd>``: the shape that names service ``a`` in namespace ``b`` and nothing else."""
    zone = f".svc.{cd}"
    return name.endswith(zone) and name[: -len(zone)].count(".") == 1


def _within(name: str, zone: str) -> bool:
    """``name`` is ``zone`` or under it, on label boundaries."""
    return name == zone or name.endswith(f".{zone}")


def _normalise(domain: str) -> str:
    """DNS compares case-insensitively and the root dot carries no information."""
    return domain.strip().lower().rstrip(".")


def _found(service: Service) -> Found:
    """One shared answer per service, VIPs split by family as the A/AAAA caller needs them."""
    v4 = tuple(str(vip) for vip in service.vips if isinstance(vip, ipaddress.IPv4Address))
    v6 = tuple(str(vip) for vip in service.vips if isinstance(vip, ipaddress.IPv6Address))
    return Found(v4=v4, v6=v6, service_key=service.key)
