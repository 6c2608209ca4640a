"""A TEST control plane: an ADS (State of the World) server for the xDS tests.

istiod and go-control-plane cannot be built here (no Go module proxy), so the tests serve
their own snapshots with this: a grpc.aio server, in a thread of its own with its own event
loop, speaking Envoy's aggregated discovery service from xds-protos. It does what a
control plane must for a sidecar to be tested against it, and no more:

- one snapshot at a time, one version for all its types (go-control-plane's snapshot cache
  works the same way) or one per type (istiod pushing only the endpoints that changed);
  :meth:`set_snapshot` pushes it to every connected stream, each resource serialised once
  for all of them (the scale bench serves 100 sidecars from one snapshot);
- Cluster and Listener subscriptions are wildcard (every resource is sent), endpoint and
  route subscriptions get the resources they name;
- each response has a fresh nonce; a request carrying the nonce of the last response of its
  type is that response's ACK (or NACK, with ``error_detail``), recorded per node id for the
  tests to wait on; a request with no nonce (a new stream) or with new resource names is
  answered with the current resources;
- both variants: State of the World (every resource of the type, or of the names asked for,
  in each response) and Delta (per resource versions, only what changed and the names
  removed, ``initial_resource_versions`` honoured on a new stream).

It can listen inside a network namespace (the lab's bridge), so pods reach it the way they
would reach istiod: the server thread joins the namespace before it binds. With ``tls`` it
listens as istiod's 15012 does: TLS with its own certificate, a client certificate required
when ``tls.require_client_auth``; the SAN URIs each stream's client presented are recorded
(``peers``), as istiod knows a sidecar by its SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    resource_name,
)

__all__ = ["TYPE_CLUSTER", "TYPE_ENDPOINT", "TYPE_LISTENER", "TYPE_ROUTE", "Reply"]

WILDCARD_TYPES = (TYPE_CLUSTER, TYPE_LISTENER)
PUSH_ORDER = (TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE)
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Reply:
    """A sidecar's answer to one response: an ACK (error empty) or a NACK."""

    node_id: str
    type_url: str
    version: str  # the version the sidecar reports holding
    nonce: str
    error: str  # error_detail.message; empty on an ACK
    at: float = field(default_factory=time.monotonic, compare=False)  # when it arrived

    @property
    def acked(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ServingTls:
    """The test control plane's certificate (PEM) and the roots its clients must chain to."""

    cert_chain: bytes
    key: bytes = field(repr=False)
    client_roots: bytes
    require_client_auth: bool = True


@dataclass
class _Sent:
    version: str
    nonce: str
    names: tuple[str, ...]


PUSH = object()  # queued on a stream when the snapshot changed


def _join_netns(name: str) -> None:
    """Move the calling thread (only it) into /run/netns/<name>."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into netns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class XdsTestControlPlane:
    """Start, stop and start again (on the same port); set snapshots; wait on ACKs/NACKs."""

    def __init__(
        self, host: str, port: int, netns: str | None = None, tls: ServingTls | None = None
    ) -> None:
        self.host = host
        self.port = port  # 0: any free port, then kept for restarts
        self.netns = netns
        self.tls = tls
        self.peers: list[list[str]] = []  # per stream: the client certificate's SAN URIs
        self._versions: dict[str, str] = {}
        self._snapshot: dict[str, list[Message]] = {}
        # id(message) -> (message, packed, digest) of the snapshot's resources
        self._prepared: dict[int, tuple[Message, any_pb2.Any, str]] = {}
        self._replies: list[Reply] = []
        self._changed = threading.Condition()
        self._nonces = itertools.count(1)
        self._streams: set[_Protocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self.streams_opened = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- the test's side ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the test control plane is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="xds-test-cp", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the test control plane did not start within {timeout}s")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """End every stream and close the port (the sidecars see the control plane go)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def set_snapshot(
        self, version: str | Mapping[str, str], resources: Mapping[str, Sequence[Message]]
    ) -> float:
        """The resources every sidecar should have, as {type_url: [messages]}; pushed to
        every connected stream at once. ``version`` is every type's, or {type_url: version}
        (a type left out keeps its version, so it is not sent again). Returns the monotonic
        time of the push, after every resource was serialised."""
        versions = (
            dict.fromkeys({*PUSH_ORDER, *resources}, version)
            if isinstance(version, str)
            else dict(version)
        )
        snapshot = {t: list(messages) for t, messages in resources.items()}
        prepared = {}
        for messages in snapshot.values():
            for message in messages:
                old = self._prepared.get(id(message))
                if old is not None and old[0] is message:  # kept from the last snapshot
                    prepared[id(message)] = old
                else:
                    prepared[id(message)] = (message, _packed(message), _digest(message))
        with self._changed:
            self._versions.update(versions)
            self._snapshot = snapshot
            self._prepared = prepared
        published = time.monotonic()
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(self._push_all)
        return published

    def replies(self, node_id: str | None = None) -> list[Reply]:
        with self._changed:
            return [r for r in self._replies if node_id is None or r.node_id == node_id]

    def wait_acked(
        self, version: str, type_urls: Sequence[str], node_id: str, timeout: float = 15.0
    ) -> None:
        """Until the node has ACKed ``version`` of every type in ``type_urls``."""

        def done() -> bool:
            acked = {
                r.type_url
                for r in self._replies
                if r.node_id == node_id and r.acked and r.version == version
            }
            return set(type_urls) <= acked

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                raise AssertionError(
                    f"{node_id} did not ACK version {version} of {list(type_urls)} within "
                    f"{timeout}s; its replies: {self._replies_of(node_id)}"
                )

    def wait_nacked(self, type_url: str, node_id: str, timeout: float = 15.0) -> Reply:
        """The node's first NACK of ``type_url`` (waiting for it if there is none yet)."""

        def first() -> Reply | None:
            for r in self._replies:
                if r.node_id == node_id and r.type_url == type_url and not r.acked:
                    return r
            return None

        with self._changed:
            if not self._changed.wait_for(lambda: first() is not None, timeout):
                raise AssertionError(
                    f"{node_id} did not NACK {type_url} within {timeout}s; its replies: "
                    f"{self._replies_of(node_id)}"
                )
            reply = first()
            assert reply is not None
            return reply

    def _replies_of(self, node_id: str) -> list[tuple[str, str, str]]:
        return [
            (r.type_url.rsplit(".", 1)[-1], r.version, r.error)
            for r in self._replies
            if r.node_id == node_id
        ]

    # --- the server thread --------------------------------------------------------------------

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            if self.netns is not None:
                _join_netns(self.netns)
            loop.run_until_complete(self._run(ready))
        except BaseException as err:  # reported to start(), which re-raises it
            failure.append(err)
            ready.set()
        finally:
            self._loop = None
            loop.close()

    async def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # so_reuseport off: a second server on the same port is an error, not a silent share.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        address = f"{self.host}:{self.port}"
        if self.tls is None:
            bound = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key, self.tls.cert_chain)],
                root_certificates=self.tls.client_roots,
                require_client_auth=self.tls.require_client_auth,
            )
            bound = server.add_secure_port(address, credentials)
        if bound == 0:
            raise OSError(f"the test control plane cannot listen on {self.address}")
        self.port = bound
        await server.start()
        ready.set()
        await self._stopping.wait()
        await server.stop(grace=None)
        self._streams.clear()
        # The streams' tasks end before the loop closes (no "task destroyed" at teardown).
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _push_all(self) -> None:
        for stream in self._streams:
            stream.queue.put_nowait(PUSH)

    # --- streams ------------------------------------------------------------------------------

    async def serve_stream(self, context: grpc.aio.ServicerContext, protocol: _Protocol) -> None:
        self._streams.add(protocol)
        self.streams_opened += 1
        if self.tls is not None:
            sans = context.auth_context().get("x509_subject_alternative_name", [])
            with self._changed:
                self.peers.append([san.decode() for san in sans])
        reader = asyncio.create_task(self._read(context, protocol.queue))
        try:
            while True:
                event = await protocol.queue.get()
                if event is None:  # the sidecar closed its side
                    return
                responses = protocol.on_push() if event is PUSH else protocol.on_request(event)
                for response in responses:
                    await context.write(response)
        finally:
            reader.cancel()
            self._streams.discard(protocol)

    async def _read(self, context: grpc.aio.ServicerContext, queue: asyncio.Queue) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                queue.put_nowait(None)
                return
            queue.put_nowait(request)

    def current(self, type_url: str) -> tuple[str, list[Message]]:
        """The snapshot's version and its resources of ``type_url``."""
        with self._changed:
            return self._versions.get(type_url, ""), list(self._snapshot.get(type_url, []))

    def packed(self, message: Message) -> any_pb2.Any:
        entry = self._prepared.get(id(message))
        return entry[1] if entry is not None and entry[0] is message else _packed(message)

    def digest(self, message: Message) -> str:
        entry = self._prepared.get(id(message))
        return entry[2] if entry is not None and entry[0] is message else _digest(message)

    def nonce(self) -> str:
        return str(next(self._nonces))

    def record(self, reply: Reply) -> None:
        with self._changed:
            self._replies.append(reply)
            self._changed.notify_all()


