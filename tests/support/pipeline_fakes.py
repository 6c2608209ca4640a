"""Fakes of the request pipeline's three codec interfaces, and a harness around a real Pipeline.

``proxy.pipeline.forward.Pipeline`` meets the codecs through ``RequestBody``, ``ResponseSink``
and ``UpstreamTry`` (``proxy.pipeline.exchange``). The fakes here implement them the way the
real adapters do (``proxy/filters/http1_*.py``, ``http2_*.py``) but record what a client and
the upstreams would observe instead of writing bytes:

* ``FakeUpstreamTry``: one try on one host (``start``: connect, send, head), acting out a
  script (``Answer``, ``ConnectFailure``, ``ResetBeforeHead``, ``Hang``) and recording the
  request it was sent, the body it received, and when it was opened, answered, finished or
  aborted;
* ``FakeTryFactory``: the pipeline's ``new_try``: hands out scripted tries in order (or per
  host) and records which host each try went to;
* ``FakeBody``: a request body arriving in parts, kept up to ``REPLAY_LIMIT`` for a replay;
* ``FakeSink``: the downstream side, recording head, data, end, local reply and cuts, able to
  play a slow client or one that is gone.

Every wait in the fakes is an ``asyncio.sleep`` or a future nobody resolves, so on a
``VirtualTimeLoop`` a test observes exact virtual times and a fake that waits for nothing
raises ``Stuck`` instead of hanging. ``PipelineHarness`` builds the real mesh, clusters,
router and Pipeline from YAML and runs requests through them.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.config.loader import parse_mesh
from proxy.config.model import Service, ServicePort
from proxy.http.events import Headers, InformationalResponse, Request, Response
from proxy.outcomes import Flag, Outcome
from proxy.pipeline import local_reply
from proxy.pipeline.errors import DownstreamGone, TryFailed, UpstreamCut
from proxy.pipeline.exchange import PENDING, Exchange, Pending, RequestBody
from proxy.pipeline.forward import Pipeline
from proxy.pipeline.hooks import PolicyHook
from proxy.pipeline.kept_body import KeptBody
from proxy.pipeline.router import HttpRouter
from proxy.series import Stats
from proxy.stats import Counter, cluster_labels
from proxy.upstream.cluster import ClusterKey, ClusterRuntime, build_clusters
from proxy.upstream.hosts import Host
from support.virtual_time import VirtualTimeLoop

PEER = "10.9.9.9"  # the downstream client's address
AUTHORITY = b"backend"


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _forever() -> None:
    """Wait until cancelled (a reset, a timeout): nobody resolves this future."""
    await asyncio.get_running_loop().create_future()


# --- what a scripted try does ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The upstream answers: ``status`` and ``headers`` after ``head_delay``, then the body
    parts (each after ``part_delay``), then ``trailers``. ``cut_after``: the upstream goes away
    (``UpstreamCut(cut_flag)``) after that many body parts. ``drop_delay``: how long dropping
    the response for a retry takes (HTTP/1.1 reads a small body to keep its connection)."""

    status: int = 200
    headers: Headers = field(default_factory=list)
    body: Sequence[bytes] = ()
    trailers: Headers = field(default_factory=list)
    head_delay: float = 0.0
    part_delay: float = 0.0
    cut_after: int | None = None
    cut_flag: str = Flag.UPSTREAM_CONNECTION_TERMINATION
    drop_delay: float = 0.0


@dataclass(frozen=True)
class ConnectFailure:
    """The connect fails after ``delay`` (refused, unreachable): TryFailed before anything."""

    delay: float = 0.0


@dataclass(frozen=True)
class ResetBeforeHead:
    """The upstream takes the request, then closes or resets before a response head."""

    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """The try never gets further than ``phase`` ("open", "send" or "head") until aborted."""

    phase: str = "head"


Script = Answer | ConnectFailure | ResetBeforeHead | Hang


