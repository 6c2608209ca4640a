"""Which services a new mesh version replaced in the running one, by identity. Pure.

A control plane's usual update moves endpoints and nothing else, and the xDS translation keeps
every untouched service as the very same object (``proxy/xds/translate.py``). The worker then
needs to rebuild only the replaced services' clusters and route entries rather than walk the
whole mesh: that is what keeps such an update's cost proportional to what changed. A worker
process is sent only the replaced services, for the same reason (``proxy/workers.py``).
"""

from __future__ import annotations

from dataclasses import fields, replace

from proxy.config.model import Mesh, Service

_KEPT_FIELDS = tuple(f.name for f in fields(Mesh) if f.name not in ("services", "source"))


def replaced_indexes(old: Mesh, new: Mesh) -> tuple[int, ...] | None:
    """Where ``new`` is ``old`` with some services swapped, in place, for services of the
    same key, VIPs and ports (what an endpoint update makes): the indexes of those services;
    None when anything else differs (the workload, a policy, a service added, removed or
    moved): then everything is rebuilt."""
    if len(old.services) != len(new.services):
        return None
    for name in _KEPT_FIELDS:
        if getattr(old, name) is not getattr(new, name):
            return None
    pairs = zip(old.services, new.services, strict=True)
    indexes = tuple(i for i, (a, b) in enumerate(pairs) if a is not b)
    for i in indexes:
        before, after = old.services[i], new.services[i]
        if (before.key, before.vips, before.ports) != (after.key, after.vips, after.ports):
            return None
    return indexes


def replaced_services(old: Mesh, new: Mesh) -> tuple[tuple[Service, Service], ...] | None:
    """The (old, new) pairs of ``replaced_indexes``; None when it is None."""
    indexes = replaced_indexes(old, new)
    if indexes is None:
        return None
    return tuple((old.services[i], new.services[i]) for i in indexes)


def with_replaced(mesh: Mesh, services: list[tuple[int, Service]], source: str) -> Mesh:
    """``mesh`` with the services at those indexes swapped (the rest the same objects), as
    a worker process rebuilds the update its supervisor sent as only what was replaced."""
    current = list(mesh.services)
    for index, service in services:
        current[index] = service
    return replace(mesh, services=tuple(current), source=source)
