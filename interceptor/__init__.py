"""Detour interceptor: eBPF interception of a cgroup's outbound TCP and DNS (see README.md)."""
