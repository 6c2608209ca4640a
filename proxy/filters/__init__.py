"""The codecs' connection managers and upstream tries: where a connection's bytes meet the
request pipeline (HTTP/1.1, HTTP/2, the sniffer that tells them apart).

Its HTTP/1.1 upstream try runs compiled by mypyc when ``build/native`` holds a build of exactly
its source (``proxy.native``).
"""

from proxy.native import adopt

adopt(__name__, __path__)
