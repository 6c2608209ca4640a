"""The one request pipeline: what happens to an HTTP request between the codecs.

A request (head, body, trailers) goes route → policy hooks → fault injection → cluster →
upstream tries with retries and timeouts → response, in ``forward.Pipeline``, whichever codec
brought it and whichever the upstream speaks. The codecs meet it through three interfaces
(``exchange``): the request body, the response sink (the downstream side) and the upstream
try; HTTP/1.1 and HTTP/2 implement them in ``proxy.filters``. Nothing here reads or writes a
socket or imports a codec. Its modules run compiled by mypyc when ``build/native`` holds a
build of exactly these sources (``proxy.native``).
"""

from proxy.native import adopt

adopt(__name__, __path__)
