"""Which build of the hot HTTP/1.1 modules runs: mypyc's compiled one, or the Python source.

``scripts/build_native.py`` (run by ``make setup``) compiles ``COMPILED`` with mypyc into
``build/native`` and writes a manifest of the sources it compiled (SHA-256 of each). At import,
``proxy.http`` puts that directory first on its package path only when every source still
matches its manifest entry, so an edited file can never run as a stale binary: any mismatch,
a missing build or ``DETOUR_PURE_PYTHON=1`` runs the Python source, which stays the reference
(the unit tests run on both). ``status()`` says which one this process runs and why; the
sidecar logs it at start.

Why compile at all: the codec parses and serialises two heads per proxied request, ~30% of
the sidecar's Python time on a keep-alive request (bench/README "Where the instructions go");
compiled, that work costs about half.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO / "build" / "native"
MANIFEST = BUILD_DIR / "manifest.json"
PURE_ENV = "DETOUR_PURE_PYTHON"
# Compiled together (one mypyc group: calls between them are C calls). Each must type-check
# under mypy --strict, which mypyc relies on (pyproject's mypy files include them). Left out on
# purpose: pipeline/kept_body.py (the codecs' bodies subclass it in Python; an interpreted
# subclass of a compiled class lost its flow-control acknowledgements), filters/http1_body.py
# (an async generator: not compilable), upstream/pool.py and cluster.py (tests replace a
# method on one object, which compiled callers bypass), stats.py (it trusts its callers'
# types; compiled, every call would check them).
COMPILED = (
    "proxy/http/codec.py",
    "proxy/http/headers.py",
    "proxy/http/events.py",
    "proxy/http/errors.py",
    "proxy/http/limits.py",
    "proxy/http/channel.py",
    "proxy/filters/http1_downstream.py",
    "proxy/filters/http1_upstream.py",
    "proxy/pipeline/exchange.py",
    "proxy/pipeline/forward.py",
    "proxy/pipeline/retries.py",
    "proxy/pipeline/respond.py",
    "proxy/pipeline/rewrite.py",
    "proxy/pipeline/router.py",
    "proxy/pipeline/local_reply.py",
    "proxy/pipeline/grpc.py",
    "proxy/telemetry.py",
    "proxy/series.py",
    "proxy/access_log.py",
    "proxy/upstream/hosts.py",
    "proxy/upstream/pool.py",
    "proxy/upstream/lb.py",
    "proxy/upstream/cluster.py",
    "proxy/upstream/connector.py",
)
GROUP = "proxy.http._compiled"  # the shared library's module: proxy/http/_compiled__mypyc.so


def source_digests(repo: Path = REPO) -> dict[str, str]:
    """SHA-256 of each compiled module's source, by its path in the repository."""
    return {path: hashlib.sha256((repo / path).read_bytes()).hexdigest() for path in COMPILED}


def build_identity() -> dict[str, object]:
    """What a build must have been made for besides the sources: this interpreter."""
    return {"python": sys.version, "sources": source_digests()}


def judge(built: object, expected: dict[str, object]) -> tuple[bool, str]:
    """Whether a build whose manifest says ``built`` may stand in for the sources that
    ``expected`` (``build_identity()``) describes, and the status to report either way."""
    if not isinstance(built, dict):
        return False, "pure Python (build/native has no valid manifest)"
    if built.get("python") != expected["python"]:
        return False, f"pure Python (build/native was compiled for Python {built.get('python')})"
    # Every module the build holds must be one compiled from today's source, and no more:
    # a module dropped from COMPILED must not run from an old binary either.
    current = expected["sources"]
    compiled = built.get("sources")
    assert isinstance(current, dict)
    if not isinstance(compiled, dict):
        compiled = {}
    stale = sorted(p for p in current.keys() | compiled.keys() if current.get(p) != compiled.get(p))
    if stale:
        return False, f"pure Python (build/native was compiled from other {', '.join(stale)})"
    return True, "compiled (mypyc, build/native)"


@functools.cache
def verdict() -> tuple[bool, str]:
    """``judge`` on this process's environment and files: checked once per process, by the
    first package that asks."""
    if os.environ.get(PURE_ENV) == "1":
        return False, f"pure Python ({PURE_ENV}=1)"
    try:
        built = json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        return False, "pure Python (no compiled build: make setup makes one)"
    except (OSError, ValueError) as exc:
        return False, f"pure Python ({MANIFEST} unreadable: {exc})"
    return judge(built, build_identity())


def adopt(package: str, path: list[str]) -> None:
    """Called by each package that has compiled modules, from its ``__init__``: its compiled
    directory goes first on its ``__path__`` when the build may run, so ``import`` finds the
    extension module before the source beside it."""
    if verdict()[0]:
        path.insert(0, str(BUILD_DIR.joinpath(*package.split("."))))


def status() -> str:
    """Which build this process runs: what the sidecar logs at start."""
    return verdict()[1]
