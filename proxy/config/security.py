"""The security sections of the mesh file: the workload's certificate files, its
PeerAuthentication, the service account it runs as, the mesh's trust domain, and which
endpoints are meshed (a sidecar runs beside them as a service account).

    mesh:     {trust_domain: cluster.local}
    workload:
      service_account: client
      tls: {}                                  # Istio's /etc/certs names, or:
      # tls: {cert_chain: ..., private_key: ..., root_cert: ...}
      peer_authentication: {mode: STRICT, port_modes: {9090: PERMISSIVE}}
    services:
      - endpoints: [{address: 10.0.0.11, service_account: backend}]   # meshed: mTLS

Names follow Istio (PeerAuthentication modes, ``tlsMode: istio`` endpoints become endpoints
with a ``service_account``); a service account or trust domain that could not be part of a
SPIFFE ID is refused here, not when the first connection needs it.
"""

from __future__ import annotations

from typing import Any

from detour_common.spiffe import SpiffeError, check_trust_domain
from detour_common.spiffe import SpiffeId as _SpiffeId
from proxy.config import parsing as p
from proxy.config.model import PeerAuthentication, WorkloadTls

PEER_AUTHENTICATION_MODES = ("PERMISSIVE", "STRICT", "DISABLE")


def trust_domain(node: object, path: str) -> str:
    text = p.string(node, path)
    try:
        return check_trust_domain(text)
    except SpiffeError as err:
        p.refuse(path, node, str(err))


def service_account(node: object, path: str) -> str:
    """A Kubernetes name, as the SPIFFE ID's last segment must be."""
    text = p.string(node, path)
    try:
        _SpiffeId("cluster.local", "default", text)
    except SpiffeError:
        p.refuse(path, node, "not a Kubernetes service account name (RFC 1123)")
    return text


def _path(node: object, path: str) -> str:
    text = p.string(node, path)
    if not text.startswith("/"):
        p.refuse(path, node, "expected an absolute path")
    return text


_TLS_FIELDS: dict[str, p.Parser] = {
    "cert_chain": _path,
    "private_key": _path,
    "root_cert": _path,
}


def workload_tls(node: object, path: str) -> WorkloadTls | None:
    """``tls: {}`` takes Istio's /etc/certs names; absent or null: no certificate."""
    if node is None:
        return None
    return WorkloadTls(**p.fields(node, path, _TLS_FIELDS))


def _port_modes(node: object, path: str) -> tuple[tuple[int, Any], ...]:
    if node is not None and not isinstance(node, dict):
        p.refuse(path, node, "expected a mapping of port numbers to modes")
    modes = []
    for key, value in (node or {}).items():
        where = p.at(path, key)
        port = p.integer(key, where, 1, 65535)
        modes.append((port, p.choice(PEER_AUTHENTICATION_MODES)(value, where)))
    return tuple(sorted(modes))


_PEER_AUTHENTICATION_FIELDS: dict[str, p.Parser] = {
    "mode": p.choice(PEER_AUTHENTICATION_MODES),
    "port_modes": _port_modes,
}


def peer_authentication(node: object, path: str) -> PeerAuthentication:
    return PeerAuthentication(**p.fields(node, path, _PEER_AUTHENTICATION_FIELDS))