class _Protocol:
    """One stream's side of the protocol: requests in, responses out."""

    def __init__(self, plane: XdsTestControlPlane) -> None:
        self.plane = plane
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.node_id = ""

    def on_request(self, request: Any) -> list[Message]:
        raise NotImplementedError

    def on_push(self) -> list[Message]:
        raise NotImplementedError


class _SotwStream(_Protocol):
    def __init__(self, plane: XdsTestControlPlane) -> None:
        super().__init__(plane)
        self.subscriptions: dict[str, tuple[str, ...]] = {}
        self.sent: dict[str, _Sent] = {}

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[Message]:
        if request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        names = tuple(request.resource_names)
        sent = self.sent.get(type_url)
        if request.response_nonce and sent is not None and request.response_nonce == sent.nonce:
            self.plane.record(
                Reply(
                    self.node_id,
                    type_url,
                    request.version_info,
                    request.response_nonce,
                    request.error_detail.message,
                )
            )
        elif request.response_nonce:
            return []  # a stale nonce: the reply to a response since superseded
        changed = self.subscriptions.get(type_url) != names
        self.subscriptions[type_url] = names
        if sent is None or changed:
            response = self._response(type_url)
            return [response] if response is not None else []
        return []

    def on_push(self) -> list[Message]:
        responses = []
        for type_url in PUSH_ORDER:
            sent = self.sent.get(type_url)
            version, _ = self.plane.current(type_url)
            if type_url in self.subscriptions and (sent is None or sent.version != version):
                response = self._response(type_url)
                if response is not None:
                    responses.append(response)
        return responses

    def _response(self, type_url: str) -> discovery_pb2.DiscoveryResponse | None:
        version, messages = self.plane.current(type_url)
        if not version:
            return None  # no snapshot yet: the request waits for the first one
        names = self.subscriptions.get(type_url, ())
        if type_url not in WILDCARD_TYPES:
            messages = [m for m in messages if resource_name(m) in names]
        nonce = self.plane.nonce()
        self.sent[type_url] = _Sent(version, nonce, names)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=[self.plane.packed(m) for m in messages],
            type_url=type_url,
            nonce=nonce,
        )


