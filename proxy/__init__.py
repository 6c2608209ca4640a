"""Detour proxy: the sidecar data plane (``detour-proxy``, proxy.cli).

Its request telemetry runs compiled by mypyc when ``build/native`` holds a build of exactly its
source (``proxy.native``).
"""

from proxy.native import adopt

adopt(__name__, __path__)
