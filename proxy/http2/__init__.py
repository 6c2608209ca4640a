"""HTTP/2 and gRPC with h2: the downstream connection manager, upstream tries, gRPC rules.

Importing this package does not import h2 (~4 MiB of modules): the sidecar loads the HTTP/2
modules when the first HTTP/2 connection or HTTP/2 upstream needs them, so a sidecar that only
sees TCP and HTTP/1.1 never pays for them (its idle memory is a benchmark target).
"""

HTTP2_PORTS = ("http2", "grpc")  # service port protocols whose upstream speaks HTTP/2
