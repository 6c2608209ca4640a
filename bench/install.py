"""Install the benchmark's peers and tools, idempotently and quietly when nothing is missing:

- Debian packages (only those missing): haproxy, nghttp2-client (h2load), wrk, nginx-light,
  valgrind (callgrind, for bench/guard.py);
- build/bench-venv: a venv of Debian's /usr/bin/python3 with requirements-peers.txt (Envoy,
  pproxy, mitmproxy, matplotlib), reinstalled only when that file changes.

Runs with the stdlib only (``/usr/bin/python3 bench/install.py``), before the product's venv
matters. Prints one line per thing it did, and nothing else but errors.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "build" / "bench-venv"
REQUIREMENTS = REPO / "bench" / "requirements-peers.txt"
DEBIAN = ("haproxy", "nghttp2-client", "wrk", "nginx-light", "util-linux", "curl", "valgrind")
STAMP = VENV / ".bench-requirements.sha256"


def missing_debian(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        if "install ok installed" not in done.stdout:
            missing.append(package)
    return missing


def ensure_debian() -> None:
    missing = missing_debian(DEBIAN)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench install: Debian packages missing ({' '.join(missing)}); run as root")
    print(f"bench install: apt-get install {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def ensure_venv() -> None:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    if not (VENV / "bin" / "python").exists():
        print(f"bench install: creating {VENV.relative_to(REPO)}", flush=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
    print(f"bench install: pip install -r {REQUIREMENTS.relative_to(REPO)}", flush=True)
    done = subprocess.run(
        [
            str(VENV / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"bench install: pip failed:\n{done.stdout}{done.stderr}")
    STAMP.write_text(digest + "\n")


def main() -> int:
    ensure_debian()
    ensure_venv()
    return 0


if __name__ == "__main__":
    sys.exit(main())
