"""Admin (127.0.0.1:15000), merged Prometheus metrics (15020) and readiness (15021)."""
