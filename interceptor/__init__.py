"""Detour interceptor: the eBPF interception path (not yet implemented)."""
