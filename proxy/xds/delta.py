"""The Incremental (Delta) ADS protocol as a state machine, without I/O.

Delta differs from State of the World in what travels, not in what is accepted: a response
carries only the resources that changed (each with its own version) and the names removed;
a subscription changes by the names added and the names dropped; a new stream says which
resources, at which versions, the sidecar already holds (``initial_resource_versions``), so
the server sends only the difference. An ACK names the response's nonce, a NACK adds an
``error_detail``; a NACKed response changes nothing. Cluster and Listener subscriptions are
wildcard (the legacy form: no names on the first request), as Envoy's are.

Everything else — each resource's checks, warming, the mesh built from the accepted
resources, the cache — is :class:`~proxy.xds.state.AdsState`'s, shared with SotW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from proxy.xds.resources import XdsRejected
from proxy.xds.state import (
    INVALID_ARGUMENT,
    SUBSCRIPTION_ORDER,
    WILDCARD_TYPES,
    AdsState,
    Outcome,
)
from proxy.xds.translate import Resources


@dataclass
class DeltaState(AdsState):
    variant: ClassVar[str] = "delta"

    # --- requests ---------------------------------------------------------------------------

    def initial_requests(self) -> tuple[discovery_pb2.DeltaDiscoveryRequest, ...]:
        """A new stream: every type subscribed so far, the names it wants and the versions of
        the resources it holds; the node on the first request only."""
        requests: list[discovery_pb2.DeltaDiscoveryRequest] = []
        for type_url in SUBSCRIPTION_ORDER:
            state = self.types[type_url]
            if type_url in WILDCARD_TYPES or state.names:
                state.subscribed = True
                state.nonce = ""
                request = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url,
                    resource_names_subscribe=list(state.names),
                    initial_resource_versions=state.resource_versions,
                )
                if not requests:
                    request.node.CopyFrom(self.node)
                requests.append(request)
        return tuple(requests)

    def _reply(
        self, type_url: str, nonce: str, error: str | None = None
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        return request

    def _subscription_change(
        self, type_url: str, before: tuple[str, ...], after: tuple[str, ...]
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=sorted(set(after) - set(before)),
            resource_names_unsubscribe=sorted(set(before) - set(after)),
        )

    # --- responses --------------------------------------------------------------------------

    def on_response(self, response: discovery_pb2.DeltaDiscoveryResponse) -> Outcome:
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:  # a type never asked for: nothing to answer
            return Outcome(())
        state.nonce = response.nonce
        try:
            candidate, versions = self._candidate(response)
            mesh, gaps = self._complete(
                candidate, self._source(type_url, response.system_version_info)
            )
        except XdsRejected as rejected:
            error = self._refused(rejected)
            return Outcome((self._reply(type_url, response.nonce, error),), error=error)
        self.accepted = candidate
        state.version = response.system_version_info
        state.resource_versions = versions
        requests = [self._reply(type_url, response.nonce), *self._follow_subscriptions()]
        if mesh is not None:
            self.applied = mesh
        return Outcome(tuple(requests), mesh=mesh, waiting_for=gaps)

    def _candidate(
        self, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> tuple[Resources, dict[str, str]]:
        """The accepted resources of the type with this response's changes applied, and each
        resource's version; raises XdsRejected."""
        type_url = response.type_url
        decoded = self._decode(type_url, (r.resource for r in response.resources))
        # _decode keeps the order (and refuses a name twice): the i-th name is resources[i]'s.
        for index, (item, name) in enumerate(zip(response.resources, decoded, strict=True)):
            if item.name and item.name != name:
                raise XdsRejected(
                    type_url,
                    item.name,
                    f"resources[{index}].name",
                    item.name,
                    f"differs from the name inside the resource ({name})",
                )
        state = self.types[type_url]
        current = dict(self.accepted.of_type(type_url))
        versions = dict(state.resource_versions)
        for name in response.removed_resources:
            current.pop(name, None)
            versions.pop(name, None)
        changed = {name: r.version for r, name in zip(response.resources, decoded, strict=True)}
        if type_url not in WILDCARD_TYPES:
            # A resource not (or no longer) asked for is dropped. What is held already is
            # only what is asked for (a subscription change trims it), so only this
            # response's resources are filtered, not every one held.
            asked = set(state.names)
            changed = {n: v for n, v in changed.items() if n in asked}
        current.update((name, decoded[name]) for name in changed)
        versions.update(changed)
        return self.accepted.with_type(type_url, current), versions
