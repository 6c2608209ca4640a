#!/usr/bin/env bash
# make demo: see scripts/demo.py (a client pod calling a load-balanced service by VIP);
# make demo DEMO=xds: see scripts/demo_xds.py (two nodes, one control plane, a service moving).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "demo: needs root (network namespaces, iptables, cgroups)" >&2; exit 1; }
case "${1:-}" in
  "") exec .venv/bin/python scripts/demo.py ;;
  xds) exec .venv/bin/python scripts/demo_xds.py ;;
  *) echo "demo: DEMO=$1: unknown; DEMO=xds or nothing" >&2; exit 2 ;;
esac
