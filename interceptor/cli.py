"""``detour-ebpf``: eBPF interception of a cgroup's outbound TCP and DNS, without iptables.

    detour-ebpf attach   --cgroup PATH [init's outbound options] [--sockmap on|off]
    detour-ebpf detach   --cgroup PATH
    detour-ebpf status   [--cgroup PATH]
    detour-ebpf validate --cgroup PATH [--netns NAME] [init's outbound options] [--timeout 3]

PATH is a cgroup v2 directory, absolute or relative to the cgroup2 mount. The outbound options
(--proxy-uid, --exclude-outbound-ports, --exclude-outbound-cidrs, --capture-dns, ...) are
detour-init's, parsed and checked by the same code, and read from the same DETOUR_* variables.
Attaching again only rewrites the configuration. Exit codes: 0 done; 1 refused or failed (the
reason is printed); 2 bad input; 126 validate found that traffic is not redirected.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from init.config import ConfigError, parse_config
from interceptor import loader
from interceptor.errors import InterceptorError
from interceptor.settings import ALIASES, EBPF_OPTIONS, EbpfConfig

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_REDIRECTED = 126


def _parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("capture options (as detour-init's; also DETOUR_<NAME>)")
    for option in EBPF_OPTIONS:
        extra = {"nargs": "?", "const": "true", "metavar": "BOOL"} if option.is_switch else {}
        flags = [option.flag] + ([ALIASES[option.field]] if option.field in ALIASES else [])
        group.add_argument(
            *flags, dest=option.field, default=None, help=f"{option.help} [{option.env}]", **extra
        )
    parser = argparse.ArgumentParser(prog="detour-ebpf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    attach = sub.add_parser(
        "attach", parents=[options], help="load, attach and pin (again: update the config)"
    )
    attach.add_argument("--cgroup", required=True)
    attach.add_argument(
        "--sockmap",
        choices=("on", "off"),
        default="off",
        help="short-circuit the app <-> sidecar hop socket to socket (off: see README, a "
        "blocking recv() in the app can then fail with EAGAIN on this kernel)",
    )
    detach = sub.add_parser("detach", help="detach from a cgroup and remove every pin")
    detach.add_argument("--cgroup", required=True)
    status = sub.add_parser("status", help="list attachments, counters and map sizes")
    status.add_argument("--cgroup", help="only this cgroup's attachment")
    validate = sub.add_parser(
        "validate", parents=[options], help="prove a connection is redirected (exit 126 if not)"
    )
    validate.add_argument("--cgroup", required=True)
    validate.add_argument(
        "--netns", help="probe inside this network namespace (name in /run/netns, or a path)"
    )
    validate.add_argument("--timeout", type=float, default=3.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("attach", "validate"):
            flags = {option.field: getattr(args, option.field) for option in EBPF_OPTIONS}
            capture = parse_config(flags, os.environ)
        if args.command == "attach":
            config = EbpfConfig(
                capture,
                sockmap=args.sockmap == "on",
                ipv6_present=os.path.exists("/proc/net/if_inet6"),
            )
            pins, new = loader.attach(args.cgroup, config)
            what = "attached to" if new else "already attached: configuration updated for"
            print(f"{what} {args.cgroup}; pinned in {pins}")
        elif args.command == "detach":
            loader.detach(args.cgroup)
            print(f"detached from {args.cgroup}")
        elif args.command == "validate":
            from interceptor.validate import ValidationFailed, validate

            try:
                for line in validate(args.cgroup, capture, args.timeout, args.netns):
                    print(f"validated: {line}")
            except ValidationFailed as exc:
                print(f"detour-ebpf: validation failed: {exc}", file=sys.stderr)
                return EXIT_NOT_REDIRECTED
        else:
            return _status(args.cgroup)
    except ConfigError as exc:
        print(f"detour-ebpf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InterceptorError as exc:
        print(f"detour-ebpf: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _status(cgroup: str | None) -> int:
    attachments = loader.status()
    if cgroup is not None:
        _path, pins = loader.context(cgroup, must_exist=False)
        attachments = [item for item in attachments if item.pins == pins]
    if not attachments:
        print("no attachments")
    for item in attachments:
        programs = " ".join(
            f"{key}={'attached' if ok else 'MISSING'}" for key, ok in item.programs.items()
        )
        state = "ok" if item.healthy else "degraded"
        print(f"{item.cgroup} {state} pins={item.pins}")
        print(f"  programs: {programs}")
        print("  settings: " + " ".join(f"{k}={v}" for k, v in item.settings.items()))
        print("  counters: " + " ".join(f"{k}={v}" for k, v in item.counters.items()))
        print("  entries: " + " ".join(f"{k}={v}" for k, v in item.entries.items()))
    return 0 if all(item.healthy for item in attachments) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
