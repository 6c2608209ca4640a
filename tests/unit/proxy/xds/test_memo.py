"""Translations kept between builds: an update costs what it changed, never changes the result.

The memo is keyed by the identity of its inputs; build_mesh with a memo must give exactly the
mesh a fresh build gives, while translating again only the resources (and services) whose
message objects are new.
"""

from __future__ import annotations

import pytest
from support.xds_snapshots import (
    assignment,
    cluster,
    http_listener,
    outbound,
    route,
    route_config,
    snapshot,
    virtual_host,
    virtual_outbound,
)

from proxy.config.model import Mesh
from proxy.xds.memo import TranslationMemo
from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    XdsRejected,
    resource_name,
)
from proxy.xds.translate import Resources, build_mesh

HOSTS = ("a.default", "b.default", "c.default")


def resources_of(*messages) -> Resources:
    by_type = {t: {resource_name(m): m for m in ms} for t, ms in snapshot(*messages).items()}
    return Resources(
        by_type[TYPE_LISTENER], by_type[TYPE_ROUTE], by_type[TYPE_CLUSTER], by_type[TYPE_ENDPOINT]
    )


def routes(vips: tuple[str, ...] = ("10.96.0.1", "10.96.0.2", "10.96.0.3")):
    hosts = [
        virtual_host(h, 8080, vip, [route(outbound(8080, h))])
        for h, vip in zip(HOSTS, vips, strict=True)
    ]
    return route_config("8080", hosts)


@pytest.fixture
def mesh_parts():
    """Three HTTP services on 8080, one endpoint each: (listeners and routes, clusters,
    ClusterLoadAssignments)."""
    fixed = [virtual_outbound(), http_listener(8080), routes()]
    clusters = [cluster(outbound(8080, h)) for h in HOSTS]
    assignments = [
        assignment(outbound(8080, h), [(f"10.1.{i}.1", 8080)]) for i, h in enumerate(HOSTS)
    ]
    return fixed, clusters, assignments


def test_the_memo_returns_what_it_computed_for_the_same_objects_only() -> None:
    memo = TranslationMemo()
    one, equal = [1], [1]
    assert memo.get("k", (one,), ("v",), lambda: "first") == "first"
    assert memo.get("k", (one,), ("v",), lambda: "again") == "first"  # the same object
    assert memo.get("k", (equal,), ("v",), lambda: "other") == "other"  # equal is not same
    assert memo.get("k", (one,), ("w",), lambda: "values") == "values"  # values compared
    assert (memo.hits, memo.misses) == (1, 3)


def test_a_commit_forgets_what_the_build_did_not_use_and_abandon_keeps_the_last() -> None:
    memo = TranslationMemo()
    kept, dropped = object(), object()
    memo.get("k", (kept,), (), lambda: 1)
    memo.get("k", (dropped,), (), lambda: 2)
    memo.commit()
    assert len(memo) == 2
    memo.get("k", (kept,), (), lambda: 3)
    memo.commit()  # ``dropped`` was not used by this build
    assert len(memo) == 1
    memo.get("k", (object(),), (), lambda: 4)
    memo.abandon()  # a failed build: the previous entries stay, its own go
    assert len(memo) == 1 and memo.get("k", (kept,), (), lambda: 5) == 1


def test_one_moved_endpoint_translates_one_service_and_builds_the_same_mesh(mesh_parts) -> None:
    fixed, clusters, assignments = mesh_parts
    memo = TranslationMemo()
    first = build_mesh(resources_of(*fixed, *clusters, *assignments), Mesh(), "t", memo)
    moved = assignment(outbound(8080, HOSTS[0]), [("10.9.9.9", 8080)])
    update = resources_of(*fixed, *clusters, moved, *assignments[1:])
    misses = memo.misses
    second = build_mesh(update, Mesh(), "t", memo)
    # the new ClusterLoadAssignment's endpoints and its service; nothing else
    assert memo.misses - misses == 2
    assert second == build_mesh(update, Mesh(), "t")  # a fresh build agrees
    assert second.services[0] != first.services[0]
    assert [str(e.address) for e in second.services[0].endpoints] == ["10.9.9.9"]
    assert second.services[1] is first.services[1] and second.services[2] is first.services[2]


def test_a_refused_build_leaves_the_memo_serving_the_last_good_one(mesh_parts) -> None:
    fixed, clusters, assignments = mesh_parts
    memo = TranslationMemo()
    good = resources_of(*fixed, *clusters, *assignments)
    first = build_mesh(good, Mesh(), "t", memo)
    one_vip = routes(("10.96.0.1", "10.96.0.1", "10.96.0.3"))  # two services, one VIP
    bad = resources_of(fixed[0], fixed[1], one_vip, *clusters, *assignments)
    with pytest.raises(XdsRejected, match="also the VIP of"):
        build_mesh(bad, Mesh(), "t", memo)
    misses = memo.misses
    again = build_mesh(good, Mesh(), "t", memo)
    assert memo.misses == misses and again == first
