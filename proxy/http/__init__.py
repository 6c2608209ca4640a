"""Sans-IO HTTP/1.1 for the sidecar's L7 path: parse, validate and re-frame proxied messages."""
