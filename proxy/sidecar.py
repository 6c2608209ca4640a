"""The sidecar process: listeners, the workers, admin/metrics/readiness, config reload, drain.

Lifecycle: bind every listener (as root when ``--run-as`` asks to drop privileges after
binding), start the workers and the admin ports, watch the config file, and report ready. On
SIGTERM (or POST /quitquitquit): not ready at once, stop accepting, let open connections finish
up to the drain timeout, exit 0.

With one worker its data path runs in this process's event loop; with more, each is a process
of its own (``workers.py`` says why, and what a crash means in each case). Either way the
supervisor drives them through ``WorkerHandle`` and nothing else here depends on which.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import json
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.access_log import AccessLog
from proxy.admin.clusters import merge_rows, render_rows
from proxy.admin.http import AdminServer, Request, Response, Route, serve, text
from proxy.admin.prometheus import render
from proxy.config.loader import MeshConfigError, load_mesh
from proxy.config.model import Mesh
from proxy.dns.resolvconf import ResolvConf, read_resolv_conf
from proxy.dns.server import DnsProxy, serve_dns
from proxy.downstream_limits import DownstreamLimits
from proxy.platform.heap import freeze_startup_objects
from proxy.platform.sockets import listening_socket
from proxy.routing import SIDECAR_PORTS
from proxy.series import Stats
from proxy.stats import Counter, Gauge, Merged, merge
from proxy.worker import OUTBOUND, ListenSpec, WorkerReport
from proxy.workers import InProcessWorker, WorkerHandle, WorkerProcess, listener_info

if TYPE_CHECKING:  # imported at run time only with --bootstrap (grpc is ~15 MiB resident)
    from proxy.xds.bootstrap import Bootstrap
    from proxy.xds.client import AdsClient

log = logging.getLogger("detour.proxy")

CONFIG_POLL_INTERVAL = 0.25
WORKER_CHECK_INTERVAL = 0.2
# Envoy's initial_fetch_timeout: with a control plane, ready once its first config is applied,
# or after this long without one (serving the mesh file's config meanwhile).
XDS_INITIAL_FETCH_TIMEOUT = 15.0

# The supervisor's own metrics, reported at each scrape from the counts it keeps (_snapshot).
CONFIG_RELOAD_TOTAL = Counter("config_reload_total", "Mesh config versions applied")
CONFIG_RELOAD_REJECTED = Counter(
    "config_reload_rejected", "Mesh config versions refused (the running config stayed)"
)
WORKER_RESTARTS_TOTAL = Counter(
    "worker_restarts_total", "Worker processes started again after one exited"
)
WORKERS_ALIVE = Gauge("workers_alive", "Worker processes running")


@dataclass(frozen=True)
class Options:
    config: Path | None = None
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int = 15000
    stats_port: int = 15020
    ready_port: int = 15021
    inbound_mode: str = "REDIRECT"
    drain_timeout: float = 30.0
    access_log: str = "text"
    run_as: tuple[int, int] | None = None
    ipv6: bool = True
    concurrency: int = 1
    log_format: str = "text"
    dns_port: int = 15053  # 0 = no DNS proxy
    resolv_conf: Path = Path("/etc/resolv.conf")
    xds_cache: Path | None = None  # the last applied xDS snapshot, for a start without it
    limits: DownstreamLimits = field(default_factory=DownstreamLimits)

    def own_ports(self) -> frozenset[int]:
        """Every port the sidecar listens on, with the default ones: none is ever a destination
        on a local address, whether a client or a mesh endpoint names it."""
        ports = {self.outbound_port, self.inbound_port, self.admin_port, self.stats_port}
        ports |= {self.ready_port, self.dns_port}
        return SIDECAR_PORTS | (ports - {0})


def bind_listeners(options: Options) -> list[tuple[ListenSpec, str]]:
    """One set of listeners (IPv4, and IPv6 when the namespace has it) for one worker.

    Every socket has SO_REUSEPORT: each worker gets its own set and the kernel spreads new
    connections over them.
    """
    tproxy = options.inbound_mode == "TPROXY"
    families = [("0.0.0.0", "inbound4")]
    if options.ipv6 and Path("/proc/net/if_inet6").exists():
        families.append(("::", "inbound6"))
    specs = []
    for host, inbound_kind in families:
        outbound = listening_socket(host, options.outbound_port, reuse_port=True)
        inbound = listening_socket(host, options.inbound_port, reuse_port=True, transparent=tproxy)
        specs.append((ListenSpec(outbound, OUTBOUND), "outbound"))
        info = listener_info(inbound_kind, tproxy)
        specs.append((ListenSpec(inbound, info, transparent=tproxy), inbound_kind))
    return specs


def new_workers(
    options: Options, listener_sets: list[list[tuple[ListenSpec, str]]], sink: AccessLog
) -> list[WorkerHandle]:
    """One worker per listener set: in this process when there is one (no second interpreter
    to pay for, as Envoy's ``--concurrency 1`` is one process; it writes to ``sink``, this
    process's access log), else a process each."""
    if len(listener_sets) == 1:
        return [
            InProcessWorker(
                0, listener_sets[0], options.access_log, sink, options.limits, options.own_ports()
            )
        ]
    return [
        WorkerProcess(
            index,
            listeners,
            options.access_log,
            options.log_format,
            options.limits,
            len(listener_sets),
            own_ports=options.own_ports(),
        )
        for index, listeners in enumerate(listener_sets)
    ]


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


class Sidecar:
    """The supervisor: workers, admin ports, config reload and the drain on SIGTERM.

    Over ~200 lines for its admin handlers, each a few lines reading the supervisor's state
    (ready, stopping, the workers' reports); moving them out would only pass that state
    around."""

    def __init__(self, options: Options, mesh: Mesh, bootstrap: Bootstrap | None = None) -> None:
        self.options = options
        self.mesh = mesh
        self.bootstrap = bootstrap
        self.xds: AdsClient | None = None
        self.workers: list[WorkerHandle] = []
        self.ready = False
        self.stopping = False
        self.health_failed = False
        self.reloads = 0
        self.rejected = 0
        self.worker_restarts = 0
        self.last_error = ""
        self._stop = asyncio.Event()
        self._config_stat: tuple | None = None
        self._apply_lock = asyncio.Lock()
        self.stats = Stats()  # the supervisor's own: the DNS proxy counts here
        self.access_log = AccessLog(options.log_format, "main")
        self.dns: DnsProxy | None = None

    # --- running ------------------------------------------------------------------------

    async def run(self, listener_sets: list[list[tuple[ListenSpec, str]]]) -> int:
        loop = asyncio.get_running_loop()
        for worker in new_workers(self.options, listener_sets, self.access_log):
            await worker.start(self.mesh)
            self.workers.append(worker)
        dns_closers = await self._start_dns()
        admin = AdminServer(self._admin_routes())
        servers = [
            await serve(admin, "127.0.0.1", self.options.admin_port),
            await serve(
                AdminServer({"/stats/prometheus": Route(self._prometheus)}),
                "0.0.0.0",
                self.options.stats_port,
            ),
            await serve(
                AdminServer({"/healthz/ready": Route(self._healthz)}),
                "0.0.0.0",
                self.options.ready_port,
            ),
        ]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        tasks = [loop.create_task(self._supervise())]
        if self.options.config:
            tasks.append(loop.create_task(self._watch_config()))
        if self.bootstrap is not None:
            tasks += self._start_xds(self.bootstrap)
        freeze_startup_objects()
        self.ready = self.xds is None
        log.info(
            "ready: %d workers, outbound :%d, inbound :%d (%s), %d services",
            len(self.workers),
            self.options.outbound_port,
            self.options.inbound_port,
            self.options.inbound_mode,
            len(self.mesh.services),
        )
        await self._stop.wait()
        self.ready, self.stopping = False, True
        for task in tasks:
            task.cancel()
        log.info(
            "draining: not accepting; open connections get up to %gs", self.options.drain_timeout
        )
        timeout = self.options.drain_timeout
        replies = await asyncio.gather(
            *(w.drain(timeout) for w in self.workers), return_exceptions=True
        )
        aborted = sum(r for r in replies if isinstance(r, int))
        for worker in self.workers:
            await worker.stop()
        for server in servers:
            server.close()
        for close in dns_closers:
            close()
        self.access_log.flush()
        log.info("stopped (%d connections cut at the drain deadline)", aborted)
        return 0

    def _start_xds(self, bootstrap: Bootstrap) -> list[asyncio.Task]:
        """The ADS stream, and readiness once its first config is applied."""
        from proxy.xds.client import AdsClient
        from proxy.xds.delta import DeltaState
        from proxy.xds.state import SotwState

        variant = DeltaState if bootstrap.variant == "delta" else SotwState
        state = variant(bootstrap.node, self.mesh, bootstrap.server)
        self.xds = client = AdsClient(
            state, self.apply_mesh, cache_path=self.options.xds_cache, tls=bootstrap.tls
        )
        log.info(
            "xDS: %s ADS to %s as node %s%s",
            bootstrap.variant,
            bootstrap.server,
            bootstrap.node.id,
            f" over TLS, verifying {bootstrap.tls.server_name}" if bootstrap.tls else "",
        )
        loop = asyncio.get_running_loop()
        return [loop.create_task(client.run()), loop.create_task(self._ready_after_xds(client))]

    async def _ready_after_xds(self, client: AdsClient) -> None:
        try:
            await asyncio.wait_for(client.first_applied.wait(), XDS_INITIAL_FETCH_TIMEOUT)
        except TimeoutError:
            log.warning(
                "xDS: no config from %s within %gs; ready with the local config",
                client.state.server,
                XDS_INITIAL_FETCH_TIMEOUT,
            )
        if not self.stopping:
            self.ready = True

    async def _start_dns(self) -> list:
        """The DNS proxy answers from the supervisor: it needs the mesh, not the data path."""
        if not self.options.dns_port:
            return []
        try:
            resolv = read_resolv_conf(self.options.resolv_conf)
        except OSError as err:
            log.warning("no upstream resolvers (%s): only mesh names will resolve", err)
            resolv = ResolvConf((), ())
        self.dns = DnsProxy(self.mesh, resolv, self.stats)
        closers = await serve_dns(self.dns, self.options.dns_port)
        log.info(
            "DNS proxy on :%d, upstream %s, search %s",
            self.options.dns_port,
            ",".join(resolv.nameservers) or "-",
            " ".join(resolv.search) or "-",
        )
        return closers

    async def _supervise(self) -> None:
        """Restart a worker process that died, on the same sockets, with the current mesh (an
        in-process worker is alive while this process is)."""
        while True:
            await asyncio.sleep(WORKER_CHECK_INTERVAL)
            for worker in self.workers:
                if worker.alive or self.stopping:
                    continue
                log.error(
                    "worker %d exited (%s); starting a new one", worker.index, worker.exit_code
                )
                await worker.stop()
                try:
                    await worker.start(self.mesh)
                except (OSError, asyncio.IncompleteReadError, ConnectionError) as err:
                    log.error("worker %d could not be restarted: %s", worker.index, err)
                    continue
                self.worker_restarts += 1

    async def _reports(self) -> list[WorkerReport]:
        """Every live worker's report. One that fails (a worker process dying meanwhile) is
        left out of the sums and logged, so a scrape still answers."""
        live = [w for w in self.workers if w.alive]
        replies = await asyncio.gather(*(w.report() for w in live), return_exceptions=True)
        reports = []
        for worker, reply in zip(live, replies, strict=True):
            if isinstance(reply, WorkerReport):
                reports.append(reply)
            else:
                log.warning("worker %d gave no stats: %r", worker.index, reply)
        return reports

    # --- config reload ------------------------------------------------------------------

    def _stat_config(self) -> tuple | None:
        try:
            st = os.stat(self.options.config)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _watch_config(self) -> None:
        """Poll the file's identity: a rename (Envoy's way) or a rewrite triggers a load."""
        self._config_stat = self._stat_config()
        while True:
            await asyncio.sleep(CONFIG_POLL_INTERVAL)
            current = self._stat_config()
            if current is None or current == self._config_stat:
                continue
            self._config_stat = current
            await self.reload()

    async def reload(self) -> bool:
        """The mesh file changed: with a control plane, its resources are rebuilt on the new
        file (a clash refuses the file); either way all or nothing."""
        try:
            mesh: Mesh | None = load_mesh(self.options.config)
            _check_restart_fields(self.mesh, mesh)
            if self.xds is not None:
                mesh = self.xds.state.rebuild(mesh) or mesh
        except (MeshConfigError, OSError, ValueError) as err:
            self.rejected += 1
            self.last_error = str(err)
            log.error("config refused, the running config stays: %s", err)
            return False
        return await self.apply_mesh(mesh)

    async def apply_mesh(self, mesh: Mesh) -> bool:
        """Run ``mesh`` from now on (DNS answers and every worker): the one way the running
        config changes, for the mesh file and the control plane alike."""
        async with self._apply_lock:  # one version reaches every worker before the next
            self.mesh = mesh
            if self.dns is not None:
                self.dns.apply_mesh(mesh)
            live = [w for w in self.workers if w.alive]
            results = await asyncio.gather(
                *(w.apply_mesh(mesh) for w in live), return_exceptions=True
            )
            for worker, result in zip(live, results, strict=True):
                if isinstance(result, BaseException):  # a dead process restarts with it
                    log.error("worker %d did not take the config: %r", worker.index, result)
            self.reloads += 1
        log.info("config applied: %d services from %s", len(mesh.services), mesh.source)
        return True

    # --- admin --------------------------------------------------------------------------

    def _admin_routes(self) -> dict[str, Route]:
        post = frozenset({"POST"})
        return {
            "/ready": Route(self._ready),
            "/stats": Route(self._stats),
            "/stats/prometheus": Route(self._prometheus),
            "/clusters": Route(self._clusters),
            "/listeners": Route(self._listeners),
            "/config_dump": Route(self._config_dump),
            "/healthcheck/fail": Route(self._health_fail, post),
            "/healthcheck/ok": Route(self._health_ok, post),
            "/drain_listeners": Route(self._drain_listeners, post),
            "/quitquitquit": Route(self._quit, post),
        }

    async def _snapshot(self) -> Merged:
        reports = await self._reports()
        own = [self.stats.snapshot(), self._supervisor_snapshot()]
        return merge([*own, *(report.stats for report in reports)])

    def _supervisor_snapshot(self) -> dict[str, list]:
        """The supervisor's counts as a snapshot of their own, so they merge and render as
        any declared metric does; taken fresh at each scrape because the counts live as plain
        attributes (/config_dump shows them too), and always present, zeros included."""
        own = Stats()
        own.inc(CONFIG_RELOAD_TOTAL, (), self.reloads)
        own.inc(CONFIG_RELOAD_REJECTED, (), self.rejected)
        own.inc(WORKER_RESTARTS_TOTAL, (), self.worker_restarts)
        own.gauge_set(WORKERS_ALIVE, (), sum(w.alive for w in self.workers))
        return own.snapshot()

    async def _ready(self, _request: Request) -> Response:
        if self.ready and not self.health_failed:
            return text("LIVE\n")
        return text("NOT READY\n", 503)

    async def _healthz(self, request: Request) -> Response:
        return await self._ready(request)

    async def _prometheus(self, _request: Request) -> Response:
        return Response(
            200, render(await self._snapshot()), "text/plain; version=0.0.4; charset=utf-8"
        )

    async def _stats(self, request: Request) -> Response:
        merged = await self._snapshot()
        pattern = request.query.get("filter", [""])[0]
        try:
            matcher = re.compile(pattern)
        except re.error as err:
            return text(f"bad filter {pattern!r}: {err}\n", 400)
        rows = []
        for (name, label_values), value in sorted({**merged.counters, **merged.gauges}.items()):
            shown = name + "".join(f".{k}={v}" for k, v in label_values)
            if matcher.search(shown):
                rows.append((shown, value))
        if request.query.get("format", [""])[0] == "json":
            body = json.dumps({"stats": [{"name": n, "value": v} for n, v in rows]})
            return Response(200, body.encode(), "application/json")
        return text("".join(f"{n}: {v}\n" for n, v in rows))

    async def _clusters(self, _request: Request) -> Response:
        reports = await self._reports()
        return text(render_rows(merge_rows(report.clusters for report in reports)))

    async def _listeners(self, _request: Request) -> Response:
        names = set()
        for worker in self.workers[:1]:
            for spec, kind in worker.listeners:
                try:
                    host, port = spec.sock.getsockname()[:2]
                except OSError:  # closed by a drain: it no longer listens
                    continue
                names.add(f"{spec.info.name} {kind} {host}:{port}")
        return text("".join(f"{line}\n" for line in sorted(names)))

    async def _config_dump(self, _request: Request) -> Response:
        dump = {
            "mesh": _jsonable(dataclasses.asdict(self.mesh)),
            "reloads": self.reloads,
            "rejected": self.rejected,
            "last_error": self.last_error,
        }
        if self.xds is not None:
            dump["xds"] = self.xds.describe()
        return Response(200, json.dumps(dump, indent=2).encode(), "application/json")

    async def _health_fail(self, _request: Request) -> Response:
        self.health_failed = True
        return text("OK\n")

    async def _health_ok(self, _request: Request) -> Response:
        self.health_failed = False
        return text("OK\n")

    async def _drain_listeners(self, _request: Request) -> Response:
        self.stopping = True  # no worker restarts: they would have nothing to accept on
        await asyncio.gather(*(w.stop_accepting() for w in self.workers), return_exceptions=True)
        return text("OK\n")

    async def _quit(self, _request: Request) -> Response:
        asyncio.get_running_loop().call_soon(self._stop.set)
        return text("OK\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(
        value,
        ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network,
    ):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


# What the workers took at start and hold for their life: the identity they present (the
# certificate files are watched and reloaded, but which files, and which identity, is fixed).
_RESTART_FIELDS = (
    ("mesh.trust_domain", lambda mesh: mesh.trust_domain),
    ("workload.tls", lambda mesh: mesh.workload.tls),
    ("workload.service_account", lambda mesh: mesh.workload.service_account),
)


def _check_restart_fields(running: Mesh, new: Mesh) -> None:
    """A new config may not change what needs a restart: refused whole, naming the field."""
    for name, value in _RESTART_FIELDS:
        if value(new) != value(running):
            raise MeshConfigError(
                new.source,
                name,
                value(new),
                f"differs from the running {value(running)!r}: it takes effect at a restart only",
            )
