"""MeshNames: every form under which a stub resolver asks for a mesh service gets its VIPs.

The decisive tests walk the exact query sequence glibc's stub sends (``stub_candidates``) and
check that the first name the mesh answers is the right service, and that nothing before it
leaked upstream. The rest pin down the table: NXDOMAIN inside the mesh domains, forwarding
outside them, label-exact domain checks, the short-name rule, and reloads.
"""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config.model import Mesh, Service, Workload
from proxy.dns.names import Found, MeshNames, NoSuchName, NotMesh
from proxy.dns.resolvconf import ResolvConf, stub_candidates

SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com")
NDOTS1 = ResolvConf(nameservers=("10.96.0.10",), search=SEARCH, ndots=1)
NDOTS5 = ResolvConf(nameservers=("10.96.0.10",), search=SEARCH, ndots=5)

BACKEND_V4, BACKEND_V6 = "240.240.0.1", "fd00:240::1"
DB_V4 = "240.240.0.2"


def service(name: str, namespace: str, *vips: str) -> Service:
    return Service(
        name=name,
        namespace=namespace,
        vips=tuple(ipaddress.ip_address(v) for v in vips),
        ports=(),
    )


BACKEND = service("backend", "default", BACKEND_V4, BACKEND_V6)
DB = service("db", "data", DB_V4)


def mesh(*services: Service, namespace: str = "default", domain: str = "cluster.local") -> Mesh:
    return Mesh(services=services, workload=Workload(namespace=namespace), cluster_domain=domain)


def names(*services: Service, namespace: str = "default", search=SEARCH) -> MeshNames:
    return MeshNames.build(mesh(*services, namespace=namespace), search)


@pytest.fixture
def table() -> MeshNames:
    """Two services in two namespaces; the workload lives in ``default``."""
    return names(BACKEND, DB)


def forms(name: str, namespace: str, *, short: bool = True) -> set[str]:
    """Every name the brief says must answer: bare forms, and each one plus each search domain."""
    bare = [
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]
    if short:
        bare.append(name)
    return {*bare, *(f"{b}.{s}" for b in bare for s in SEARCH)}


def assert_found(answer: object, key: str) -> Found:
    assert isinstance(answer, Found), answer
    assert answer.service_key == key
    return answer


# --- every form of every name ---------------------------------------------------------------------


def test_every_form_of_the_workload_namespace_service_answers(table: MeshNames) -> None:
    expected = forms("backend", "default")
    for name in expected:
        answer = assert_found(table.lookup(name), "backend.default")
        assert answer == Found(v4=(BACKEND_V4,), v6=(BACKEND_V6,), service_key="backend.default")
    assert set(table.names_of("backend.default")) == expected


def test_every_form_of_a_service_in_another_namespace_answers(table: MeshNames) -> None:
    # The one exception: "db" + "default.svc.cluster.local" has the shape of the FQDN of a
    # service db in namespace default, which does not exist, so it is NXDOMAIN, not db.data.
    fqdn_of_nothing = "db.default.svc.cluster.local"
    expected = forms("db", "data") - {fqdn_of_nothing}
    for name in expected:
        answer = assert_found(table.lookup(name), "db.data")
        assert answer == Found(v4=(DB_V4,), v6=(), service_key="db.data")
    assert set(table.names_of("db.data")) == expected
    assert table.lookup(fqdn_of_nothing) == NoSuchName()


def test_the_forms_are_the_expected_strings(table: MeshNames) -> None:
    """Spot checks written out, so a bug in ``forms`` cannot hide one in the code."""
    for name in (
        "backend",
        "backend.default",
        "backend.default.svc",
        "backend.default.svc.cluster.local",
        "backend.example.com",
        "backend.default.example.com",
        "backend.default.svc.cluster.local.example.com",
        "backend.default.default.svc.cluster.local",
        "backend.default.svc.svc.cluster.local",
        "backend.default.svc.cluster.local.cluster.local",
    ):
        assert_found(table.lookup(name), "backend.default")
    for name in ("db", "db.svc.cluster.local", "db.cluster.local", "db.example.com"):
        assert_found(table.lookup(name), "db.data")


def test_names_of_lists_the_fqdn_first_and_the_short_name_last_among_bare_forms(
    table: MeshNames,
) -> None:
    listed = table.names_of("backend.default")
    assert listed[0] == "backend.default.svc.cluster.local"
    assert listed.index("backend.default") < listed.index("backend")
    assert len(listed) == len(set(listed))


