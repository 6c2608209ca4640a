"""Authorization: Istio's AuthorizationPolicy semantics, evaluated on the inbound side over
normalised requests (the path an app will see, not the path a client wrote)."""
