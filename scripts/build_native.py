"""Compile the HTTP/1.1 path's hot modules with mypyc into build/native (``make setup``).

Only when the build is missing or older than its sources (``proxy.native`` compares the
manifest); says what it did. The build is made in a scratch directory and moved into place
whole, so a failed compile leaves no half build: the sidecar then runs the Python source, and
this script exits 1 naming the failure.

    .venv/bin/python scripts/build_native.py          # build if needed
    .venv/bin/python scripts/build_native.py --force  # build again
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxy import native  # noqa: E402


def up_to_date() -> bool:
    try:
        built = json.loads(native.MANIFEST.read_text())
    except (OSError, ValueError):
        return False
    return built == native.build_identity()


def compile_into(lib: Path, scratch: Path) -> None:
    """mypyc + setuptools' build_ext: the extension modules under ``lib``."""
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(REPO)  # mypy reads pyproject.toml's settings from here
    extensions = mypycify(
        list(native.COMPILED),
        opt_level="3",
        group_name=native.GROUP,
        target_dir=str(scratch / "c"),
        verbose=False,
    )
    os.chdir(scratch)  # not the repository: setuptools would read the project's own metadata
    setup(
        name="detour-native",
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(scratch / "temp"),
        ],
    )


def build() -> None:
    native.BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="native-", dir=native.BUILD_DIR.parent))
    try:
        lib = scratch / "lib"
        compile_into(lib, scratch)
        (lib / native.MANIFEST.name).write_text(json.dumps(native.build_identity(), indent=1))
        # Readable by the sidecar's uid (1337), whatever root's umask was.
        for path in [lib, *lib.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        old = native.BUILD_DIR.with_name("native.old")
        shutil.rmtree(old, ignore_errors=True)
        if native.BUILD_DIR.exists():
            native.BUILD_DIR.rename(old)
        lib.rename(native.BUILD_DIR)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args(argv)
    if not args.force and up_to_date():
        print("setup: compiled modules: build/native matches the sources")
        return 0
    started = time.monotonic()
    try:
        build()
    except (Exception, SystemExit) as exc:  # setup() raises SystemExit on a compiler error
        print(f"setup: error: mypyc did not compile the hot modules ({exc})", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    count = len(native.COMPILED)
    print(f"setup: compiled modules: {count} with mypyc into build/native ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
