"""The proxies under test, each described as data: how to start it, as which uid, with which
config file. A peer's config is rendered by a pure function of its module (unit-tested); the
harness writes it to a file and starts the argv, so nothing here touches the machine.

Every peer listens on 15001, where detour-init's REDIRECT rule sends a pod's outbound
connections, and runs as its own non-root uid that the same rule excludes, exactly as Detour
runs as 1337.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OUTBOUND_PORT = 15001


@dataclass(frozen=True)
class Launch:
    """One peer process, ready to be started in a pod.

    ``config`` is written to ``config_name`` in the peer's own work directory before the start;
    ``{workdir}`` in ``argv`` is replaced by that directory (owned by ``uid``, so a peer that
    writes state — mitmproxy's CA — can).
    """

    argv: tuple[str, ...]
    uid: int
    config: str | None = None
    config_name: str = "config"
    env: tuple[tuple[str, str], ...] = ()

    def resolved_argv(self, workdir: Path) -> list[str]:
        return [arg.replace("{workdir}", str(workdir)) for arg in self.argv]


@dataclass(frozen=True)
class VenvPaths:
    """Where the benchmark environment (``build/bench-venv``) keeps the peers' programs."""

    root: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def envoy(self) -> str:
        return str(self.root / "lib" / "python3.11" / "site-packages" / "envoy" / "_bin" / "envoy")

    @property
    def mitmdump(self) -> str:
        return str(self.root / "bin" / "mitmdump")

    @property
    def pproxy(self) -> str:
        return str(self.root / "bin" / "pproxy")
