"""Envoy's resources (listeners, route configurations, clusters, endpoints) as Detour's Mesh.

Pure: :func:`build_mesh` takes the accepted resources and the mesh file's own part (the
workload, static services, domains) and returns the mesh the sidecar runs, or raises
:class:`XdsRejected` naming the resource and field that Detour cannot represent. The
per-resource checks (:func:`check_resource`) run on each resource as it arrives, so that a
response is NACKed for the resource that is wrong; :func:`build_mesh` adds the checks that
need several resources at once (a route to a cluster that does not exist, two services
claiming one VIP).

Translations are kept per resource object in a :class:`~proxy.xds.memo.TranslationMemo`
(the ADS state's), so a rebuild translates again only the resources and services whose inputs
changed: one endpoint moved costs one ClusterLoadAssignment and one service, not the mesh.

One service per cluster host (``NAME.NAMESPACE.svc.DOMAIN``): its ports are the ports of its
subset-less clusters, its endpoints theirs (the same addresses on every port: Detour keeps one
endpoint list per service), its subsets the subset clusters (an endpoint carries a
``subset.detour.dev/NAME`` label for each subset cluster that lists it).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from proxy.config.model import (
    Endpoint,
    HttpRoute,
    IPAddress,
    Mesh,
    Protocol,
    Service,
    ServicePort,
    Subset,
    TrafficPolicy,
)
from proxy.xds.clusters import (
    BLACKHOLE,
    PASSTHROUGH,
    ClusterInfo,
    ClusterName,
    LbEndpoint,
    lb_endpoints,
    parse_cluster_name,
    translate_cluster,
)
from proxy.xds.listeners import ListenerInfo, OutboundChain, translate_listener
from proxy.xds.memo import TranslationMemo
from proxy.xds.resources import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    Refusal,
    XdsRejected,
    only_fields,
    refuse,
)
from proxy.xds.routes import ClusterLookup, VirtualHostRoutes, translate_virtual_host

SUBSET_LABEL_PREFIX = "subset.detour.dev/"


@dataclass(frozen=True)
class Resources:
    """The accepted resources of each type, by name."""

    listeners: Mapping[str, listener_pb2.Listener] = field(default_factory=dict)
    routes: Mapping[str, route_pb2.RouteConfiguration] = field(default_factory=dict)
    clusters: Mapping[str, cluster_pb2.Cluster] = field(default_factory=dict)
    endpoints: Mapping[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)

    def of_type(self, type_url: str) -> Mapping[str, Message]:
        return {
            TYPE_LISTENER: self.listeners,
            TYPE_ROUTE: self.routes,
            TYPE_CLUSTER: self.clusters,
            TYPE_ENDPOINT: self.endpoints,
        }[type_url]

    def with_type(self, type_url: str, resources: Mapping[str, Message]) -> Resources:
        name = {
            TYPE_LISTENER: "listeners",
            TYPE_ROUTE: "routes",
            TYPE_CLUSTER: "clusters",
            TYPE_ENDPOINT: "endpoints",
        }[type_url]
        return replace(self, **{name: dict(resources)})


def check_resource(
    type_url: str,
    name: str,
    message: Message,
    cluster_domain: str,
    memo: TranslationMemo | None = None,
) -> None:
    """The checks one resource passes on its own; raises XdsRejected naming the field. With
    ``memo``, the build that follows reuses what the checks translated."""
    memo = memo if memo is not None else TranslationMemo()
    with _rejecting(type_url, name):
        if type_url == TYPE_CLUSTER:
            memo.get(
                "cluster",
                (message,),
                (cluster_domain,),
                lambda: translate_cluster(message, cluster_domain),
            )
        elif type_url == TYPE_ENDPOINT:
            memo.get("endpoints", (message,), (), lambda: lb_endpoints(message))
        elif type_url == TYPE_LISTENER:
            info = memo.get("listener", (message,), (), lambda: translate_listener(message))
            for chain in info.chains:
                if chain.inline_routes is not None:
                    _route_config_hosts(chain.inline_routes, _any_cluster(cluster_domain))
        elif type_url == TYPE_ROUTE:
            _route_config_hosts(message, _any_cluster(cluster_domain))


def wanted_endpoints(clusters: Mapping[str, cluster_pb2.Cluster]) -> tuple[str, ...]:
    """The ClusterLoadAssignments the EDS clusters wait for (their EDS subscription)."""
    names = set()
    for cluster in clusters.values():
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return tuple(sorted(names))


def wanted_routes(listeners: Mapping[str, listener_pb2.Listener]) -> tuple[str, ...]:
    """The RouteConfigurations the listeners' HTTP filter chains name (their RDS
    subscription). Listeners that do not translate name none."""
    names: set[str] = set()
    for listener in listeners.values():
        try:
            info = translate_listener(listener)
        except Refusal:
            continue
        names.update(c.route_config_name for c in info.chains if c.route_config_name)
    return tuple(sorted(names))


def missing(resources: Resources, eds: Iterable[str] | None = None) -> tuple[str, ...]:
    """What the snapshot still waits for before it can be applied (Envoy's warming: a cluster
    is used once its endpoints arrived, a listener once its routes did). ``eds``: the
    clusters' ``wanted_endpoints``, when the caller has them already."""
    wanted = wanted_endpoints(resources.clusters) if eds is None else eds
    absent = [f"EDS {n}" for n in sorted(set(wanted).difference(resources.endpoints))]
    absent += [f"RDS {n}" for n in wanted_routes(resources.listeners) if n not in resources.routes]
    return tuple(absent)


