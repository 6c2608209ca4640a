"""Which services a new mesh version replaced in the running one, by identity. Pure.

A control plane's usual update moves endpoints and nothing else, and the xDS translation keeps
every untouched service as the very same object (``proxy/xds/translate.py``). The worker then
needs to rebuild only the replaced services' clusters and route entries rather than walk the
whole mesh: that is what keeps such an update's cost proportional to what changed.
"""

from __future__ import annotations

from dataclasses import fields

from proxy.config.model import Mesh, Service

_KEPT_FIELDS = tuple(f.name for f in fields(Mesh) if f.name not in ("services", "source"))


def replaced_services(old: Mesh, new: Mesh) -> tuple[tuple[Service, Service], ...] | None:
    """The (old, new) service pairs when ``new`` is ``old`` with some services swapped, in
    place, for services of the same key, VIPs and ports (what an endpoint update makes);
    None when anything else differs (the workload, a policy, a service added, removed or
    moved): then everything is rebuilt."""
    if len(old.services) != len(new.services):
        return None
    for name in _KEPT_FIELDS:
        if getattr(old, name) is not getattr(new, name):
            return None
    pairs = tuple((a, b) for a, b in zip(old.services, new.services, strict=True) if a is not b)
    for before, after in pairs:
        if (before.key, before.vips, before.ports) != (after.key, after.vips, after.ports):
            return None
    return pairs
