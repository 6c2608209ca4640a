"""The identity a worker uses for new connections, reloaded when its files change.

Certificates are short-lived (24 h by default) and renewed in place, so the files are looked
at every ``interval`` seconds (their size, mtime and inode: a renewal by rename changes the
inode, an in-place rewrite the mtime). A change is loaded and checked whole; a good one is
used by new connections at once and connections already open keep theirs (TLS does not
re-key a session with a new certificate), so none is dropped. A bad one is refused, said once
per distinct reason, counted, and the identity in use stays. The time left is exported as a
gauge, and a certificate in the last 20% of its lifetime is said once (a renewal is due).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from detour_common.certs import CertificateError
from proxy.series import Stats
from proxy.stats import Counter, Gauge
from proxy.tls.identity import TlsFiles, WorkloadIdentity, load_identity

log = logging.getLogger("detour.proxy")

CERT_EXPIRY = Gauge(
    "istio_agent_cert_expiry_seconds",
    "Seconds until the workload certificate expires",
    across_workers="min",
)
CERT_RELOADED = Counter("workload_cert_reload_total", "Workload certificate changes applied")
CERT_REJECTED = Counter(
    "workload_cert_reload_rejected", "Workload certificate changes refused (the old one stayed)"
)

Signature = tuple[tuple[int, int, int] | None, ...]


def utc_now() -> datetime:
    return datetime.now(UTC)


class IdentitySource:
    def __init__(
        self,
        files: TlsFiles,
        trust_domain: str,
        stats: Stats,
        clock: Callable[[], datetime] = utc_now,
        interval: float = 1.0,
    ) -> None:
        self.files = files
        self.trust_domain = trust_domain
        self.stats = stats
        self.clock = clock
        self.interval = interval
        self.current: WorkloadIdentity | None = None
        self._signature: Signature = ()
        self._last_error = ""
        self._warned_serial: int | None = None

    def load(self) -> WorkloadIdentity:
        """The first load: CertificateError (naming the file) when it is unusable."""
        self._signature = self._stat()
        self.current = load_identity(self.files, self.trust_domain, self.clock())
        self.publish()
        return self.current

    def check(self) -> bool:
        """Load the files again if they changed; True when a new identity is in use."""
        signature = self._stat()
        if signature == self._signature:
            return False
        try:
            identity = load_identity(self.files, self.trust_domain, self.clock())
        except CertificateError as err:
            self.stats.inc(CERT_REJECTED)
            if str(err) != self._last_error:
                self._last_error = str(err)
                log.error("workload certificate not reloaded (the old one stays): %s", err)
            return False  # looked at again next time: a renewal may be half written
        self._signature, self._last_error = signature, ""
        self.current = identity
        self.stats.inc(CERT_RELOADED)
        log.info("workload certificate reloaded: %s until %s", identity.spiffe, identity.not_after)
        self.publish()
        return True

    def publish(self) -> None:
        identity = self.current
        if identity is None:
            return
        now = self.clock()
        self.stats.gauge_set(CERT_EXPIRY, (), int(identity.remaining(now)))
        if identity.nearly_expired(now) and self._warned_serial != identity.serial:
            self._warned_serial = identity.serial
            log.warning(
                "workload certificate %s expires at %s (less than 20%% of its lifetime left)",
                identity.spiffe,
                identity.not_after,
            )

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
            self.publish()

    def _stat(self) -> Signature:
        def one(path: os.PathLike[str]) -> tuple[int, int, int] | None:
            try:
                info = os.stat(path)
            except OSError:
                return None
            return (info.st_ino, info.st_size, info.st_mtime_ns)

        files = self.files
        return (one(files.cert_chain), one(files.private_key), one(files.root_cert))