# --- the mesh --------------------------------------------------------------------------------


@dataclass
class _ServiceParts:
    """What the resources say about one service, gathered before it is built."""

    host: ClusterName
    ports: dict[int, ClusterInfo] = field(default_factory=dict)  # subset-less clusters
    subsets: dict[str, list[ClusterInfo]] = field(default_factory=lambda: defaultdict(list))
    protocols: dict[int, Protocol] = field(default_factory=dict)
    vips: set[IPAddress] = field(default_factory=set)
    routes: tuple[HttpRoute, ...] | None = None
    routes_from: str = ""  # the route configuration (or listener) the routes came from
    tcp: dict[int, OutboundChain] = field(default_factory=dict)

    def every_cluster(self) -> list[ClusterInfo]:
        """The service's clusters: one per port, then the subsets'."""
        return [*self.ports.values(), *(i for infos in self.subsets.values() for i in infos)]


def build_mesh(
    resources: Resources, base: Mesh, source: str, memo: TranslationMemo | None = None
) -> Mesh:
    """The mesh: the base's workload and own services, plus one service per cluster host.
    ``memo`` keeps translations for the next build (a fresh one without), and the last
    build itself: an update that changed only endpoints rebuilds only their services."""
    memo = memo if memo is not None else TranslationMemo()
    last = memo.last_build
    if isinstance(last, _Built) and last.only_endpoints_differ(resources, base):
        try:
            built = last.with_endpoints(resources, source)
        finally:
            memo.abandon()  # the checks' translations of the new assignments: not kept
        memo.last_build = built
        return built.mesh
    try:
        built = _build(resources, base, source, memo)
    except BaseException:
        memo.abandon()
        raise
    memo.commit()
    memo.last_build = built
    return built.mesh


