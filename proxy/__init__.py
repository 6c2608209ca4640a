"""Detour proxy: the sidecar data plane (not yet implemented; see issue 3)."""
