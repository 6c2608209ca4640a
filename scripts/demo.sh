#!/usr/bin/env bash
# make demo: see scripts/demo.py (a client pod calling a load-balanced service by VIP).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "demo: needs root (network namespaces, iptables, cgroups)" >&2; exit 1; }
exec .venv/bin/python scripts/demo.py
