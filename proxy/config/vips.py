"""Stable virtual IPs for services declared with ``vip: auto``.

Applications connect to a service's VIP, and the sidecar recognises the service by it, so a VIP
must not move when an unrelated service is added to or removed from the mesh: a restart with a
slightly different file would otherwise silently send open-ended clients (cached DNS answers,
pooled connections) to a different service. Hence each VIP is derived from the service's key
(``name.namespace``) alone, through a hash, and never from its position in the file.

Stability guarantee: a service gets its *home* address (sha256 of its key, reduced to an offset
in the range) in every mesh, whatever other services exist, unless that address is taken by an
explicit VIP or another auto service whose key sorts first has the same home.

The one limit is collisions: in those cases the displaced service probes linearly for the next
free address, so its VIP then depends on which other services exist. With the default /16 the
chance that two given services share a home is 1 in 65534; the displaced one is always the
service whose key sorts later, so the outcome is deterministic, never order-dependent. Pin a
VIP explicitly for a service whose address must never move.

Everything here is pure: no state is kept between calls, so the same inputs give the same VIPs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from proxy.config.model import DEFAULT_VIP_RANGE_V4, DEFAULT_VIP_RANGE_V6, IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class VipRangeExhaustedError(ValueError):
    """More auto services than free addresses in a VIP range; the mesh cannot be served."""


def allocate_vips(
    keys: Iterable[str],
    taken: Iterable[IPAddress] = (),
    *,
    range_v4: ipaddress.IPv4Network = DEFAULT_VIP_RANGE_V4,
    range_v6: ipaddress.IPv6Network = DEFAULT_VIP_RANGE_V6,
) -> dict[str, tuple[IPAddress, IPAddress]]:
    """Give every service key one IPv4 and one IPv6 VIP: ``{key: (v4, v6)}``.

    ``taken`` holds the explicit VIPs of the mesh (either family); they are never handed out.
    Both families are allocated independently with :func:`allocate_in_range`, so dual-stack
    clients see the same stability guarantee on each. Raises :class:`VipRangeExhaustedError`.
    """
    unique = sorted(set(keys))
    reserved = tuple(taken)
    v4 = allocate_in_range(unique, range_v4, reserved)
    v6 = allocate_in_range(unique, range_v6, reserved)
    return {key: (v4[key], v6[key]) for key in unique}


def allocate_in_range(
    keys: Iterable[str], network: IPNetwork, taken: Iterable[IPAddress] = ()
) -> dict[str, IPAddress]:
    """Give every key one address of ``network``, avoiding ``taken``: ``{key: address}``.

    The first and last addresses of the range (network and broadcast-like) are never used, so
    a range must hold at least three addresses. Home slots are claimed first, in key order, and
    only then do the losers probe; so a probing service can never push another one off its home.
    """
    size = _usable_slots(network)
    first = int(network.network_address) + 1
    used = _reserved_slots(network, taken)
    ordered = sorted(set(keys))
    if len(ordered) > size - len(used):
        raise VipRangeExhaustedError(
            f"{len(ordered)} services need a VIP in {network} but only "
            f"{size - len(used)} addresses are free"
        )
    slots, displaced = _claim_homes(ordered, size, used)
    for key in displaced:
        slots[key] = _probe(_home_slot(key, size), size, used)
    return {key: ipaddress.ip_address(first + slots[key]) for key in ordered}


def _usable_slots(network: IPNetwork) -> int:
    """Addresses available for VIPs: all but the first and the last of the range."""
    size = network.num_addresses - 2
    if size < 1:
        raise ValueError(f"VIP range {network} is too small: it needs at least 3 addresses")
    return size


def _reserved_slots(network: IPNetwork, taken: Iterable[IPAddress]) -> set[int]:
    """Slots (offsets past the first address) occupied by explicit VIPs inside ``network``."""
    first = int(network.network_address) + 1
    size = network.num_addresses - 2
    slots = set()
    for address in taken:
        if address.version == network.version and 0 <= int(address) - first < size:
            slots.add(int(address) - first)
    return slots


def _home_slot(key: str, size: int) -> int:
    """The slot a key hashes to: a function of the key and the range size, nothing else."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size


def _claim_homes(ordered: list[str], size: int, used: set[int]) -> tuple[dict[str, int], list[str]]:
    """Phase one: each key takes its home slot if free; the first key in order wins a tie.

    Returns the slots claimed and the keys displaced (in key order); ``used`` is updated.
    """
    slots: dict[str, int] = {}
    displaced: list[str] = []
    for key in ordered:
        home = _home_slot(key, size)
        if home in used:
            displaced.append(key)
        else:
            used.add(home)
            slots[key] = home
    return slots, displaced


def _probe(home: int, size: int, used: set[int]) -> int:
    """Phase two: the first free slot after ``home``, wrapping round; marks it used."""
    for step in range(1, size + 1):
        slot = (home + step) % size
        if slot not in used:
            used.add(slot)
            return slot
    raise VipRangeExhaustedError("no free address left")  # unreachable: checked by the caller
