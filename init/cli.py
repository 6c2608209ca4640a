"""``detour-init``: render, apply, cleanup, show and validate interception in this namespace.

Exit codes: 0 done; 1 failed or interrupted (and rolled back), or another detour-init kept
the namespace busy past ``--wait`` (nothing touched); 2 bad input or missing privilege,
nothing touched; 126 validate found that traffic is not redirected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from detour_common.conventions import TPROXY_MARK, TPROXY_ROUTE_TABLE
from init import logs
from init.backend import (
    KINDS,
    BackendConflict,
    BackendError,
    IptablesBackend,
    choose,
    default_kind,
    inspect,
)
from init.config import OPTIONS, CaptureConfig, ConfigError, parse_config
from init.host import PrivilegeError, ipv6_available, ipv6_disabled, require_net_admin
from init.install import ApplyError, Installer
from init.interrupts import deferred_termination
from init.lock import DEFAULT_WAIT, LockTimeout, NamespaceLock
from init.render import render_plan
from init.routing import PolicyRouting
from init.rules import build_rules
from init.state import detour_view, parse_save
from init.validate import NoRoute, NothingCaptured, ValidationFailed, choose_probe, run_probe

log = logging.getLogger("detour.init")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_REDIRECTED = 126

COMMANDS = {
    "render": "print the iptables-restore text and routes that apply would install (dry run)",
    "apply": "install interception (idempotent; replaces a different earlier config)",
    "cleanup": "remove every chain, jump, rule and route Detour added, nothing else",
    "show": "print what Detour has installed now",
    "validate": "prove end to end that outbound connections are redirected (exit 126 if not)",
}
CHANGING = ("apply", "cleanup")  # the commands that take the namespace's lock


def build_parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("interception options (each also read from DETOUR_<NAME>)")
    for option in OPTIONS:
        extra = {"nargs": "?", "const": "true", "metavar": "BOOL"} if option.is_switch else {}
        group.add_argument(
            option.flag,
            dest=option.field,
            default=None,
            help=f"{option.help} [{option.env}]",
            **extra,
        )
    parser = argparse.ArgumentParser(prog="detour-init", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, parents=[options], help=text, description=text)
        if name == "validate":
            sub.add_argument(
                "--timeout",
                type=float,
                default=3.0,
                help="seconds to wait for the redirected connection (3)",
            )
        if name in CHANGING:
            sub.add_argument(
                "--wait",
                type=_seconds,
                default=DEFAULT_WAIT,
                metavar="SECONDS",
                help="how long to wait for another detour-init changing this network "
                f"namespace to finish ({DEFAULT_WAIT:g})",
            )
    return parser


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r}: expected seconds from 0 to 3600")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = parse_config(vars(args), os.environ)
    except ConfigError as err:
        print(f"detour-init: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_format)
    try:
        return _run(args, config)
    except (ConfigError, PrivilegeError, BackendConflict) as err:
        log.error("%s (nothing was changed)", err)
        return EXIT_USAGE
    except LockTimeout as err:
        log.error("%s (nothing was changed)", err)
        return EXIT_FAILED
    except (ApplyError, BackendError) as err:
        log.error("%s", err)
        return EXIT_FAILED


def _run(args: argparse.Namespace, config: CaptureConfig) -> int:
    if args.command == "render":
        sys.stdout.write(render_plan([build_rules(config, f) for f in _enabled(config)]))
        return 0
    if args.command == "validate":
        return _validate(config, args.timeout)
    require_net_admin(args.command)
    present = (4, 6) if ipv6_available() else (4,)
    if args.command == "show":
        return _show(IptablesBackend(_choose_backend(config, present)), present)
    with NamespaceLock(args.wait, on_wait=_say_waiting):  # before reading what is installed
        return _change(args.command, config, present)


def _say_waiting(pid: int | None) -> None:
    who = f"pid {pid}" if pid else "another one"
    log.info("waiting for the detour-init changing this network namespace (%s)", who)


def _say_late(signal_name: str) -> None:
    log.warning("%s arrived once the change was complete: the namespace keeps it", signal_name)


def _change(command: str, config: CaptureConfig, present: tuple[int, ...]) -> int:
    """``apply`` or ``cleanup``, with the namespace's lock held."""
    kind = _choose_backend(config, present)
    backend = IptablesBackend(kind)
    wanted = {}
    if command == "apply":
        wanted = {family: build_rules(config, family) for family in _enabled(config)}
    with deferred_termination(on_late=_say_late) as pending, PolicyRouting() as routing:
        installer = Installer(backend, routing, present, _cross_check(kind), interrupted=pending)
        changed = installer.converge(wanted)
    what = "installed" if command == "apply" else "removed"
    if changed:
        log.info(
            "interception %s (backend %s, IPv%s)",
            what,
            kind,
            "/".join(map(str, sorted(wanted) or present)),
        )
    else:
        log.info("nothing to change: the namespace already has the %s state", what)
    return 0


