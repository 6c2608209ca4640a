"""The ADS protocol as a state machine, without I/O: what both variants share, and State of
the World.

:class:`AdsState` holds what a sidecar accepted, which names it subscribes to, warming and
the mesh built from it; :class:`SotwState` takes each DiscoveryResponse and says what to send
back (the ACK or the NACK, and any change of subscription) and, when the resources are
complete, the mesh to run (the Delta variant is :mod:`proxy.xds.delta`). The rules, from
Envoy's xDS protocol document:

- a response is ACKed with its ``version_info`` and ``nonce``; it is NACKed with the last
  accepted version, its nonce and an ``error_detail`` naming the resource and field; a NACKed
  response changes nothing;
- Listener and Cluster responses carry every resource (wildcard subscriptions), so a name
  missing from one is removed; endpoint and route responses carry the named resources they
  update, and the subscription (``resource_names``) follows the clusters and listeners that
  need them (an EDS cluster's ClusterLoadAssignment, an HTTP listener's RouteConfiguration);
- warming: a mesh is built only when every cluster has its endpoints and every listener its
  routes; until then the previous mesh keeps serving.

The cost of an update follows what it changed: translations are kept per resource object
(:mod:`proxy.xds.memo`), and a State of the World response's resource whose bytes are those
of the one accepted before is that same object again (neither decoded nor checked twice).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message
from google.rpc import status_pb2

from proxy.config.model import Mesh
from proxy.xds.cache import CachedType
from proxy.xds.memo import TranslationMemo
from proxy.xds.resources import (
    SHORT_NAMES,
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    Refusal,
    XdsRejected,
    resource_name,
    unpack,
)
from proxy.xds.translate import (
    Resources,
    build_mesh,
    check_resource,
    missing,
    wanted_endpoints,
    wanted_routes,
)

MESSAGE_CLASSES = {
    TYPE_LISTENER: listener_pb2.Listener,
    TYPE_ROUTE: route_pb2.RouteConfiguration,
    TYPE_CLUSTER: cluster_pb2.Cluster,
    TYPE_ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}
WILDCARD_TYPES = (TYPE_CLUSTER, TYPE_LISTENER)
# Envoy's order: clusters (then their endpoints) before listeners (then their routes).
SUBSCRIPTION_ORDER = (TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE)
INVALID_ARGUMENT = 3  # google.rpc.Code


@dataclass
class TypeState:
    version: str = ""  # the last accepted version_info
    nonce: str = ""  # the last response's nonce
    names: tuple[str, ...] = ()  # the subscription (empty on wildcard types)
    subscribed: bool = False
    # Delta only: each accepted resource's version, sent back on a new stream.
    resource_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one response leads to."""

    requests: tuple[discovery_pb2.DiscoveryRequest, ...]
    mesh: Mesh | None = None  # complete and new: apply it
    error: str | None = None  # the NACK's message
    waiting_for: tuple[str, ...] = ()  # warming: what is still missing


