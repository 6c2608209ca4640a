"""pproxy, a pure-asyncio Python proxy, in its ``redir://`` mode: it reads SO_ORIGINAL_DST and
relays bytes to that address (no remote, ``-r`` absent, means "direct"). Configured entirely by
its command line, so there is no file to render.
"""

from __future__ import annotations

from bench.peers import OUTBOUND_PORT, Launch


def listen_uri() -> str:
    return f"redir://0.0.0.0:{OUTBOUND_PORT}"


def launch(binary: str, uid: int) -> Launch:
    return Launch(argv=(binary, "-l", listen_uri()), uid=uid)