@dataclass(frozen=True)
class _Built:
    """A build, kept for the next one: what it was made of, the services it made and which
    of them each ClusterLoadAssignment went into.

    istiod's most frequent push is EDS alone (a pod rescheduled, scaled, or failing its
    readiness probe). When clusters, listeners, routes and the base are the very objects
    this build had and only assignments were replaced, the services built from those
    assignments are built again and every other one is this build's own object: the work
    follows what changed, not the mesh (plus one pass comparing the assignments by
    identity). The result equals what a whole build gives: endpoints reach a service only
    through its parts, which only clusters and listeners make (a test holds them equal)."""

    resources: Resources
    base: Mesh
    mesh: Mesh
    clusters: _Clusters
    parts: tuple[_ServiceParts, ...]  # of the services after the base's, in the mesh's order
    users: Mapping[str, tuple[int, ...]]  # assignment -> indexes of the parts built from it

    def only_endpoints_differ(self, resources: Resources, base: Mesh) -> bool:
        old = self.resources
        return (
            base is self.base
            and resources.clusters is old.clusters
            and resources.listeners is old.listeners
            and resources.routes is old.routes
            and resources.endpoints.keys() == old.endpoints.keys()
        )

    def with_endpoints(self, resources: Resources, source: str) -> _Built:
        old = self.resources.endpoints
        changed = [n for n, message in resources.endpoints.items() if old[n] is not message]
        services = list(self.mesh.services)
        offset = len(self.base.services)
        scratch = TranslationMemo()  # the memo's entries stay those of the last whole build
        for name in changed:
            for index in self.users.get(name, ()):
                parts = self.parts[index]
                services[offset + index] = _service(
                    parts, self.clusters, resources.endpoints, scratch
                )
        mesh = replace(self.mesh, services=tuple(services), source=source)
        return replace(self, resources=resources, mesh=mesh)


def _users(parts: tuple[_ServiceParts, ...]) -> dict[str, tuple[int, ...]]:
    """Each ClusterLoadAssignment name -> the services (by index) whose clusters use it."""
    users: dict[str, list[int]] = defaultdict(list)
    for index, entry in enumerate(parts):
        every = entry.every_cluster()
        for name in {i.eds_name or i.name for i in every if i.static_endpoints is None}:
            users[name].append(index)
    return {name: tuple(indexes) for name, indexes in users.items()}


def _build(resources: Resources, base: Mesh, source: str, memo: TranslationMemo) -> _Built:
    domain = base.cluster_domain
    infos: dict[str, ClusterInfo] = {}
    for name, cluster in resources.clusters.items():
        with _rejecting(TYPE_CLUSTER, name):
            infos[name] = memo.get(
                "cluster", (cluster,), (domain,), partial(translate_cluster, cluster, domain)
            )
    for name, info in infos.items():
        peer = info.mesh_peer
        if peer is not None and peer.trust_domain != base.trust_domain:
            raise XdsRejected(
                TYPE_CLUSTER,
                name,
                "transport_socket_matches",
                peer.uri,
                f"not of the mesh's trust domain ({base.trust_domain})",
            )
    clusters = _Clusters(infos, domain, memo)
    for info in infos.values():
        clusters.add(info)
    allow_any = _apply_listeners(resources, clusters)
    parts = tuple(clusters.sorted_parts())
    services = [_memo_service(entry, clusters, resources.endpoints, memo) for entry in parts]
    services = list(base.services) + services
    _check_unique(services)
    policy = base.outbound_traffic_policy
    if allow_any is not None:
        policy = "ALLOW_ANY" if allow_any else "REGISTRY_ONLY"
    mesh = replace(base, services=tuple(services), outbound_traffic_policy=policy, source=source)
    return _Built(resources, base, mesh, clusters, parts, _users(parts))


class _Clusters:
    """The clusters by name and the services they make, and the stand-ins for clusters that
    a listener or route names but the snapshot does not have.

    Envoy takes such a listener or route and answers it as "no cluster" (503 NC, or a TCP
    connection closed at once); a control plane sends one when it removes a service, the
    clusters going before the listeners and routes that name them. Refusing it would keep
    the removed service serving; here it stands in as a cluster with no endpoints, whose
    requests get 503 and whose connections are closed, until the listener or route goes.
    """

    def __init__(self, infos: dict[str, ClusterInfo], domain: str, memo: TranslationMemo) -> None:
        self.infos = infos
        self.domain = domain
        self.memo = memo
        self.parts: dict[str, _ServiceParts] = {}
        self.absent: set[str] = set()

    def sorted_parts(self) -> list[_ServiceParts]:
        return [entry for _, entry in sorted(self.parts.items())]

    def add(self, info: ClusterInfo) -> None:
        if info.target is None:
            return
        target = info.target
        entry = self.parts.setdefault(target.host, _ServiceParts(target))
        if target.subset:
            entry.subsets[target.subset].append(info)
        else:
            entry.ports[target.port] = info

    def target(self, name: str, where: str) -> ClusterName:
        info = self.infos.get(name)
        if info is None:
            try:
                target = parse_cluster_name(name, self.domain)
            except Refusal as refusal:
                raise refuse(where, name, f"no such cluster ({refusal.reason})") from None
            info = ClusterInfo(name, target, TrafficPolicy(), False, None, _NO_ENDPOINTS)
            self.infos[name] = info
            self.absent.add(name)
            self.add(info)
        if info.target is None:
            raise refuse(where, name, "not a service's cluster")
        return info.target

    def port_cluster(self, target: ClusterName, where: str) -> ClusterInfo:
        """The subset-less cluster of ``target``'s port (a stand-in when there is none)."""
        entry = self.parts[target.host]
        if target.port not in entry.ports:
            self.target(f"outbound|{target.port}||{target.host}", where)
        return entry.ports[target.port]