@dataclass
class AdsState:
    """One sidecar's view of the ADS stream, whichever the variant; it survives reconnects
    (what it sends on a new stream tells the server what it already has)."""

    variant: ClassVar[str]
    node: base_pb2.Node
    base: Mesh
    server: str
    accepted: Resources = field(default_factory=Resources)
    types: dict[str, TypeState] = field(
        default_factory=lambda: {t: TypeState() for t in SUBSCRIPTION_ORDER}
    )
    applied: Mesh | None = None
    nacks: int = 0
    last_error: str = ""
    memo: TranslationMemo = field(default_factory=TranslationMemo, repr=False)
    # wanted_endpoints of the last clusters mapping asked about (the same object while CDS
    # does not change): every response would otherwise walk every cluster.
    _eds: tuple[object, tuple[str, ...]] = field(default=(None, ()), repr=False)

    # --- what a variant provides ---------------------------------------------------------------

    def initial_requests(self) -> tuple[Message, ...]:
        raise NotImplementedError

    def on_response(self, response: Any) -> Outcome:
        """What to answer to ``response`` (its variant's message), and the mesh to apply."""
        raise NotImplementedError

    def _subscription_change(
        self, type_url: str, before: tuple[str, ...], after: tuple[str, ...]
    ) -> Message:
        """The request that moves the subscription of ``type_url`` from ``before`` to ``after``."""
        raise NotImplementedError

    # --- shared: decoding, warming, building --------------------------------------------------

    def _decode(
        self,
        type_url: str,
        packed: Iterable[AnyMessage],
        known: Mapping[bytes, tuple[str, Message]] | None = None,
    ) -> dict[str, Message]:
        """The resources of one response by name, each checked on its own (XdsRejected).
        A resource whose bytes are in ``known`` (those accepted last time) is taken as the
        message it was then, already checked."""
        decoded: dict[str, Message] = {}
        domain = self.base.cluster_domain
        for index, item in enumerate(packed):
            same = known.get(item.value) if known is not None else None
            if same is not None and item.type_url == type_url:
                name, message = same
                if name in decoded:
                    raise XdsRejected(type_url, name, "name", name, "twice in one response")
                decoded[name] = message
                continue
            try:
                message = unpack(item, MESSAGE_CLASSES[type_url], f"resources[{index}]")
            except Refusal as refusal:
                raise XdsRejected(
                    type_url, f"resources[{index}]", refusal.field, refusal.value, refusal.reason
                ) from None
            name = resource_name(message)
            if name in decoded:
                raise XdsRejected(type_url, name, "name", name, "twice in one response")
            check_resource(type_url, name, message, domain, self.memo)
            decoded[name] = message
        return decoded

    def _complete(self, candidate: Resources, source: str) -> tuple[Mesh | None, tuple[str, ...]]:
        """The mesh of ``candidate`` (None while warming) and what is still missing; raises
        XdsRejected when the resources do not make a mesh together."""
        gaps = missing(candidate, self._wanted_endpoints(candidate.clusters))
        if gaps or (candidate == self.accepted and self.applied is not None):
            return None, gaps  # warming, or nothing changed (the mesh running is this one)
        return build_mesh(candidate, self.base, source, self.memo), gaps

    def _refused(self, rejected: XdsRejected) -> str:
        self.nacks += 1
        self.last_error = str(rejected)
        return self.last_error

    def _follow_subscriptions(self) -> list[Message]:
        """Endpoints follow the clusters, routes the listeners: a changed list of names is a
        new request of that type."""
        requests = []
        for type_url, wanted in (
            (TYPE_ENDPOINT, self._wanted_endpoints(self.accepted.clusters)),
            (TYPE_ROUTE, wanted_routes(self.accepted.listeners)),
        ):
            state = self.types[type_url]
            if wanted == state.names:
                continue
            before, state.names = state.names, wanted
            asked = set(wanted)  # not the tuple: a lookup per name held
            kept = {n: m for n, m in self.accepted.of_type(type_url).items() if n in asked}
            self.accepted = self.accepted.with_type(type_url, kept)
            state.resource_versions = {
                n: v for n, v in state.resource_versions.items() if n in asked
            }
            state.subscribed = True
            requests.append(self._subscription_change(type_url, before, wanted))
        return requests

    def _wanted_endpoints(self, clusters: Mapping[str, Any]) -> tuple[str, ...]:
        """``wanted_endpoints(clusters)``, walked once per clusters mapping (accepted
        resources are never changed in place: a response makes new mappings)."""
        seen, names = self._eds
        if seen is not clusters:
            names = wanted_endpoints(clusters)
            self._eds = (clusters, names)
        return names

    def _source(self, type_url: str, version: str) -> str:
        versions = {t: s.version for t, s in self.types.items()}
        versions[type_url] = version
        shown = ", ".join(f"{SHORT_NAMES[t]} {versions[t] or '-'}" for t in SUBSCRIPTION_ORDER)
        return f"xds {self.server} ({shown})"

    # --- the cache on disk -------------------------------------------------------------------

    def cached(self) -> dict[str, CachedType]:
        """What to keep on disk: the accepted resources and versions of every type."""
        return {
            t: CachedType(self.types[t].version, dict(self.accepted.of_type(t)))
            for t in SUBSCRIPTION_ORDER
        }

    def restore(self, cached: dict[str, CachedType], where: str) -> Mesh | None:
        """Start from a cached snapshot: the mesh it builds (None, state unchanged, when it
        does not build on this base). The versions are sent on the first stream, so the
        control plane sends only what changed since."""
        resources = Resources()
        for type_url, entry in cached.items():
            if type_url in MESSAGE_CLASSES:
                resources = resources.with_type(type_url, entry.resources)
        try:
            if missing(resources):
                raise XdsRejected(TYPE_CLUSTER, where, "<cache>", missing(resources), "incomplete")
            mesh = build_mesh(resources, self.base, f"xds cache {where}", self.memo)
        except XdsRejected as rejected:
            logging.getLogger("detour.xds").warning("xDS cache %s not used: %s", where, rejected)
            return None
        self.accepted = resources
        for type_url, entry in cached.items():
            if type_url in self.types:
                self.types[type_url].version = entry.version
        self._follow_subscriptions()
        self.applied = mesh
        return mesh

    def rebuild(self, base: Mesh) -> Mesh | None:
        """The mesh on a new base (the mesh file changed); None while warming. Raises
        XdsRejected when the new base and the resources clash."""
        if missing(self.accepted):
            self.base = base
            return None
        mesh = build_mesh(
            self.accepted, base, self.applied.source if self.applied else "xds", self.memo
        )
        self.base, self.applied = base, mesh
        return mesh


