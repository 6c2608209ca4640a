"""``detour-ebpf``: eBPF interception. Not yet implemented: it exits 2 until its issue lands."""

import sys


def main() -> int:
    print("detour-ebpf: not yet implemented (eBPF interception is a later issue)", file=sys.stderr)
    return 2
