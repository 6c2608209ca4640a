"""``detour-ca``: make or bring the mesh root, and issue workload certificates.

    detour-ca init  --dir DIR [--trust-domain cluster.local] [--validity 3650d]
    detour-ca init  --dir DIR --trust-domain TD --root-cert F --ca-cert F --ca-key F
                    [--cert-chain F]          # an operator's root and signing intermediate
    detour-ca issue --dir DIR --namespace NS --service-account SA --out DIR
                    [--ttl 24h] [--owner 1337:1337]
    detour-ca show  --dir DIR

Exit codes: 0 done; 2 bad input (a message names the file or option and the value; nothing
is written).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca import authority as authorities
from ca import store
from detour_common import certs
from detour_common.certs import CertificateError
from detour_common.spiffe import SpiffeError

EXIT_USAGE = 2
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``3650d``."""
    found = _DURATION.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and s, m, h or d")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected UID or UID:GID")
    return int(uid), int(gid or uid)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detour-ca", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="make a root, or check and store an operator's")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--trust-domain", default="cluster.local")
    init.add_argument("--validity", type=duration, default=authorities.DEFAULT_ROOT_VALIDITY)
    init.add_argument("--root-cert", type=Path)
    init.add_argument("--ca-cert", type=Path, help="the certificate that signs workloads")
    init.add_argument("--ca-key", type=Path)
    init.add_argument("--cert-chain", type=Path, help="intermediates from ca-cert to the root")
    issue = commands.add_parser("issue", help="a workload certificate")
    issue.add_argument("--dir", type=Path, required=True, help="the CA's directory")
    issue.add_argument("--namespace", required=True)
    issue.add_argument("--service-account", required=True)
    issue.add_argument("--out", type=Path, required=True)
    issue.add_argument("--ttl", type=duration, default=authorities.DEFAULT_WORKLOAD_TTL)
    issue.add_argument("--owner", type=owner, help="UID[:GID] the files belong to (1337)")
    show = commands.add_parser("show", help="the CA's trust domain, root and validity")
    show.add_argument("--dir", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None, now: datetime | None = None) -> int:
    args = build_parser().parse_args(argv)
    now = now or datetime.now(UTC)
    try:
        if args.command == "init":
            return _init(args, now)
        if args.command == "issue":
            return _issue(args, now)
        return _show(args, now)
    except (CertificateError, SpiffeError, ValueError, OSError) as err:
        print(f"detour-ca: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _init(args: argparse.Namespace, now: datetime) -> int:
    brought = (args.root_cert, args.ca_cert, args.ca_key)
    if any(brought) and not all(brought):
        raise ValueError("--root-cert, --ca-cert and --ca-key go together")
    if all(brought):
        authority = authorities.brought_authority(
            args.trust_domain,
            _one_cert(args.root_cert),
            _one_cert(args.ca_cert),
            certs.load_private_key(_read(args.ca_key), str(args.ca_key)),
            tuple(certs.load_certificates(_read(args.cert_chain), str(args.cert_chain)))
            if args.cert_chain
            else (),
            now,
        )
    else:
        authority = authorities.create_root(args.trust_domain, now, args.validity)
    store.save_authority(args.dir, authority)
    print(f"detour-ca: CA for trust domain {authority.trust_domain} in {args.dir}")
    return 0


def _issue(args: argparse.Namespace, now: datetime) -> int:
    authority = store.load_authority(args.dir, now)
    issued = authorities.issue(authority, args.namespace, args.service_account, now, args.ttl)
    store.save_workload(args.out, issued, args.owner)
    identity = f"spiffe://{authority.trust_domain}/ns/{args.namespace}/sa/{args.service_account}"
    print(f"detour-ca: {identity} until {issued.not_after:%Y-%m-%dT%H:%M:%SZ} in {args.out}")
    return 0


def _show(args: argparse.Namespace, now: datetime) -> int:
    authority = store.load_authority(args.dir, now)
    root = authority.root
    print(f"trust domain: {authority.trust_domain}")
    print(f"root: {root.subject.rfc4514_string()}, until {certs.not_after(root):%Y-%m-%d}")
    print(f"signing: {authority.signing_cert.subject.rfc4514_string()}")
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertificateError(f"{path}: {err.strerror}") from None


def _one_cert(path: Path):  # type: ignore[no-untyped-def]
    return certs.load_certificates(_read(path), str(path))[0]
