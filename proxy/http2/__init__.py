"""HTTP/2 and gRPC with h2: the downstream connection manager, upstream tries, gRPC rules."""
