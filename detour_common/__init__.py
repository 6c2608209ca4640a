"""What init, the eBPF interceptor and the sidecar must agree on, in one small place.

The three programs run in different processes (an init container, a loader, the sidecar) and
never import each other: a number all of them need (the proxy's uid, the TPROXY mark) or a
host fact all of them read (capabilities, a socket's original destination) lives here.
"""