class FakeUpstreamTry:
    """An ``UpstreamTry`` acting out one script; what the upstream host saw is recorded."""

    def __init__(self, host: Host, script: Script, number: int) -> None:
        self.host = host
        self.script = script
        self.number = number  # its place among all the tries the factory handed out
        self.end = False
        self.trailers: Headers = []
        self.request: Request | None = None  # a copy: the pipeline reuses its header list
        self.body_received = bytearray()
        self.created_at = _now()
        self.opened_at: float | None = None  # when open() was called
        self.sent_at: float | None = None  # when the request (head and body) was all sent
        self.answered_at: float | None = None  # when the head was returned
        self.finished_at: float | None = None
        self.aborted_at: float | None = None  # an abort that reset a live try
        self.failed_at: float | None = None  # TryFailed raised: the try is over by itself
        self.dropped = False  # drop_response: the pipeline will retry this answer
        self.parts_read = 0

    # --- what the tests read -------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def closed(self) -> bool:
        ended = (self.finished_at, self.aborted_at, self.failed_at)
        return self.dropped or any(at is not None for at in ended)

    @property
    def aborted(self) -> bool:
        return self.aborted_at is not None

    def header(self, name: bytes) -> list[bytes]:
        """The values of ``name`` in the forwarded request, in order."""
        assert self.request is not None, "the try was never sent a request"
        return [value for key, value in self.request.headers if key == name]

    # --- UpstreamTry ---------------------------------------------------------------------

    async def start(
        self, exchange: Exchange, request: Request, body: RequestBody
    ) -> Response | InformationalResponse:
        """Connect, send the request and its body, wait for the head: the three steps of
        the interface's ``start`` (kept apart below, as the interface once had them)."""
        await self.open()
        await self.send(exchange, request, body)
        return await self.head()

    async def open(self) -> None:
        self.opened_at = _now()
        script = self.script
        if isinstance(script, Hang) and script.phase == "open":
            await _forever()
        if isinstance(script, ConnectFailure):
            await asyncio.sleep(script.delay)
            self.failed_at = _now()
            raise TryFailed(Outcome.CONNECT_FAILURE, local_reply.CONNECT_FAILURE)

    async def send(self, exchange: Exchange, request: Request, body: RequestBody) -> None:
        self.request = Request(request.method, request.target, list(request.headers))
        if not body.empty:  # as Http1Try: the body at the upstream's pace, acknowledged
            async for chunk in body.chunks():
                self.body_received += chunk
                body.consumed()
        self.sent_at = _now()
        if isinstance(self.script, Hang) and self.script.phase == "send":
            await _forever()

    async def head(self) -> Response | InformationalResponse:
        script = self.script
        if isinstance(script, Hang):
            await _forever()
        if isinstance(script, ResetBeforeHead):
            await asyncio.sleep(script.delay)
            self.failed_at = _now()
            raise TryFailed(Outcome.RESET, local_reply.UPSTREAM_RESET)
        assert isinstance(script, Answer)
        await asyncio.sleep(script.head_delay)
        self.answered_at = _now()
        self.end = not script.body and not script.trailers and script.cut_after is None
        return Response(script.status, list(script.headers))

    def _next_is_ready(self) -> bool:
        """A body part arrives ``part_delay`` after the previous one; the end (with the
        trailers) comes with the last part; a cut is noticed by a read."""
        script = self.script
        assert isinstance(script, Answer)
        if script.cut_after is not None and self.parts_read >= script.cut_after:
            return False
        return self.parts_read >= len(script.body) or script.part_delay == 0

    def _take(self) -> bytes | None:
        script = self.script
        assert isinstance(script, Answer)
        if script.cut_after is not None and self.parts_read >= script.cut_after:
            raise UpstreamCut(script.cut_flag)
        if self.parts_read < len(script.body):
            part = script.body[self.parts_read]
            self.parts_read += 1
            return part
        self.trailers = list(script.trailers)
        return None

    def poll(self) -> bytes | Pending | None:
        self._check_live()
        if not self._next_is_ready():
            return PENDING
        return self._take()

    async def read(self) -> bytes | None:
        self._check_live()
        script = self.script
        assert isinstance(script, Answer)
        if not self._next_is_ready():
            await asyncio.sleep(script.part_delay)
        return self._take()

    async def drop_response(self) -> None:
        script = self.script
        assert isinstance(script, Answer)
        if script.drop_delay:  # else done without a suspension, as Http2Try resets its stream
            await asyncio.sleep(script.drop_delay)
        self.dropped = True

    def finish(self) -> None:
        if not self.closed:
            self.finished_at = _now()

    def abort(self) -> None:
        if not self.closed:  # a no-op once finished, dropped or already aborted
            self.aborted_at = _now()

    def switch_protocols(self) -> object:
        raise AssertionError("no fake upstream accepts an upgrade")

    def _check_live(self) -> None:
        if self.closed:  # as the real tries: nothing more comes once the try is over
            raise UpstreamCut(Flag.UPSTREAM_CONNECTION_TERMINATION)


