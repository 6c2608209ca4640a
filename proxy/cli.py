"""``detour-proxy``: the sidecar.

With no ``--config`` it is a working sidecar with no services: every intercepted connection
passes through to its original destination (ALLOW_ANY) and is counted. Exit codes: 0 after a
drain, 2 for bad input (a bad config file, a port in use, a uid that cannot be taken).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from detour_common.capabilities import CAP_NET_ADMIN, has_capability
from detour_common.certs import CertificateError
from proxy import native
from proxy.config.loader import MeshConfigError, load_mesh
from proxy.config.model import Mesh
from proxy.downstream_limits import DEFAULT_REQUEST_HEADERS_TIMEOUT, DownstreamLimits
from proxy.logs import setup_logging
from proxy.platform.allocator import use as use_allocator
from proxy.sidecar import Options, Sidecar, bind_listeners, drop_privileges
from proxy.tls.identity import TlsFiles, load_identity

log = logging.getLogger("detour.proxy")
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detour-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="mesh YAML file (watched; reloaded on change)")
    parser.add_argument(
        "--bootstrap",
        type=Path,
        help="Envoy-style bootstrap (node, ADS server): the mesh comes from that control plane",
    )
    parser.add_argument(
        "--xds-cache",
        type=Path,
        help="keep the last applied xDS snapshot in this file; start from it when the control "
        "plane cannot be reached",
    )
    parser.add_argument("--outbound-port", type=int, default=15001)
    parser.add_argument("--inbound-port", type=int, default=15006)
    parser.add_argument("--admin-port", type=int, default=15000, help="admin, on 127.0.0.1 only")
    parser.add_argument("--stats-port", type=int, default=15020)
    parser.add_argument("--ready-port", type=int, default=15021)
    parser.add_argument(
        "--inbound-mode",
        choices=("REDIRECT", "TPROXY"),
        default="REDIRECT",
        help="TPROXY needs CAP_NET_ADMIN for IP_TRANSPARENT",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let open connections finish after SIGTERM",
    )
    parser.add_argument("--access-log", choices=("text", "json", "off"), default="text")
    parser.add_argument(
        "--run-as",
        metavar="UID[:GID]",
        help="bind as root, then drop to this uid (and gid, default = uid)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--dns-port", type=int, default=15053, help="DNS proxy port on 127.0.0.1 and ::1 (0 = off)"
    )
    parser.add_argument(
        "--resolv-conf",
        type=Path,
        default=Path("/etc/resolv.conf"),
        help="the pod's resolvers, for names outside the mesh",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="downstream connections the sidecar holds at once, split over its workers; more "
        "are closed at accept and counted in downstream_cx_overflow (0: as many as the "
        "descriptor limit serves)",
    )
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        default=0,
        help="resident memory (MiB) of the sidecar's workers, split evenly over them: a worker "
        "that reaches its share takes no connection beyond those it holds then (the excess is "
        "closed at accept and counted in downstream_cx_overload_reject) until its memory is "
        "below 95%% of it (0: no limit)",
    )
    parser.add_argument(
        "--request-headers-timeout",
        type=float,
        default=DEFAULT_REQUEST_HEADERS_TIMEOUT,
        help="seconds from a request head's first byte to its last before a 408 (HTTP/1.1) or "
        "GOAWAY (an HTTP/2 header block; 0 = none)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes sharing the listeners (default: cores)",
    )
    parser.add_argument(
        "--allocator",
        default="python",
        help="python (default, fastest: memory a burst of connections used stays with the "
        "process for the next one) or jemalloc (libjemalloc2: it is given back to the system "
        "within seconds, for ~4%% more CPU per request)",
    )
    return parser


def _run_as(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    uid_text, _, gid_text = value.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise ValueError(f"--run-as={value!r}: expected a numeric UID or UID:GID")
    return int(uid_text), int(gid_text or uid_text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    try:
        use_allocator(args.allocator, may_exec=argv is None)
        if args.allocator != "python":
            log.info(
                "allocator: %s (memory unused for a second goes back to the system)", args.allocator
            )
        run_as = _run_as(args.run_as)
        limits = DownstreamLimits(
            args.max_connections, args.request_headers_timeout, args.memory_limit_mib
        )
        mesh = load_mesh(args.config) if args.config else Mesh()
        bootstrap = _bootstrap(args.bootstrap)
    except (ValueError, MeshConfigError, OSError) as err:
        log.error("%s", err)
        return EXIT_USAGE
    if args.xds_cache is not None and bootstrap is None:
        log.error(
            "--xds-cache=%s: it keeps a control plane's config; give --bootstrap", args.xds_cache
        )
        return EXIT_USAGE
    if bootstrap is not None and not args.config:
        mesh = _mesh_of_node(bootstrap, mesh)
    options = Options(
        config=args.config,
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        admin_port=args.admin_port,
        stats_port=args.stats_port,
        ready_port=args.ready_port,
        inbound_mode=args.inbound_mode,
        drain_timeout=args.drain_timeout,
        access_log=args.access_log,
        run_as=run_as,
        concurrency=args.concurrency,
        log_format=args.log_format,
        dns_port=args.dns_port,
        resolv_conf=args.resolv_conf,
        xds_cache=args.xds_cache,
        limits=limits,
    )
    if not 1 <= options.concurrency <= 64:
        log.error("--concurrency=%d: expected 1 to 64 workers", options.concurrency)
        return EXIT_USAGE
    try:
        listener_sets = [bind_listeners(options) for _ in range(options.concurrency)]
    except OSError as err:
        log.error("cannot bind the listeners: %s", err)
        return EXIT_USAGE
    if run_as is not None:
        try:
            drop_privileges(*run_as)
        except OSError as err:
            log.error("--run-as %d:%d: %s", *run_as, err)
            return EXIT_USAGE
    if options.inbound_mode == "TPROXY" and not has_capability(CAP_NET_ADMIN):
        log.error(
            "--inbound-mode TPROXY connects to the app from each client's own address, which "
            "needs CAP_NET_ADMIN for the life of the process: run as uid 1337 with the "
            "capability (e.g. setpriv --ambient-caps +net_admin, or a Kubernetes "
            "securityContext adding NET_ADMIN) rather than --run-as"
        )
        return EXIT_USAGE
    if bootstrap is not None and bootstrap.tls is not None:
        try:  # read as the uid that will read it again at each reconnection
            bootstrap.tls.load()
        except ValueError as err:
            log.error("%s: %s", bootstrap.source, err)
            return EXIT_USAGE
    tls = mesh.workload.tls
    if tls is not None:  # checked now, as the uid that will read it: a clear error, exit 2
        files = TlsFiles(Path(tls.cert_chain), Path(tls.private_key), Path(tls.root_cert))
        try:
            identity = load_identity(files, mesh.trust_domain, datetime.now(UTC))
        except CertificateError as err:
            log.error("workload.tls: %s", err)
            return EXIT_USAGE
        log.info("workload identity %s until %s", identity.spiffe, identity.not_after)
    log.info("running as uid %d", os.getuid())
    log.info("HTTP/1.1 path: %s", native.status())
    import uvloop

    return uvloop.run(Sidecar(options, mesh, bootstrap).run(listener_sets))


def _bootstrap(path: Path | None):
    """The bootstrap file, parsed (grpc and the Envoy API load only when one is given)."""
    if path is None:
        return None
    from proxy.xds.bootstrap import load_bootstrap

    return load_bootstrap(path)


def _mesh_of_node(bootstrap, mesh: Mesh) -> Mesh:
    """Without a mesh file, an Istio node id names the workload and the cluster domain."""
    import dataclasses

    node = bootstrap.istio_node
    if node is None:
        return mesh
    workload = dataclasses.replace(mesh.workload, name=node.pod, namespace=node.namespace)
    return dataclasses.replace(mesh, workload=workload, cluster_domain=node.cluster_domain)


if __name__ == "__main__":
    sys.exit(main())