class _DeltaStream(_Protocol):
    """Incremental xDS: per type, the names subscribed (or wildcard) and the version of each
    resource the sidecar holds; a response carries what differs and the names removed. One
    response per type is in flight at a time (the next diff is computed from what the
    sidecar ACKed, so it must be known): changes meanwhile wait for the reply."""

    def __init__(self, plane: XdsTestControlPlane) -> None:
        super().__init__(plane)
        self.wildcard: set[str] = set()
        self.names: dict[str, set[str]] = {}
        self.held: dict[str, dict[str, str]] = {}  # type -> name -> version the sidecar has
        # type -> (nonce, version, what the sidecar held before) of the unanswered response
        self.pending: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.dirty: set[str] = set()  # types that changed while a response was in flight
        self.acked: dict[str, str] = {}  # type -> the last version ACKed
        self.sent_version: dict[str, str] = {}

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[Message]:
        if request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        first = type_url not in self.names
        replied = False
        if request.response_nonce:
            nonce, version, before = self.pending.get(type_url, ("", "", {}))
            if request.response_nonce != nonce:
                return []  # a stale nonce
            del self.pending[type_url]
            replied = True
            error = request.error_detail.message
            if error:  # NACKed: the sidecar kept what it held before that response
                self.held[type_url] = before
            else:
                self.acked[type_url] = version
            held_version = self.acked.get(type_url, "")
            self.plane.record(Reply(self.node_id, type_url, held_version, nonce, error))
        names = self.names.setdefault(type_url, set())
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if first:
            if type_url in WILDCARD_TYPES and (not subscribe or "*" in subscribe):
                self.wildcard.add(type_url)
            self.held[type_url] = dict(request.initial_resource_versions)
        names |= subscribe - {"*"}
        names -= unsubscribe
        for name in unsubscribe:
            self.held.get(type_url, {}).pop(name, None)
        if first or subscribe or unsubscribe or (replied and type_url in self.dirty):
            response = self._response(type_url, always=first)
            return [response] if response is not None else []
        return []

    def on_push(self) -> list[Message]:
        responses = []
        for type_url in PUSH_ORDER:
            if type_url in self.names:
                response = self._response(type_url)
                if response is not None:
                    responses.append(response)
        return responses

    def _response(
        self, type_url: str, always: bool = False
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        version, messages = self.plane.current(type_url)
        if not version:
            return None
        if type_url in self.pending:
            self.dirty.add(type_url)
            return None
        self.dirty.discard(type_url)
        wanted = {
            resource_name(m): m
            for m in messages
            if type_url in self.wildcard or resource_name(m) in self.names[type_url]
        }
        held = self.held.setdefault(type_url, {})
        before = dict(held)
        changed = []
        for name, message in wanted.items():
            digest = self.plane.digest(message)
            if held.get(name) != digest:
                changed.append(
                    discovery_pb2.Resource(
                        name=name, version=digest, resource=self.plane.packed(message)
                    )
                )
                held[name] = digest
        removed = sorted(n for n in held if n not in wanted)
        for name in removed:
            del held[name]
        # A new version is announced even with nothing in it for this type (an empty
        # response), so every type's ACK of each version can be waited on.
        if not (changed or removed or always or version != self.sent_version.get(type_url)):
            return None
        nonce = self.plane.nonce()
        self.sent_version[type_url] = version
        self.pending[type_url] = (nonce, version, before)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            resources=changed,
            removed_resources=removed,
            type_url=type_url,
            nonce=nonce,
        )


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _digest(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, plane: XdsTestControlPlane) -> None:
        self._plane = plane

    async def StreamAggregatedResources(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        await self._plane.serve_stream(context, _SotwStream(self._plane))

    async def DeltaAggregatedResources(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        await self._plane.serve_stream(context, _DeltaStream(self._plane))
