"""Sans-IO HTTP/1.1 for the sidecar's L7 path: parse, validate and re-frame proxied messages.

Its codec runs compiled by mypyc when ``build/native`` holds a build of exactly these sources
(``proxy.native``).
"""

from proxy.native import adopt

adopt(__name__, __path__)
