"""mitmproxy 11.0.2 (the last release for Python 3.11) in ``--mode transparent``: it reads the
original destination with SO_ORIGINAL_DST and parses HTTP/1.1 both ways, so it is an L7 row.
``mitmdump`` (no UI), one line per flow to its log like an access log, its CA and state in the
peer's own work directory (it writes a CA on first start).
"""

from __future__ import annotations

from bench.peers import OUTBOUND_PORT, Launch


def options(confdir: str) -> list[str]:
    """mitmdump's ``--set`` options as ``name=value`` strings."""
    return [
        f"confdir={confdir}",
        "flow_detail=1",  # one line per flow: the access log
        "termlog_verbosity=warn",
        "connection_strategy=eager",  # connect upstream at accept, as the others do
    ]


def launch(binary: str, uid: int) -> Launch:
    argv = [binary, "--mode", "transparent", "--listen-port", str(OUTBOUND_PORT)]
    for option in options("{workdir}/mitmproxy"):
        argv += ["--set", option]
    return Launch(argv=tuple(argv), uid=uid)