_NO_ENDPOINTS = endpoint_pb2.ClusterLoadAssignment()


def _apply_listeners(resources: Resources, clusters: _Clusters) -> bool | None:
    """Protocols, VIPs, routes and TCP settings from the listeners; returns the virtual
    outbound listener's policy (None when there is none)."""
    allow_any: bool | None = None
    for name, listener in sorted(resources.listeners.items()):
        with _rejecting(TYPE_LISTENER, name):
            info: ListenerInfo = clusters.memo.get(
                "listener", (listener,), (), partial(translate_listener, listener)
            )
        if info.allow_any is not None:
            allow_any = info.allow_any
        for index, chain in enumerate(info.chains):
            where = f"filter_chains[{index}]"
            if chain.kind == "tcp":
                with _rejecting(TYPE_LISTENER, name):
                    _tcp_chain(chain, where, clusters)
                continue
            if chain.inline_routes is not None:
                config, type_url, owner = chain.inline_routes, TYPE_LISTENER, name
            else:
                config = resources.routes.get(chain.route_config_name)
                type_url, owner = TYPE_ROUTE, chain.route_config_name
                if config is None:  # warming: build_mesh is called once it is here
                    raise XdsRejected(
                        TYPE_LISTENER,
                        name,
                        f"{where}.rds.route_config_name",
                        chain.route_config_name,
                        "no such route configuration",
                    )
            with _rejecting(type_url, owner):
                hosts = _routes_of(config, clusters)
            for host in hosts:
                with _rejecting(type_url, owner):
                    _http_host(host, chain, owner, clusters)
    return allow_any


def _tcp_chain(chain: OutboundChain, where: str, clusters: _Clusters) -> None:
    field_name = f"{where}.filters[0].typed_config.cluster"
    if chain.cluster in (PASSTHROUGH, BLACKHOLE):
        raise refuse(field_name, chain.cluster, "only the use_original_dst listener's default")
    target = clusters.target(chain.cluster, field_name)
    if target.subset:
        raise refuse(field_name, chain.cluster, "a TCP route goes to a cluster without subset")
    if target.port != chain.port:
        raise refuse(field_name, chain.cluster, f"the listener's port is {chain.port}")
    entry = clusters.parts[target.host]
    _claim_protocol(entry, chain.port, "tcp", field_name)
    entry.vips.update(chain.addresses)
    entry.tcp[chain.port] = chain


def _http_host(
    host: VirtualHostRoutes, chain: OutboundChain, owner: str, clusters: _Clusters
) -> None:
    target = host.target
    entry = clusters.parts[target.host]
    protocol: Protocol = "http2" if clusters.port_cluster(target, "virtual_hosts").http2 else "http"
    _claim_protocol(entry, target.port, protocol, "virtual_hosts")
    entry.vips.update(chain.addresses)
    entry.vips.update(clusters.memo.get("ip domains", (host,), (), lambda: _ip_domains(host)))
    if entry.routes is not None and entry.routes != host.routes:
        raise refuse(
            "virtual_hosts",
            target.host,
            f"routes differ from those of {entry.routes_from}: Detour keeps one "
            "routing table per service",
        )
    entry.routes, entry.routes_from = host.routes, owner


