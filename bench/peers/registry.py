"""Which launch each benchmark row gets: the one place that maps a row to a peer module."""

from __future__ import annotations

from bench.peers import Launch, VenvPaths, detour, envoy, haproxy, mitmproxy, pproxy
from bench.scenarios import Row


def launch_for(
    row: Row,
    venv: VenvPaths,
    detour_binary: str,
    mesh: dict[str, str],
    detour_extra: tuple[str, ...] = (),
    nofile: int = 20000,
) -> Launch:
    """The process for ``row``. ``mesh`` maps Detour's modes (mesh, http) to their mesh files."""
    if row.uid is None:
        raise ValueError(f"{row.name} runs no proxy")
    if row.peer == "detour":
        # The row's own arguments last: argparse lets the later flag win, and the row is named
        # after them (``detour-l4-c2`` stays two workers whatever --sidecar-arg says).
        extra = (*detour_extra, *row.proxy_args)
        return detour.launch(detour_binary, row.mode, extra, mesh.get(row.mode))
    if row.peer == "envoy":
        return envoy.launch(venv.envoy, row.mode, row.uid)
    if row.peer == "haproxy":
        return haproxy.launch(row.mode, row.uid, nofile)
    if row.peer == "pproxy":
        return pproxy.launch(venv.pproxy, row.uid)
    if row.peer == "mitmproxy":
        return mitmproxy.launch(venv.mitmdump, row.uid)
    raise ValueError(f"no launch for peer {row.peer!r}")