def _enabled(config: CaptureConfig) -> tuple[int, ...]:
    if config.ipv6 == "off":
        return (4,)
    if not ipv6_available():
        missing = "has no IPv6 stack"
    elif ipv6_disabled():
        missing = "has IPv6 disabled (net.ipv6.conf.lo.disable_ipv6=1)"
    else:
        return (4, 6)
    if config.ipv6 == "on":
        raise ConfigError("--ipv6", "on", f"this network namespace {missing}")
    log.info("this namespace %s: capturing IPv4 only", missing)
    return (4,)


def _choose_backend(config: CaptureConfig, present: tuple[int, ...]) -> str:
    reports = {kind: inspect(kind, present) for kind in KINDS}
    choice = choose(config.backend, reports, default_kind())
    log.info("iptables backend: %s (%s)", choice.kind, choice.reason)
    return choice.kind


def _cross_check(kind: str):
    if kind != "legacy":
        return None
    from init.legacy_reader import cross_check

    return cross_check


def _show(backend: IptablesBackend, present: tuple[int, ...]) -> int:
    print(f"# backend: {backend.kind}")
    for family in present:
        view = detour_view(parse_save(backend.save(family)))
        print(f"# ==== IPv{family} ====")
        if view.is_empty:
            print("# (no Detour rules)")
        for table, tv in sorted(view.tables.items()):
            print(f"*{table}")
            for chain in sorted(tv.chains):
                print(f":{chain} - [0:0]")
            for chain, specs in tv.rules.items():
                for rule_spec in specs:
                    print(f"-A {chain} {rule_spec}")
            print("COMMIT")
        if backend.kind == "legacy" and not view.is_empty:
            from init.legacy_reader import read_detour_rules

            print(f"# IPv{family} packet counters (python-iptables):")
            for count in read_detour_rules(family, tuple(sorted(view.tables))):
                print(
                    f"#   {count.table}/{count.chain} -> {count.target}: "
                    f"{count.packets} packets, {count.bytes} bytes"
                )
    with PolicyRouting() as routing:
        for route in sorted(
            routing.installed(present, TPROXY_MARK, TPROXY_ROUTE_TABLE), key=lambda r: r.family
        ):
            print("# route: " + "; ".join(route.describe()).replace(" add ", " "))
    return 0


def _validate(config: CaptureConfig, timeout: float) -> int:
    try:
        for family in _enabled(config):
            try:
                log.info("validated: %s", run_probe(config, choose_probe(config, family), timeout))
            except NoRoute as err:
                if family == 4 or config.ipv6 == "on":
                    raise
                log.warning("IPv6 not validated: %s (the namespace has no IPv6 route)", err)
            except NothingCaptured as err:
                if family == 4:
                    raise
                log.info("IPv6 not validated: %s", err)
    except ValidationFailed as err:
        log.error("validation failed: %s", err)
        return EXIT_NOT_REDIRECTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