def _ip_domains(host: VirtualHostRoutes) -> tuple[IPAddress, ...]:
    """The virtual host's domains that are addresses (``VIP`` or ``VIP:PORT``): its VIPs."""
    return tuple(
        ipaddress.ip_address(d.rsplit(":", 1)[0] if d.count(":") == 1 else d.strip("[]"))
        for d in host.ip_domains
    )


def _claim_protocol(entry: _ServiceParts, port: int, protocol: Protocol, where: str) -> None:
    earlier = entry.protocols.get(port)
    if earlier is not None and earlier != protocol:
        raise refuse(
            where,
            f"{entry.host.host}:{port}",
            f"served as {protocol} here and as {earlier} by another listener",
        )
    entry.protocols[port] = protocol


def _route_config_hosts(
    config: route_pb2.RouteConfiguration, cluster_of: ClusterLookup
) -> list[VirtualHostRoutes]:
    only_fields(config, "", ("name", "virtual_hosts"), ("validate_clusters",))
    hosts = []
    for index, virtual_host in enumerate(config.virtual_hosts):
        translated = translate_virtual_host(virtual_host, f"virtual_hosts[{index}]", cluster_of)
        if translated is not None:
            hosts.append(translated)
    return hosts


def _routes_of(
    config: route_pb2.RouteConfiguration, clusters: _Clusters
) -> list[VirtualHostRoutes]:
    """The route configuration's virtual hosts, translated once per configuration object.
    The clusters it names are looked up again on every build (a named cluster that is
    absent gets its stand-in in this build too)."""

    def translate() -> tuple[list[VirtualHostRoutes], list[tuple[str, str]]]:
        named: list[tuple[str, str]] = []

        def lookup(name: str, where: str) -> ClusterName:
            named.append((name, where))
            return clusters.target(name, where)

        return _route_config_hosts(config, lookup), named

    hosts, named = clusters.memo.get("routes", (config,), (clusters.domain,), translate)
    for name, where in named:
        clusters.target(name, where)
    return hosts


def _any_cluster(cluster_domain: str) -> ClusterLookup:
    """For the checks of one route configuration on its own: any well-formed name."""

    def lookup(name: str, where: str) -> ClusterName:
        try:
            return parse_cluster_name(name, cluster_domain)
        except Refusal as refusal:
            raise refuse(where, name, refusal.reason) from None

    return lookup


def _memo_service(
    entry: _ServiceParts,
    clusters: _Clusters,
    assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment],
    memo: TranslationMemo,
) -> Service:
    """The service of ``entry``, built again only when one of its inputs changed: its
    clusters' translations, their ClusterLoadAssignments, its routes and TCP chains (each
    the same object while its resource is), and the plain values gathered from listeners."""
    ports = sorted(entry.ports.items())
    subsets = sorted((name, tuple(infos)) for name, infos in entry.subsets.items())
    every = [info for _, info in ports] + [i for _, infos in subsets for i in infos]
    used = tuple(assignments.get(i.eds_name or i.name) for i in every)
    tcp = sorted(entry.tcp.items())
    inputs = (*every, *used, entry.routes, *(chain for _, chain in tcp))
    values = (
        entry.host,
        tuple(port for port, _ in ports),
        tuple((name, len(infos)) for name, infos in subsets),
        tuple(sorted(entry.protocols.items())),
        frozenset(entry.vips),
        tuple(port for port, _ in tcp),
        tuple(i.name in clusters.absent for i in every),
    )
    return memo.get("service", inputs, values, lambda: _service(entry, clusters, assignments, memo))


