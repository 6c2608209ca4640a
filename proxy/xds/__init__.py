"""Detour as an xDS data plane: the mesh streamed from a control plane (ADS over gRPC).

``bootstrap`` reads an Envoy-style bootstrap file; ``resources`` holds the type URLs and the
rule that a field Detour does not implement is refused by name, never ignored; ``translate``
turns Envoy's listeners, routes, clusters and endpoints into Detour's :class:`Mesh` (pure
functions); ``state`` keeps what was accepted per type and decides when it is complete
(Envoy's warming); ``client`` is the ADS stream itself.
"""