@dataclass
class SotwState(AdsState):
    """State of the World: every response carries the whole set of its type (wildcard
    types) or of the names subscribed, with one version."""

    variant: ClassVar[str] = "sotw"
    # type -> the bytes of each resource of its last accepted response -> (name, message)
    known: dict[str, dict[bytes, tuple[str, Message]]] = field(default_factory=dict, repr=False)

    # --- requests ---------------------------------------------------------------------------

    def initial_requests(self) -> tuple[discovery_pb2.DiscoveryRequest, ...]:
        """A new stream: every type subscribed so far (CDS and LDS at least), with the
        versions already held and no nonce."""
        requests = []
        for type_url in SUBSCRIPTION_ORDER:
            state = self.types[type_url]
            if type_url in WILDCARD_TYPES or state.names:
                state.subscribed = True
                state.nonce = ""
                requests.append(self._request(type_url))
        return tuple(requests)

    def _request(self, type_url: str, error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        state = self.types[type_url]
        request = discovery_pb2.DiscoveryRequest(
            version_info=state.version,
            node=self.node,
            resource_names=list(state.names),
            type_url=type_url,
            response_nonce=state.nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return request

    def _subscription_change(
        self, type_url: str, before: tuple[str, ...], after: tuple[str, ...]
    ) -> discovery_pb2.DiscoveryRequest:
        return self._request(type_url)  # SotW restates the whole list, with its own nonce

    # --- responses --------------------------------------------------------------------------

    def on_response(self, response: discovery_pb2.DiscoveryResponse) -> Outcome:
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:  # a type never asked for (SDS today): nothing to answer
            return Outcome(())
        state.nonce = response.nonce
        try:
            candidate, known = self._candidate(response)
            mesh, gaps = self._complete(candidate, self._source(type_url, response.version_info))
        except XdsRejected as rejected:
            error = self._refused(rejected)
            return Outcome((self._request(type_url, error),), error=error)
        self.accepted = candidate
        self.known[type_url] = known
        state.version = response.version_info
        requests = [self._request(type_url), *self._follow_subscriptions()]
        if mesh is not None:
            self.applied = mesh
        return Outcome(tuple(requests), mesh=mesh, waiting_for=gaps)

    def _candidate(
        self, response: discovery_pb2.DiscoveryResponse
    ) -> tuple[Resources, dict[bytes, tuple[str, Message]]]:
        """The accepted resources with this response's, and its resources by their bytes."""
        type_url = response.type_url
        decoded = self._decode(type_url, response.resources, self.known.get(type_url))
        # _decode keeps the order (and refuses a name twice): the i-th name is resources[i]'s.
        known = {
            item.value: (name, decoded[name])
            for item, name in zip(response.resources, decoded, strict=True)
        }
        if type_url in WILDCARD_TYPES:
            held = self.accepted.of_type(type_url)
            if len(held) == len(decoded) and all(held.get(n) is m for n, m in decoded.items()):
                # Resent unchanged (SotW resends every cluster and listener with each
                # version): the same mapping, so the build sees that only endpoints moved.
                return self.accepted, known
            return self.accepted.with_type(type_url, decoded), known
        names = set(self.types[type_url].names)  # a set: one lookup per resource
        kept = {n: m for n, m in self.accepted.of_type(type_url).items() if n in names}
        kept.update((n, m) for n, m in decoded.items() if n in names)
        return self.accepted.with_type(type_url, kept), known
