"""SPIFFE IDs as Istio writes them: ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``.

A workload's identity is the one URI SAN of its certificate. The CA writes it, the sidecar
reads it from the peer's certificate and authorization policies match on it (Istio calls it
the principal, written without the scheme: ``cluster.local/ns/default/sa/client``), so it is
parsed and validated here once, for all of them. The rules are SPIFFE's (the trust domain is
a lowercase DNS-like name; path segments are non-empty) narrowed to Istio's form, the only one
Detour issues and accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")
# Kubernetes names (RFC 1123 labels, up to 253 characters for service accounts).
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


class SpiffeError(ValueError):
    """A SPIFFE ID or one of its parts is not valid; the message names the value."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        for what, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _NAME.match(value):
                raise SpiffeError(f"{what} {value!r} is not a Kubernetes name (RFC 1123)")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.principal}"

    @property
    def principal(self) -> str:
        """Istio's principal: the ID without its scheme, as policies and metrics write it."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


def check_trust_domain(value: str) -> str:
    if not _TRUST_DOMAIN.match(value):
        raise SpiffeError(f"trust domain {value!r} is not a lowercase DNS-like name")
    return value


def parse(uri: str) -> SpiffeId:
    """``spiffe://td/ns/NS/sa/SA`` -> SpiffeId; SpiffeError naming the value otherwise."""
    if not uri.startswith(SCHEME):
        raise SpiffeError(f"{uri!r} is not a SPIFFE ID (spiffe://<trust domain>/ns/../sa/..)")
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise SpiffeError(f"{uri!r} is not of the form spiffe://<trust domain>/ns/<ns>/sa/<sa>")
    try:
        return SpiffeId(parts[0], parts[2], parts[4])
    except SpiffeError as err:
        raise SpiffeError(f"{uri!r}: {err}") from None
