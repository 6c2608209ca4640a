"""Which launch each benchmark row gets: the one place that maps a row to a peer module."""

from __future__ import annotations

from bench.peers import Launch, VenvPaths, detour, envoy, haproxy, mitmproxy, pproxy
from bench.peers.mtls import MtlsPlan
from bench.scenarios import Row


def launch_for(
    row: Row,
    venv: VenvPaths,
    detour_binary: str,
    mesh: dict[str, str],
    detour_extra: tuple[str, ...] = (),
    nofile: int = 20000,
    mtls: MtlsPlan | None = None,
) -> Launch:
    """The process for ``row`` (for an mTLS row: its client side). ``mesh`` maps Detour's
    modes (mesh, http) to their mesh files; ``mtls`` is an mTLS row's plan."""
    if row.uid is None:
        raise ValueError(f"{row.name} runs no proxy")
    if row.mtls and mtls is None:
        raise ValueError(f"{row.name} is an mTLS pair: it needs its plan")
    if row.peer == "detour":
        # The row's own arguments last: argparse lets the later flag win, and the row is named
        # after them (``detour-l4-c2`` stays two workers whatever --sidecar-arg says).
        extra = (*detour_extra, *row.proxy_args)
        config = detour.render_mtls_client(mtls) if mtls is not None else mesh.get(row.mode)
        return detour.launch(detour_binary, row.mode, extra, config, row.env)
    if row.peer == "envoy":
        return envoy.launch(venv.envoy, row.mode, row.uid, mtls)
    if row.peer == "haproxy":
        return haproxy.launch(row.mode, row.uid, nofile)
    if row.peer == "pproxy":
        return pproxy.launch(venv.pproxy, row.uid)
    if row.peer == "mitmproxy":
        return mitmproxy.launch(venv.mitmdump, row.uid)
    raise ValueError(f"no launch for peer {row.peer!r}")


def server_launch_for(
    row: Row,
    venv: VenvPaths,
    detour_binary: str,
    mtls: MtlsPlan,
    detour_extra: tuple[str, ...] = (),
) -> Launch:
    """The server pod's proxy of an mTLS row: the same peer as the client side, terminating
    the mesh TLS on the inbound port, as ``row.server_uid``."""
    if not row.mtls or row.server_uid is None:
        raise ValueError(f"{row.name} has no server side")
    if row.peer == "detour":
        extra = (*detour_extra, *row.proxy_args)
        return detour.launch(detour_binary, "mtls-server", extra, detour.render_mtls_server(mtls))
    if row.peer == "envoy":
        return envoy.launch(venv.envoy, "mtls-server", row.server_uid, mtls)
    raise ValueError(f"no mTLS server side for peer {row.peer!r}")