def test_names_of_an_unknown_service_is_empty(table: MeshNames) -> None:
    assert table.names_of("nope.default") == ()


def test_len_and_contains_count_every_registered_name(table: MeshNames) -> None:
    assert len(table) == len(table.names_of("backend.default")) + len(table.names_of("db.data"))
    assert "backend" in table
    assert "nope" not in table


# --- what the stub actually sends -----------------------------------------------------------------


def walk(table: MeshNames, query: str, conf: ResolvConf) -> tuple[list[object], Found | None]:
    """Play glibc's stub against the table: the answers up to and including the first Found."""
    seen: list[object] = []
    for candidate in stub_candidates(query, conf):
        answer = table.lookup(candidate.lower())
        seen.append(answer)
        if isinstance(answer, Found):
            return seen, answer
    return seen, None


QUERIES = [
    # (what the application asks for, the service it means, whether the stub's first query hits)
    ("backend", "backend.default", True),
    ("backend.default", "backend.default", True),
    ("backend.default.svc", "backend.default", True),
    ("backend.default.svc.cluster.local", "backend.default", True),
    ("backend.default.svc.cluster.local.", "backend.default", True),
    ("BackEnd.Default", "backend.default", True),
    ("db", "db.data", False),  # db.default.svc.cluster.local first: NXDOMAIN, then a hit
    ("db.data", "db.data", True),
    ("db.data.svc", "db.data", True),
    ("db.data.svc.cluster.local", "db.data", True),
    ("db.data.svc.cluster.local.", "db.data", True),
]


@pytest.mark.parametrize("conf", [NDOTS1, NDOTS5], ids=["ndots1", "ndots5"])
@pytest.mark.parametrize(("query", "key", "first_hits"), QUERIES)
def test_the_first_mesh_answer_the_stub_gets_is_the_right_service(
    table: MeshNames, conf: ResolvConf, query: str, key: str, first_hits: bool
) -> None:
    before, found = walk(table, query, conf)
    assert found is not None, f"{query}: no candidate answered: {stub_candidates(query, conf)}"
    assert found.service_key == key
    # Nothing before the hit was forwarded upstream: each was a local NXDOMAIN.
    assert all(isinstance(answer, NoSuchName) for answer in before[:-1]), before
    assert (len(before) == 1) == first_hits, stub_candidates(query, conf)


def test_the_brief_example_sequence_for_backend_with_ndots_5(table: MeshNames) -> None:
    candidates = stub_candidates("backend", NDOTS5)
    assert candidates == [
        "backend.default.svc.cluster.local",
        "backend.svc.cluster.local",
        "backend.cluster.local",
        "backend.example.com",
        "backend",
    ]
    answers = [table.lookup(c) for c in candidates]
    assert all(isinstance(a, Found) and a.service_key == "backend.default" for a in answers)


def test_an_unknown_short_name_is_nxdomain_inside_the_mesh_then_forwarded(
    table: MeshNames,
) -> None:
    answers = [table.lookup(c) for c in stub_candidates("nope", NDOTS5)]
    assert answers == [NoSuchName(), NoSuchName(), NoSuchName(), NotMesh(), NotMesh()]


def test_an_external_name_with_ndots_5_goes_upstream_only_for_outside_candidates(
    table: MeshNames,
) -> None:
    candidates = stub_candidates("www.google.com", NDOTS5)
    answers = dict(zip(candidates, (table.lookup(c) for c in candidates), strict=True))
    assert answers == {
        "www.google.com.default.svc.cluster.local": NoSuchName(),
        "www.google.com.svc.cluster.local": NoSuchName(),
        "www.google.com.cluster.local": NoSuchName(),
        "www.google.com.example.com": NotMesh(),
        "www.google.com": NotMesh(),
    }


