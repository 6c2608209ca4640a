"""An update that replaced only ClusterLoadAssignments rebuilds only the services built from
them: the result must equal a whole build of the same resources, every other service must be
the previous build's very object, and a refused update must leave the next build right."""

from __future__ import annotations

import pytest
from support.xds_snapshots import (
    MESHED_ENDPOINT,
    assignment,
    checked,
    cluster,
    http_listener,
    istio_mtls,
    outbound,
    route,
    route_config,
    virtual_host,
    virtual_outbound,
)

from proxy.config.model import Mesh
from proxy.xds.memo import TranslationMemo
from proxy.xds.resources import TYPE_ENDPOINT, XdsRejected
from proxy.xds.translate import Resources, build_mesh

WEB, WEB_V1 = outbound(8080, "web.default"), outbound(8080, "web.default", "v1")
API = outbound(8080, "api.default")
DB = outbound(5432, "db.default")
BASE = Mesh()


def snapshot_resources() -> Resources:
    return checked(
        virtual_outbound(),
        http_listener(8080),
        route_config(
            "8080",
            [
                virtual_host("web.default", 8080, "10.96.0.1", [route(WEB_V1, "/v1"), route(WEB)]),
                virtual_host("api.default", 8080, "10.96.0.2", [route(API)]),
            ],
        ),
        cluster(WEB),
        cluster(WEB_V1),
        cluster(API, **istio_mtls("spiffe://cluster.local/ns/default/sa/api", 8080, API)),
        cluster(DB),
        assignment(WEB, [("10.0.0.1", 8080), ("10.0.0.2", 8080)]),
        assignment(WEB_V1, [("10.0.0.1", 8080)]),
        assignment(API, [("10.0.1.1", 8080)], **MESHED_ENDPOINT),
        assignment(DB, [("10.0.2.1", 5432)]),
    )


def endpoints_update(held: Resources, *replaced) -> Resources:
    """As the ADS state makes it: only the endpoints mapping is new."""
    endpoints = dict(held.endpoints)
    endpoints.update((a.cluster_name, a) for a in replaced)
    return held.with_type(TYPE_ENDPOINT, endpoints)


UPDATES = {
    "one endpoint moved": [assignment(WEB, [("10.0.0.1", 8080), ("10.0.0.3", 8080)])],
    "a subset's endpoints": [assignment(WEB_V1, [("10.0.0.2", 8080)])],
    "every endpoint gone": [assignment(DB, [])],
    "a meshed endpoint turned plain": [assignment(API, [("10.0.1.1", 8080)])],
    "two services at once": [
        assignment(DB, [("10.0.2.2", 5432)]),
        assignment(API, [("10.0.1.2", 8080)], **MESHED_ENDPOINT),
    ],
}


@pytest.mark.parametrize("name", list(UPDATES))
def test_an_endpoint_update_equals_a_whole_build_and_keeps_the_other_services(name):
    memo = TranslationMemo()
    held = snapshot_resources()
    first = build_mesh(held, BASE, "v1", memo)
    update = endpoints_update(held, *UPDATES[name])
    looked_up = memo.hits + memo.misses
    second = build_mesh(update, BASE, "v2", memo)
    assert memo.hits + memo.misses == looked_up  # not a whole build through the memo
    assert second == build_mesh(update, BASE, "v2")  # a fresh memo: a whole build
    touched = {a.cluster_name.split("|")[3].split(".svc")[0] for a in UPDATES[name]}
    for before, after in zip(first.services, second.services, strict=True):
        assert (before is after) == (before.key not in touched), before.key


def test_a_refused_endpoint_update_leaves_the_next_build_right():
    memo = TranslationMemo()
    held = snapshot_resources()
    build_mesh(held, BASE, "v1", memo)
    # A subset endpoint that is not the service's: refused, as a whole build refuses it.
    bad = endpoints_update(held, assignment(WEB_V1, [("10.0.0.9", 8080)]))
    with pytest.raises(XdsRejected, match="not an endpoint of the service"):
        build_mesh(bad, BASE, "v2", memo)
    good = endpoints_update(held, assignment(WEB, [("10.0.0.1", 8080)]))
    assert build_mesh(good, BASE, "v3", memo) == build_mesh(good, BASE, "v3")


def test_anything_but_endpoints_is_a_whole_build():
    memo = TranslationMemo()
    held = snapshot_resources()
    first = build_mesh(held, BASE, "v1", memo)
    clusters = dict(held.clusters)  # a new clusters mapping, even with the same clusters
    again = build_mesh(
        Resources(held.listeners, held.routes, clusters, held.endpoints), BASE, "v2", memo
    )
    assert again == build_mesh(held, BASE, "v2")
    assert memo.hits > 0 and first.services[0] is again.services[0]  # the memo still helps