class FakeTryFactory:
    """The pipeline's ``new_try``: scripted tries in order, or per host when ``by_host`` has
    scripts left for the host picked; ``otherwise`` for any try beyond the scripts (else the
    unexpected try fails the test)."""

    def __init__(
        self,
        *scripts: Script,
        by_host: Mapping[str, Sequence[Script]] | None = None,
        otherwise: Script | None = None,
    ) -> None:
        self._scripts: deque[Script] = deque(scripts)
        self._by_host = {address: deque(s) for address, s in (by_host or {}).items()}
        self._otherwise = otherwise
        self.tries: list[FakeUpstreamTry] = []

    def add(self, *scripts: Script) -> None:
        self._scripts.extend(scripts)

    def __call__(self, cluster: ClusterRuntime, host: Host) -> FakeUpstreamTry:
        queue = self._by_host.get(host.address)
        if queue:
            script = queue.popleft()
        elif self._scripts:
            script = self._scripts.popleft()
        elif self._otherwise is not None:
            script = self._otherwise
        else:
            raise AssertionError(f"an unexpected try (number {len(self.tries) + 1}) on {host}")
        attempt = FakeUpstreamTry(host, script, len(self.tries) + 1)
        self.tries.append(attempt)
        return attempt

    @property
    def hosts(self) -> list[str]:
        """The address each try went to, in order."""
        return [attempt.address for attempt in self.tries]

    @property
    def left(self) -> int:
        """Scripts not handed out (not counting ``by_host`` ones)."""
        return len(self._scripts)


# --- the downstream side -----------------------------------------------------------------


class FakeBody(KeptBody):
    """A request body the client sends in ``parts`` (each after ``part_delay``), kept for a
    replay up to REPLAY_LIMIT by the codecs' own ``KeptBody``. ``stall_after``: the client stops
    sending after that many parts (until its task is cancelled); ``gone_after``: its
    connection closes after that many parts (``DownstreamGone``, as ``Http1Body`` raises)."""

    def __init__(
        self,
        parts: Iterable[bytes] = (),
        *,
        part_delay: float = 0.0,
        stall_after: int | None = None,
        gone_after: int | None = None,
        trailers: Headers | None = None,
    ) -> None:
        super().__init__()
        self._source: deque[bytes] = deque(parts)
        self._part_delay = part_delay
        self._stall_after = stall_after
        self._gone_after = gone_after
        self._received = 0  # parts the client sent so far
        self.empty = not self._source
        self.complete = self.empty
        self.trailers: Headers = trailers or []
        self.consumed_calls = 0
        self.discarded = False
        self.passes = 0  # chunks() calls: one per try that sent the body

    async def chunks(self) -> AsyncIterator[bytes]:
        self.passes += 1
        for chunk in self._replay():
            yield chunk
        while self._source:
            data = await self._receive()
            yield data
        self.complete = True

    async def _receive(self) -> bytes:
        if self._stall_after is not None and self._received >= self._stall_after:
            await _forever()
        if self._gone_after is not None and self._received >= self._gone_after:
            raise DownstreamGone()
        await asyncio.sleep(self._part_delay)
        data = self._source.popleft()
        self._received += 1
        self._keep(data)
        if not self._source:
            self.complete = True
        return data

    def consumed(self) -> None:
        self.consumed_calls += 1

    async def discard(self) -> bool:
        self.discarded = True
        while self._source:
            await self._receive()
        self.complete = True
        return True


@dataclass
class LocalAnswer:
    """What ``send_local`` wrote: a whole response of the sidecar's own."""

    status: int
    headers: Headers
    body: bytes
    close: bool


