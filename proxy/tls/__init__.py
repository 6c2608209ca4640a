"""Mesh mTLS in the sidecar: the workload's identity (certificate, key, mesh root) as TLS
contexts, reloaded when its files change, and the SPIFFE ID of a peer."""
