"""``detour-ca``: the mesh's certificate authority (a root, and short-lived workload
certificates carrying SPIFFE IDs). A program of its own, beside init and the sidecar; it
shares only ``detour_common`` with them."""
