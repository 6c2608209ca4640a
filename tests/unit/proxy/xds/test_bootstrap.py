"""``--bootstrap``: Envoy's bootstrap file, the ADS server it names, and Istio node ids."""

from __future__ import annotations

import pytest

from proxy.xds.bootstrap import BootstrapError, parse_bootstrap, parse_istio_node_id

ISTIO_LIKE = """
node:
  id: sidecar~10.88.0.2~client-1.default~default.svc.cluster.local
  cluster: client.default
  metadata: {NAMESPACE: default}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
      - envoy_grpc: {cluster_name: xds-grpc}
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
    - name: xds-grpc
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:  # gRPC needs HTTP/2 (Envoy's and istiod's bootstrap)
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: xds-grpc
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {socket_address: {address: 10.88.0.1, port_value: 15010}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
"""


def test_an_istio_style_bootstrap_names_the_node_and_its_ads_server():
    bootstrap = parse_bootstrap(ISTIO_LIKE, "bootstrap.yaml")
    assert bootstrap.server == "10.88.0.1:15010"
    assert bootstrap.variant == "sotw"
    assert bootstrap.node.cluster == "client.default"
    assert bootstrap.node.metadata["NAMESPACE"] == "default"
    node = bootstrap.istio_node
    assert node is not None
    assert (node.ip, node.pod, node.namespace, node.cluster_domain) == (
        "10.88.0.2",
        "client-1",
        "default",
        "cluster.local",
    )


def test_delta_and_google_grpc_targets_are_understood():
    text = (
        ISTIO_LIKE.replace("api_type: GRPC", "api_type: DELTA_GRPC")
        .replace(
            "envoy_grpc: {cluster_name: xds-grpc}",
            "google_grpc: {target_uri: 'cp:15010', stat_prefix: x}",
        )
        .split("static_resources:")[0]
    )
    bootstrap = parse_bootstrap(text, "b.yaml")
    assert (bootstrap.variant, bootstrap.server) == ("delta", "cp:15010")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("api_type: GRPC", "api_type: REST"), "dynamic_resources.ads_config.api_type"),
        (
            ("cluster_name: xds-grpc}", "cluster_name: nowhere}"),
            "static_resources.clusters[0].name",
        ),
        (("  cluster: client.default", "  clustr: client.default"), "clustr"),
        (("admin:", "overload_manager: {}\nadmin:"), "overload_manager"),
    ],
    ids=["rest", "unknown-cluster", "typo", "unsupported-top-level"],
)
def test_a_bootstrap_detour_cannot_follow_is_refused_naming_the_field(change, named):
    text = ISTIO_LIKE.replace(*change)
    assert text != ISTIO_LIKE
    with pytest.raises(BootstrapError) as caught:
        parse_bootstrap(text, "bootstrap.yaml")
    assert named in str(caught.value) and "bootstrap.yaml" in str(caught.value)


@pytest.mark.parametrize(
    "node_id",
    [
        "client-1",
        "sidecar~10.0.0.1~nodots~default.svc.cluster.local",
        "sidecar~10.0.0.1~a.b~other.svc.cluster.local",
    ],
)
def test_ids_that_are_not_in_istio_form_name_no_workload(node_id):
    assert parse_istio_node_id(node_id) is None
