"""The transport layer: bytes between sockets (the L4 relay) and the one upstream connector."""