class FakeSink:
    """A ``ResponseSink`` recording what the client received. ``part_delay``: a slow client
    (each ``send_data`` waits that long); ``gone``: the client is gone already;
    ``gone_after_parts``: it goes after receiving that many body parts. Writes to a gone
    client raise ``DownstreamGone``, as the real sinks do."""

    def __init__(
        self, *, part_delay: float = 0.0, gone: bool = False, gone_after_parts: int | None = None
    ) -> None:
        self._part_delay = part_delay
        self._gone = gone
        self._gone_after_parts = gone_after_parts
        self.response_bytes = 0
        self.head: tuple[int, Headers, bool] | None = None
        self.head_at: float | None = None
        self.parts: list[bytes] = []
        self.part_times: list[float] = []
        self.ended = False
        self.trailers: Headers = []
        self.local: LocalAnswer | None = None
        self.local_at: float | None = None
        self.cuts: list[str] = []
        self.cut_at: float | None = None

    # --- what the tests read -------------------------------------------------------------

    @property
    def status(self) -> int | None:
        if self.local is not None:
            return self.local.status
        return self.head[0] if self.head is not None else None

    @property
    def headers(self) -> Headers:
        if self.local is not None:
            return self.local.headers
        return self.head[1] if self.head is not None else []

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    @property
    def body(self) -> bytes:
        if self.local is not None:
            return self.local.body
        return b"".join(self.parts)

    @property
    def complete(self) -> bool:
        """The client got a whole response (not cut short)."""
        if self.cuts:
            return False
        return self.local is not None or self.ended or (self.head is not None and self.head[2])

    @property
    def answered_at(self) -> float | None:
        return self.local_at if self.local is not None else self.head_at

    def leave(self) -> None:
        """The client goes now (its reset seen by the adapter; nothing raised here)."""
        self._gone = True

    # --- ResponseSink --------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._gone

    def _check(self) -> None:
        if self._gone:
            raise DownstreamGone()

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        self._check()
        assert self.head is None and self.local is None, "a second response head"
        self.head = (status, list(headers), end)
        self.head_at = _now()

    def send_data(self, data: bytes) -> Awaitable[None]:
        return self._send_data(data)

    async def _send_data(self, data: bytes) -> None:
        self._check()
        assert self.head is not None and not self.head[2] and not self.ended
        self.parts.append(data)
        self.part_times.append(_now())
        self.response_bytes += len(data)
        if self._gone_after_parts is not None and len(self.parts) >= self._gone_after_parts:
            self._gone = True
            raise DownstreamGone()
        await asyncio.sleep(self._part_delay)

    def send_end(self, trailers: Headers) -> None:
        self._check()
        assert self.head is not None and not self.ended
        self.ended = True
        self.trailers = list(trailers)

    async def send_local(self, status: int, headers: Headers, body: bytes, close: bool) -> None:
        self._check()
        assert self.head is None and self.local is None, "a local reply after a response"
        self.local = LocalAnswer(status, list(headers), body, close)
        self.local_at = _now()
        self.response_bytes = len(body)

    def cut(self, flag: str) -> None:
        self.cuts.append(flag)
        self.cut_at = _now()

    async def tunnel(self, upstream: object, switching: InformationalResponse) -> None:
        raise AssertionError("no test here upgrades")


# --- requests ----------------------------------------------------------------------------


def get(target: bytes = b"/", *headers: tuple[bytes, bytes]) -> Request:
    return Request(b"GET", target, [(b"host", AUTHORITY), *headers])


def post(target: bytes = b"/", *headers: tuple[bytes, bytes]) -> Request:
    return Request(b"POST", target, [(b"host", AUTHORITY), *headers])


def grpc_call(*headers: tuple[bytes, bytes]) -> Request:
    return Request(
        b"POST",
        b"/pkg.Service/Method",
        [
            (b"host", AUTHORITY),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *headers,
        ],
        version=b"2",
    )


# --- the mesh ----------------------------------------------------------------------------

ENDPOINTS = (("10.0.0.1", "v1"), ("10.0.0.2", "v1"), ("10.0.0.3", "v2"))
V1 = frozenset(address for address, version in ENDPOINTS if version == "v1")
V2 = frozenset(address for address, version in ENDPOINTS if version == "v2")


def mesh_yaml(
    routes: Sequence[Mapping[str, Any]] = (),
    *,
    policy: Mapping[str, Any] | None = None,
    endpoints: Sequence[tuple[str, str]] = ENDPOINTS,
    subsets: Sequence[str] = ("v1", "v2"),
) -> str:
    """The YAML of one service "backend" on an http port 8080, endpoints labelled by version,
    one subset per version, ``routes`` as its ``http`` list."""
    service: dict[str, Any] = {
        "name": "backend",
        "namespace": "default",
        "ports": [{"name": "http", "port": 8080, "protocol": "http"}],
        "endpoints": [
            {"address": address, "labels": {"version": version}} for address, version in endpoints
        ],
        "subsets": [{"name": name, "labels": {"version": name}} for name in subsets],
    }
    if routes:
        service["http"] = [dict(route) for route in routes]
    if policy:
        service["traffic_policy"] = dict(policy)
    return str(yaml.safe_dump({"services": [service]}, sort_keys=False))


@dataclass
class Upstreams:
    """What the Pipeline takes from its worker (``forward.Upstreams``)."""

    stats: Stats
    clusters: Mapping[ClusterKey, ClusterRuntime]
    rng: random.Random


