"""What both ends of a mesh mTLS row share, as data: who dials what, which certificates each
proxy presents, and which SPIFFE ID each must prove. The Detour and Envoy renderers turn one
``MtlsPlan`` into their configs, so both pairs run with the very same certificates (issued
once by ``detour-ca`` and copied to each proxy's own directory, readable by its uid only).

The identities are Istio's: ``spiffe://cluster.local/ns/default/sa/client`` calls
``spiffe://cluster.local/ns/default/sa/backend``; ECDSA P-256 leaves, Istio's file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
CLIENT_ACCOUNT = "client"
SERVER_ACCOUNT = "backend"
INBOUND_PORT = 15006  # where detour-init's inbound capture sends the server pod's connections
FILE_NAMES = ("cert-chain.pem", "key.pem", "root-cert.pem")
Inner = Literal["http", "tcp"]


def spiffe_id(account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{account}"


@dataclass(frozen=True)
class TlsFiles:
    """One proxy's copy of a workload identity (Istio's /etc/certs names)."""

    cert_chain: str
    private_key: str
    root_cert: str

    @classmethod
    def in_dir(cls, directory: Path | str) -> TlsFiles:
        chain, key, root = (str(Path(directory) / name) for name in FILE_NAMES)
        return cls(chain, key, root)

    def as_detour(self) -> dict[str, str]:
        """Detour's ``workload.tls`` section."""
        return {
            "cert_chain": self.cert_chain,
            "private_key": self.private_key,
            "root_cert": self.root_cert,
        }


@dataclass(frozen=True)
class MtlsPlan:
    """One mTLS row: the client dials ``vip:port``; its proxy sends it, over mutual TLS, to
    ``server_ip:port``, where the server pod's capture hands it to the server proxy, which
    forwards plaintext to the pod's own origin on ``127.0.0.1:port``."""

    inner: Inner  # what rides inside the TLS: HTTP/1.1 or opaque TCP
    vip: str
    server_ip: str
    port: int
    client_tls: TlsFiles
    server_tls: TlsFiles

    @property
    def client_id(self) -> str:
        return spiffe_id(CLIENT_ACCOUNT)

    @property
    def server_id(self) -> str:
        return spiffe_id(SERVER_ACCOUNT)

    @property
    def alpn(self) -> str:
        """Istio's token for what rides inside, as both Detour and Istio's Envoy offer it."""
        return "istio-http/1.1" if self.inner == "http" else "istio"
