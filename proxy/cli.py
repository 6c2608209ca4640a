"""``detour-proxy``: the sidecar. Not yet implemented: it exits 2 until its issue lands."""

import sys


def main() -> int:
    print("detour-proxy: not yet implemented (the sidecar core is the next issue)", file=sys.stderr)
    return 2