def _service(
    entry: _ServiceParts,
    clusters: _Clusters,
    assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment],
    memo: TranslationMemo,
) -> Service:
    host = entry.host
    if not entry.ports:
        some = next(iter(entry.subsets.values()))[0]
        assert some.target is not None  # only a service's clusters are in its parts
        raise XdsRejected(
            TYPE_CLUSTER,
            some.name,
            "name",
            some.name,
            f"a subset cluster needs outbound|{some.target.port}||{host.host}",
        )
    ports = tuple(
        ServicePort(
            f"{entry.protocols.get(port, 'tcp')}-{port}", port, entry.protocols.get(port, "tcp")
        )
        for port in sorted(entry.ports)
    )
    by_port = {
        port: _endpoints_of(info, assignments, memo) for port, info in sorted(entry.ports.items())
    }
    endpoints = _merge_ports(ports, by_port, entry, _mesh_account(entry, clusters.absent))
    endpoints, subsets = _with_subsets(endpoints, entry, assignments, memo)
    policy = _one_policy(entry, clusters.absent)
    vips = _vips(entry)
    return Service(
        name=host.name,
        namespace=host.namespace,
        vips=vips,
        ports=ports,
        endpoints=endpoints,
        policy=policy,
        subsets=subsets,
        http_routes=entry.routes or (),
    )


def _endpoints_of(
    info: ClusterInfo,
    assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment],
    memo: TranslationMemo,
) -> tuple[LbEndpoint, ...]:
    if info.static_endpoints is not None:
        with _rejecting(TYPE_CLUSTER, info.name):
            return lb_endpoints(info.static_endpoints)
    name = info.eds_name or info.name
    assignment = assignments.get(name)
    if assignment is None:
        raise XdsRejected(
            TYPE_CLUSTER,
            info.name,
            "eds_cluster_config",
            name,
            "no endpoints (ClusterLoadAssignment) yet",
        )
    with _rejecting(TYPE_ENDPOINT, name):
        return memo.get("endpoints", (assignment,), (), lambda: lb_endpoints(assignment))


def _mesh_account(entry: _ServiceParts, absent: set[str]) -> str | None:
    """The service account the service's meshed endpoints run as: every cluster of the
    service (ports and subsets) must verify the same SPIFFE ID, as Detour checks one per
    endpoint; None when its clusters have no mesh mTLS. Stand-ins for absent clusters have
    no endpoints of their own and say nothing about it."""
    every = [c for c in entry.every_cluster() if c.name not in absent]
    if not every:
        return None
    first = every[0].mesh_peer
    for info in every[1:]:
        if info.mesh_peer != first:
            raise XdsRejected(
                TYPE_CLUSTER,
                info.name,
                "transport_socket_matches",
                info.mesh_peer.uri if info.mesh_peer else "<plaintext>",
                f"differs from {every[0].name}'s "
                f"({first.uri if first else 'plaintext'}): every cluster of "
                f"{entry.host.host} must verify the same SPIFFE ID",
            )
    return first.service_account if first is not None else None


def _merge_ports(
    ports: tuple[ServicePort, ...],
    by_port: Mapping[int, tuple[LbEndpoint, ...]],
    entry: _ServiceParts,
    account: str | None,
) -> tuple[Endpoint, ...]:
    """One Endpoint per address, with its port for each service port. Every port must list
    the same addresses with the same weight, labels and tlsMode. A meshed endpoint (marked
    tlsMode: istio) of a service with mesh mTLS runs as ``account``."""
    first_port = ports[0].port
    reference = {e.address: e for e in by_port[first_port]}
    endpoint_ports: dict[IPAddress, list[tuple[str, int]]] = defaultdict(list)
    for port in ports:
        found = {e.address: e for e in by_port[port.port]}
        if set(found) != set(reference) or any(
            (found[a].weight, found[a].labels, found[a].meshed)
            != (reference[a].weight, reference[a].labels, reference[a].meshed)
            for a in found
        ):
            cluster = entry.ports[port.port].name
            raise XdsRejected(
                TYPE_ENDPOINT,
                cluster,
                "endpoints",
                sorted(map(str, found)),
                f"differ from those of port {first_port} of {entry.host.host}: "
                "Detour keeps one endpoint list per service",
            )
        for address, endpoint in found.items():
            endpoint_ports[address].append((port.name, endpoint.port))
    return tuple(
        Endpoint(
            address=address,
            weight=endpoint.weight,
            labels=endpoint.labels,
            ports=tuple(endpoint_ports[address]),
            service_account=account if endpoint.meshed else None,
        )
        for address, endpoint in reference.items()
    )


