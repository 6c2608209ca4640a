"""SPIFFE IDs in Istio's form: what parses, what is refused and how the refusal reads."""

from __future__ import annotations

import pytest

from detour_common.spiffe import SpiffeError, SpiffeId, parse


def test_an_istio_spiffe_id_round_trips() -> None:
    identity = parse("spiffe://cluster.local/ns/default/sa/client")
    assert identity == SpiffeId("cluster.local", "default", "client")
    assert identity.uri == "spiffe://cluster.local/ns/default/sa/client"
    assert identity.principal == "cluster.local/ns/default/sa/client"


@pytest.mark.parametrize(
    "text",
    [
        "http://cluster.local/ns/default/sa/client",  # another scheme
        "spiffe://cluster.local/ns/default",  # no service account
        "spiffe://cluster.local/sa/client/ns/default",  # segments swapped
        "spiffe://cluster.local/ns/default/sa/client/extra",
        "spiffe://Cluster.Local/ns/default/sa/client",  # a trust domain is lowercase
        "spiffe://cluster.local/ns//sa/client",  # empty namespace
        "spiffe:///ns/default/sa/client",  # empty trust domain
    ],
)
def test_anything_else_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(SpiffeError) as refused:
        parse(text)
    assert repr(text) in str(refused.value)
