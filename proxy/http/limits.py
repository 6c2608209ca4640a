"""Size limits of the HTTP/1.1 codec, each with where its default comes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """What the codec accepts before it refuses a message.

    Requests over a limit get the status named below; responses over a limit are upstream
    protocol errors (502). Envoy applies the same header limits to responses and trailers.
    """

    # Request line (and status line). RFC 9112 §3: "It is RECOMMENDED that all HTTP senders and
    # recipients support, at a minimum, request-line lengths of 8000 octets"; a target longer
    # than the server will parse MUST get 414 (RFC 9112 §3, RFC 9110 §15.5.15). 8 KiB is also
    # nginx's large_client_header_buffers line size. Envoy has no separate line limit (the line
    # counts against max_request_headers_kb); we add one so an overlong target gets 414, not 431.
    max_request_line: int = 8 * 1024
    # Whole head: start line, fields and the terminating CRLFs. Envoy's HttpConnectionManager
    # max_request_headers_kb defaults to 60 KiB (and max_response_headers_kb likewise) → 431.
    max_head_bytes: int = 60 * 1024
    # Field lines per head. Envoy's HttpProtocolOptions.max_headers_count defaults to 100 → 431.
    max_headers: int = 100
    # One chunk-size line with its extensions. RFC 9112 §7.1.1: a server "ought to limit the
    # total length of chunk extensions received in a request to an amount reasonable for the
    # services provided"; nobody uses extensions, 4 KiB is generous. → 400.
    max_chunk_line: int = 4 * 1024
    # All chunk extensions of one message together: Node.js caps them at 16 KiB since
    # CVE-2024-22019 (tiny chunks with big extensions as a CPU/bandwidth DoS). → 400.
    max_chunk_extensions: int = 16 * 1024