@dataclass
class Result:
    """One request through the pipeline: what became of it."""

    exchange: Exchange
    sink: FakeSink
    body: FakeBody
    error: BaseException | None = None  # what forward() raised, if anything

    @property
    def flags(self) -> list[str]:
        return self.exchange.flags


class PipelineHarness:
    """A real Pipeline over the real mesh, clusters and router built from ``yaml_text``, its
    tries made by ``tries`` (a FakeTryFactory), on the virtual-time ``loop``."""

    def __init__(
        self,
        loop: VirtualTimeLoop,
        yaml_text: str,
        tries: FakeTryFactory,
        *,
        hooks: Sequence[PolicyHook] = (),
        seed: int = 7,
    ) -> None:
        self.loop = loop
        self.mesh = parse_mesh(yaml_text, "mesh.yaml")
        self.service: Service = self.mesh.services[0]
        self.port: ServicePort = self.service.ports[0]
        self.stats = Stats()
        self.rng = random.Random(seed)
        self.clusters = build_clusters(self.mesh, {}, self.stats, random.Random(seed + 1))
        self.upstreams = Upstreams(self.stats, self.clusters, self.rng)
        self.tries = tries
        self.pipeline = Pipeline(
            self.upstreams,
            self.service,
            self.port,
            HttpRouter(self.service),
            PEER,
            tries,
            hooks=hooks,
            clock=loop.time,
        )

    # --- looking things up ---------------------------------------------------------------

    def cluster(self, subset: str = "") -> ClusterRuntime:
        return self.clusters[(self.service.key, self.port.port, subset)]

    def host(self, address: str, subset: str = "") -> Host:
        return next(h for h in self.cluster(subset).hosts.hosts if h.address == address)

    def counter(self, metric: Counter, subset: str = "") -> int:
        """The value of ``metric`` labelled with the cluster (of ``subset``)."""
        return self.stats.counters.get((metric, cluster_labels(self.cluster(subset).name)), 0)

    def in_flight(self) -> list[str]:
        """Whatever is still counted as in flight anywhere: empty when nothing leaked."""
        leaks = []
        for cluster in self.clusters.values():
            if cluster.requests_active:
                leaks.append(f"{cluster.name} requests_active={cluster.requests_active}")
            if cluster.retries_active:
                leaks.append(f"{cluster.name} retries_active={cluster.retries_active}")
            leaks += [
                f"{cluster.name} {host.key} active_requests={host.active_requests}"
                for host in cluster.hosts.hosts
                if host.active_requests
            ]
        return leaks

    # --- running requests ----------------------------------------------------------------

    def exchange(self, request: Request | None = None, *, grpc: bool = False) -> Exchange:
        exchange = self.pipeline.new_exchange(request or get(), AUTHORITY)
        if grpc:
            exchange.request_protocol = "grpc"  # what the HTTP/2 adapter sets for gRPC calls
        return exchange

    async def serve(
        self,
        request: Request | None = None,
        *,
        body: FakeBody | None = None,
        sink: FakeSink | None = None,
        grpc: bool = False,
    ) -> Result:
        """One request through ``forward`` and ``finish``, as an adapter runs it (a
        DownstreamGone is kept in the result, not raised)."""
        result = Result(self.exchange(request, grpc=grpc), sink or FakeSink(), body or FakeBody())
        try:
            await self.pipeline.forward(result.exchange, result.body, result.sink)
        except DownstreamGone as gone:
            result.error = gone
        self.pipeline.finish(result.exchange)
        return result

    def run(
        self,
        request: Request | None = None,
        *,
        body: FakeBody | None = None,
        sink: FakeSink | None = None,
        grpc: bool = False,
    ) -> Result:
        return self.loop.run_until_complete(self.serve(request, body=body, sink=sink, grpc=grpc))

    def start(
        self,
        request: Request | None = None,
        *,
        body: FakeBody | None = None,
        sink: FakeSink | None = None,
        grpc: bool = False,
    ) -> tuple[asyncio.Task[None], Result]:
        """``forward`` in a task of its own, as the adapters run each request: the test may
        cancel it, as ``_downstream_lost`` and an HTTP/2 RST_STREAM do."""
        result = Result(self.exchange(request, grpc=grpc), sink or FakeSink(), body or FakeBody())
        task = self.loop.create_task(
            self.pipeline.forward(result.exchange, result.body, result.sink)
        )
        return task, result
