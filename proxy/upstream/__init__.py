"""Upstream side: clusters, endpoints, load balancers, outlier detection, circuit breakers."""