def _with_subsets(
    endpoints: tuple[Endpoint, ...],
    entry: _ServiceParts,
    assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment],
    memo: TranslationMemo,
) -> tuple[tuple[Endpoint, ...], tuple[Subset, ...]]:
    labels: dict[IPAddress, list[tuple[str, str]]] = defaultdict(list)
    subsets = []
    known = {e.address for e in endpoints}
    for subset, infos in sorted(entry.subsets.items()):
        label = (SUBSET_LABEL_PREFIX + subset, "true")
        subsets.append(Subset(subset, (label,)))
        members: set[IPAddress] = set()
        for info in infos:
            for endpoint in _endpoints_of(info, assignments, memo):
                if endpoint.address not in known:
                    raise XdsRejected(
                        TYPE_ENDPOINT,
                        info.eds_name or info.name,
                        "endpoints",
                        str(endpoint.address),
                        f"not an endpoint of the service's own clusters ({entry.host.host})",
                    )
                members.add(endpoint.address)
        for address in members:
            labels[address].append(label)
    marked = tuple(
        replace(e, labels=e.labels + tuple(labels[e.address])) if e.address in labels else e
        for e in endpoints
    )
    return marked, tuple(subsets)


def _one_policy(entry: _ServiceParts, absent: set[str]) -> TrafficPolicy:
    """Detour applies one traffic policy per service: every cluster of the service must have
    the same one (TCP ports add their tcp_proxy settings); stand-ins for absent clusters
    take the others'."""
    clusters = [c for c in entry.every_cluster() if c.name not in absent]
    if not clusters:
        return TrafficPolicy()
    policy = clusters[0].policy
    for info in clusters[1:]:
        if info.policy != policy:
            raise XdsRejected(
                TYPE_CLUSTER,
                info.name,
                "<traffic policy>",
                info.name,
                f"differs from {clusters[0].name}'s: Detour applies one traffic "
                "policy to every port and subset of a service",
            )
    settings = {(c.idle_timeout, c.connect_attempts) for c in entry.tcp.values()}
    if len(settings) > 1:
        raise XdsRejected(
            TYPE_LISTENER,
            entry.host.host,
            "tcp_proxy",
            sorted(map(str, settings)),
            "one idle_timeout and max_connect_attempts per service",
        )
    if settings:
        idle, attempts = settings.pop()
        policy = replace(
            policy,
            connect_attempts=attempts,
            idle_timeout=idle if idle is not None else policy.idle_timeout,
        )
    return policy


def _vips(entry: _ServiceParts) -> tuple[IPAddress, ...]:
    vips = sorted(entry.vips, key=lambda v: (v.version, v))
    for version in (4, 6):
        same = [v for v in vips if v.version == version]
        if len(same) > 1:
            raise XdsRejected(
                TYPE_LISTENER,
                entry.host.host,
                "address",
                [str(v) for v in same],
                f"a service has one IPv{version} VIP",
            )
    return tuple(vips)


def _check_unique(services: list[Service]) -> None:
    keys: dict[str, Service] = {}
    vips: dict[IPAddress, str] = {}
    for service in services:
        if service.key in keys:
            raise XdsRejected(
                TYPE_CLUSTER,
                service.key,
                "name",
                service.key,
                "a service of the mesh file has this name",
            )
        keys[service.key] = service
        for vip in service.vips:
            if vip in vips:
                raise XdsRejected(
                    TYPE_LISTENER, service.key, "address", str(vip), f"also the VIP of {vips[vip]}"
                )
            vips[vip] = service.key


class _rejecting:
    """Turns a Refusal raised inside into an XdsRejected naming the resource."""

    def __init__(self, type_url: str, name: str) -> None:
        self.type_url, self.name = type_url, name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, _traceback: object) -> None:
        if isinstance(error, Refusal):
            raise XdsRejected(
                self.type_url, self.name, error.field, error.value, error.reason
            ) from None
