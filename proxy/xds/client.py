"""The ADS stream to the control plane (State of the World or Delta), on grpc.aio.

One long-lived bidirectional stream: the requests of the state machine (:class:`SotwState`
or :class:`~proxy.xds.delta.DeltaState`, which picks the gRPC method) go out, each response
comes back through it, and a complete mesh is handed to ``apply`` (the sidecar's one way of
changing the running config, shared with the mesh file's reload). When the stream ends or
cannot be opened, the client reconnects after an exponential back-off with full jitter
(0.5 s doubling up to 30 s, reset once a stream delivered a response), and the sidecar keeps
serving the last applied mesh meanwhile. With a TLS transport socket in the bootstrap the
channel is TLS (mutual when a client certificate is given), its files read again for every
stream (``control_plane_tls.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message

from proxy.config.model import Mesh
from proxy.xds import cache
from proxy.xds.control_plane_tls import ControlPlaneTls, ControlPlaneTlsError
from proxy.xds.resources import SHORT_NAMES
from proxy.xds.state import MESSAGE_CLASSES, AdsState

log = logging.getLogger("detour.xds")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
# The biggest response taken (gRPC's default is 4 MiB; a mesh of 10,000 endpoints is ~2 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How long a stream may stay silent before gRPC pings it (a dead control plane is noticed).
KEEPALIVE_SECONDS = 30


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full jitter over base * 2^n, capped (failures counts from 1)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return rng.uniform(0, ceiling)


class AdsClient:
    def __init__(
        self,
        state: AdsState,
        apply: Callable[[Mesh], Awaitable[bool]],
        rng: random.Random | None = None,
        cache_path: Path | None = None,
        tls: ControlPlaneTls | None = None,
    ) -> None:
        self.state = state
        self.cache_path = cache_path
        self.tls = tls
        self._apply = apply
        self._rng = rng or random.Random()
        self.connected = False
        self.streams = 0  # streams opened (1 + reconnects)
        self.first_applied = asyncio.Event()

    def describe(self) -> dict[str, object]:
        """For /config_dump: where the config comes from and what was accepted."""
        state = self.state
        return {
            "server": state.server,
            "tls": self.tls.describe() if self.tls is not None else None,
            "variant": state.variant,
            "node": state.node.id,
            "connected": self.connected,
            "streams": self.streams,
            "versions": {SHORT_NAMES[t]: s.version for t, s in state.types.items()},
            "subscriptions": {
                SHORT_NAMES[t]: list(s.names) for t, s in state.types.items() if s.names
            },
            "resources": {SHORT_NAMES[t]: sorted(state.accepted.of_type(t)) for t in state.types},
            "nacks": state.nacks,
            "last_nack": state.last_error,
            "applied": state.applied.source if state.applied is not None else None,
        }

    async def run(self) -> None:
        """Forever: one stream at a time, a back-off between them (first, the cached
        snapshot, if there is one)."""
        await self._start_from_cache()
        failures = 0
        while True:
            delivered = await self._one_stream()
            failures = 1 if delivered else failures + 1
            delay = backoff_delay(failures, self._rng)
            log.warning("xDS stream to %s ended; reconnecting in %.2fs", self.state.server, delay)
            await asyncio.sleep(delay)

    async def _start_from_cache(self) -> None:
        if self.cache_path is None:
            return
        cached = cache.load(self.cache_path, MESSAGE_CLASSES)
        if cached is None:
            return
        mesh = self.state.restore(cached, str(self.cache_path))
        if mesh is not None:
            log.info("xDS: started from the cached snapshot %s", self.cache_path)
            await self._apply(mesh)
            self.first_applied.set()

    def _save_cache(self) -> None:
        if self.cache_path is None:
            return
        try:
            cache.save(self.cache_path, self.state.cached())
        except OSError as err:
            log.warning("xDS cache %s not written: %s", self.cache_path, err)

    async def _one_stream(self) -> bool:
        """Run one stream until it ends; True if it delivered at least one response."""
        delivered = False
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ]
        try:
            channel = self._channel(options)
        except ControlPlaneTlsError as err:
            log.error("xDS stream to %s not opened: %s", self.state.server, err)
            return False
        try:
            async with channel:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                call = (
                    stub.DeltaAggregatedResources()
                    if self.state.variant == "delta"
                    else stub.StreamAggregatedResources()
                )
                self.streams += 1
                for request in self.state.initial_requests():
                    await call.write(request)
                self.connected = True
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return delivered
                    delivered = True
                    for request in await self._handle(response):
                        await call.write(request)
        except grpc.aio.AioRpcError as err:
            log.warning(
                "xDS stream to %s: %s %s", self.state.server, err.code().name, err.details()
            )
            return delivered
        except asyncio.CancelledError:
            raise
        except Exception as err:  # whatever ends a stream, the next one follows
            # A write on a stream the server has just cancelled raises InvalidStateError or
            # UsageError, not AioRpcError; the sidecar must reconnect all the same.
            log.warning("xDS stream to %s ended: %r", self.state.server, err)
            return delivered
        finally:
            self.connected = False

    def _channel(self, options: list[tuple[str, object]]) -> grpc.aio.Channel:
        """Plaintext, or TLS with the material read now (certificates rotate on disk)."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.state.server, options=options)
        material = self.tls.load()
        credentials = grpc.ssl_channel_credentials(material.root, material.key, material.chain)
        # The name the server's certificate must carry, whatever the address dialled is.
        options = [*options, ("grpc.ssl_target_name_override", self.tls.server_name)]
        return grpc.aio.secure_channel(self.state.server, credentials, options=options)

    async def _handle(
        self, response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
    ) -> tuple[Message, ...]:
        kind = SHORT_NAMES.get(response.type_url, response.type_url)
        version = (
            response.system_version_info
            if isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
            else response.version_info
        )
        outcome = self.state.on_response(response)
        if outcome.error is not None:
            log.error(
                "xDS %s version %s refused (NACK), the running config stays: %s",
                kind,
                version,
                outcome.error,
            )
        elif outcome.mesh is not None:
            await self._apply(outcome.mesh)
            self.first_applied.set()
            self._save_cache()
        elif outcome.waiting_for:
            log.info(
                "xDS %s version %s accepted; warming, waiting for %s",
                kind,
                version,
                ", ".join(outcome.waiting_for),
            )
        return outcome.requests
