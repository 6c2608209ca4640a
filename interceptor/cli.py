"""``detour-ebpf``: eBPF interception of a cgroup's outbound IPv4 TCP (first slice).

    detour-ebpf attach --cgroup PATH [--proxy-uid 1337] [--proxy-port 15001]
    detour-ebpf detach --cgroup PATH
    detour-ebpf status

PATH is a cgroup v2 directory, absolute or relative to the cgroup2 mount. Exit codes: 0 done,
1 refused or failed (the reason is printed), 2 usage error. Not yet covered: IPv6, UDP/DNS,
sockmap acceleration, inbound capture (see interceptor/README.md).
"""

from __future__ import annotations

import argparse
import sys

from interceptor import loader


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detour-ebpf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    attach = sub.add_parser("attach", help="load, attach to a cgroup and pin the programs")
    attach.add_argument("--cgroup", required=True)
    attach.add_argument("--proxy-uid", type=int, default=loader.PROXY_UID)
    attach.add_argument("--proxy-port", type=int, default=loader.PROXY_PORT)
    detach = sub.add_parser("detach", help="detach from a cgroup and remove the pins")
    detach.add_argument("--cgroup", required=True)
    sub.add_parser("status", help="list attachments and check them against the kernel")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "attach":
            pins = loader.attach(args.cgroup, proxy_uid=args.proxy_uid, proxy_port=args.proxy_port)
            print(f"attached to {args.cgroup}; pinned in {pins}")
        elif args.command == "detach":
            loader.detach(args.cgroup)
            print(f"detached from {args.cgroup}")
        else:
            attachments = loader.status()
            if not attachments:
                print("no attachments")
            for item in attachments:
                programs = " ".join(
                    f"{key}={'attached' if ok else 'MISSING'}" for key, ok in item.programs.items()
                )
                state = "ok" if item.healthy else "degraded"
                print(f"{item.cgroup} {state} {programs} pins={item.pins}")
            if not all(item.healthy for item in attachments):
                return 1
    except loader.InterceptorError as exc:
        print(f"detour-ebpf: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
