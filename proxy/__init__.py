"""Detour proxy: the sidecar data plane (``detour-proxy``, proxy.cli)."""