# --- NXDOMAIN inside the mesh, forwarding outside -------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.cluster.local",
        "backend.prod.svc.cluster.local",
        "db.default.svc.cluster.local",
        "nope.svc.cluster.local",
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "a.b.c.d.cluster.local",
        "xsvc.cluster.local",  # not in svc.cluster.local, but in cluster.local
        "nope.default.svc.cluster.local.example.com",
        "svc.cluster.local.example.com",
        "a.svc.cluster.local.example.com",
    ],
)
def test_unknown_names_inside_the_mesh_domains_are_nxdomain(table: MeshNames, name: str) -> None:
    assert table.lookup(name) == NoSuchName()


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "google.com",
        "www.google.com",
        "nope",
        "nope.example.com",
        "svc.cluster.local.evil.com",
        "cluster.local.evil.com",
        "backend.default.svc.cluster.local.evil.com",
        "xcluster.local",
        "backend.default.svc.cluster.localx",
        "backend.default.svc.cluster",  # a truncated FQDN is in no zone
        "xsvc.cluster.local.example.com",
        "svc.cluster.local.example.comx",
        "local",
        "",
    ],
)
def test_names_outside_the_mesh_domains_are_forwarded(table: MeshNames, name: str) -> None:
    assert table.lookup(name) == NotMesh()


def test_domain_checks_are_on_label_boundaries(table: MeshNames) -> None:
    assert table.in_mesh_domain("cluster.local")
    assert table.in_mesh_domain("a.cluster.local")
    assert not table.in_mesh_domain("acluster.local")
    assert table.in_mesh_domain("a.svc.cluster.local.example.com")
    assert not table.in_mesh_domain("a.xsvc.cluster.local.example.com")
    assert not table.in_mesh_domain("cluster.local.example.com")


def test_without_search_domains_only_the_bare_forms_answer() -> None:
    table = names(BACKEND, DB, search=())
    assert set(table.names_of("backend.default")) == {
        "backend",
        "backend.default",
        "backend.default.svc",
        "backend.default.svc.cluster.local",
    }
    assert table.lookup("backend.default.svc.cluster.local.example.com") == NotMesh()
    assert table.lookup("backend.svc.cluster.local") == NoSuchName()


def test_search_domains_are_normalised_when_building() -> None:
    table = names(BACKEND, search=("Default.SVC.Cluster.Local.", "", "Example.COM", "example.com"))
    assert table.search == ("default.svc.cluster.local", "example.com")
    assert_found(table.lookup("backend.example.com"), "backend.default")


# --- a custom cluster domain ----------------------------------------------------------------------


def test_custom_cluster_domain() -> None:
    search = ("default.svc.corp.internal", "svc.corp.internal", "corp.internal")
    table = MeshNames.build(mesh(BACKEND, DB, domain="corp.internal"), search)
    conf = ResolvConf(nameservers=(), search=search, ndots=5)
    assert_found(table.lookup("backend.default.svc.corp.internal"), "backend.default")
    assert_found(table.lookup("db.data.svc"), "db.data")
    assert_found(table.lookup("db.svc.corp.internal"), "db.data")
    assert table.lookup("nope.default.svc.corp.internal") == NoSuchName()
    assert table.lookup("corp.internal") == NoSuchName()
    assert table.lookup("backend.default.svc.cluster.local") == NotMesh()
    assert table.lookup("cluster.local") == NotMesh()
    for query, key in (("backend", "backend.default"), ("db", "db.data"), ("db.data", "db.data")):
        _, found = walk(table, query, conf)
        assert found is not None
        assert found.service_key == key


# --- the short-name rule --------------------------------------------------------------------------

BACKEND_PROD = service("backend", "prod", "240.240.0.3")
BACKEND_STAGING = service("backend", "staging", "240.240.0.4")


def test_short_name_prefers_the_workload_namespace() -> None:
    table = names(BACKEND_PROD, BACKEND, BACKEND_STAGING, namespace="default")
    for name in ("backend", "backend.svc.cluster.local", "backend.example.com"):
        assert_found(table.lookup(name), "backend.default")
    assert_found(table.lookup("backend.prod"), "backend.prod")
    assert_found(table.lookup("backend.prod.default.svc.cluster.local"), "backend.prod")
    assert_found(table.lookup("backend.staging.svc.cluster.local"), "backend.staging")


def test_short_name_unique_in_the_mesh_resolves_from_any_namespace() -> None:
    table = names(BACKEND_PROD, DB, namespace="web")
    assert_found(table.lookup("backend"), "backend.prod")
    assert_found(table.lookup("db"), "db.data")


def test_short_name_shared_by_other_namespaces_only_is_not_answered() -> None:
    table = names(BACKEND_PROD, BACKEND_STAGING, namespace="web")
    assert table.lookup("backend") == NotMesh()  # a bare label: upstream decides
    assert table.lookup("backend.svc.cluster.local") == NoSuchName()
    assert table.lookup("backend.example.com") == NotMesh()
    assert "backend" not in table.names_of("backend.prod")
    assert_found(table.lookup("backend.prod"), "backend.prod")
    assert_found(table.lookup("backend.staging"), "backend.staging")
    _, found = walk(table, "backend", NDOTS5)
    assert found is None


