"""HTTP/2 with h2: the asyncio shell for both ends of a connection (``endpoint``), the upstream
connection (``client``) and the heads between h2's header lists and the shared HTTP events
(``messages``). The downstream manager and the upstream try that use them are in
``proxy.filters``; gRPC's rules are the pipeline's.

Importing this package does not import h2 (~4 MiB of modules): the sidecar loads the HTTP/2
modules when the first HTTP/2 connection or HTTP/2 upstream needs them, so a sidecar that only
sees TCP and HTTP/1.1 never pays for them (its idle memory is a benchmark target).
"""