def test_a_second_same_named_service_elsewhere_withdraws_the_short_name() -> None:
    before = names(BACKEND_PROD, namespace="web")
    after = names(BACKEND_PROD, BACKEND_STAGING, namespace="web")
    assert_found(before.lookup("backend"), "backend.prod")
    assert after.lookup("backend") == NotMesh()


def test_short_name_aliases_never_shadow_namespace_qualified_names() -> None:
    # A search domain "prod" makes "backend" + "prod" == "backend.prod"; the qualified name wins.
    table = names(BACKEND, BACKEND_PROD, namespace="default", search=("prod",))
    assert_found(table.lookup("backend"), "backend.default")
    assert_found(table.lookup("backend.prod"), "backend.prod")


def test_a_namespace_named_svc_beats_a_short_name_alias() -> None:
    # "a" + "svc.cluster.local" (short, a.default) collides with "a.svc" + "cluster.local"
    # (qualified, a in namespace svc): the qualified form wins.
    a_default = service("a", "default", "240.240.0.5")
    a_svc = service("a", "svc", "240.240.0.6")
    table = names(a_default, a_svc, namespace="default")
    assert_found(table.lookup("a.svc.cluster.local"), "a.svc")
    assert_found(table.lookup("a"), "a.default")
    assert_found(table.lookup("a.default.svc.cluster.local"), "a.default")


def test_short_name_aliases_never_take_an_fqdn_shaped_name() -> None:
    # The workload's search list names a namespace without a backend: that FQDN shape stays
    # NXDOMAIN, and the stub's next candidate reaches the unique backend.
    table = names(BACKEND_PROD, namespace="default")
    assert table.lookup("backend.default.svc.cluster.local") == NoSuchName()
    before, found = walk(table, "backend", NDOTS5)
    assert found is not None
    assert found.service_key == "backend.prod"
    assert before[0] == NoSuchName()


# --- answers and reloads --------------------------------------------------------------------------


def test_found_exposes_both_families_for_the_caller_to_pick(table: MeshNames) -> None:
    backend = assert_found(table.lookup("backend"), "backend.default")
    db = assert_found(table.lookup("db.data"), "db.data")
    assert (backend.v4, backend.v6) == ((BACKEND_V4,), (BACKEND_V6,))
    assert (db.v4, db.v6) == ((DB_V4,), ())  # AAAA for db is NODATA, not NXDOMAIN


def test_ipv6_only_service() -> None:
    table = names(service("v6only", "default", "fd00:240::9", "fd00:240::a"))
    assert table.lookup("v6only") == Found(
        v4=(), v6=("fd00:240::9", "fd00:240::a"), service_key="v6only.default"
    )


def test_a_reload_drops_the_names_of_a_removed_service(table: MeshNames) -> None:
    old_db_names = table.names_of("db.data")
    reloaded = names(BACKEND)
    assert reloaded.names_of("db.data") == ()
    for name in old_db_names:
        assert not isinstance(reloaded.lookup(name), Found), name
    assert reloaded.lookup("db.data.svc.cluster.local") == NoSuchName()
    assert reloaded.names_of("backend.default") == table.names_of("backend.default")
    # The old table is a value: whoever still holds it keeps answering consistently.
    assert_found(table.lookup("db"), "db.data")


def test_a_reload_with_a_changed_vip_answers_the_new_vip(table: MeshNames) -> None:
    moved = service("db", "data", "240.240.0.99")
    reloaded = names(BACKEND, moved)
    assert assert_found(reloaded.lookup("db"), "db.data").v4 == ("240.240.0.99",)
    assert assert_found(table.lookup("db"), "db.data").v4 == (DB_V4,)


def test_empty_mesh() -> None:
    table = names()
    assert len(table) == 0
    assert table.lookup("backend.default.svc.cluster.local") == NoSuchName()
    assert table.lookup("example.com") == NotMesh()


def test_one_found_object_is_shared_by_all_names_of_a_service(table: MeshNames) -> None:
    answers = {id(table.lookup(name)) for name in table.names_of("backend.default")}
    assert len(answers) == 1
