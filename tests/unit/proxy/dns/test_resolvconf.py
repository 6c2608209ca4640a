"""resolv.conf parsing with glibc's rules, and the query sequence glibc's stub sends.

The server's name table is only right if it sees the same search list the stub uses, and the
names tests can only prove "the stub gets its answer" with the stub's real query order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.dns.resolvconf import ResolvConf, parse_resolv_conf, read_resolv_conf, stub_candidates

K8S = """\
search default.svc.cluster.local svc.cluster.local cluster.local example.com
nameserver 10.96.0.10
options ndots:5
"""

# --- parse_resolv_conf ----------------------------------------------------------------------------


def test_kubernetes_pod_resolv_conf() -> None:
    assert parse_resolv_conf(K8S) == ResolvConf(
        nameservers=("10.96.0.10",),
        search=("default.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com"),
        ndots=5,
    )


def test_empty_file_has_no_nameservers_no_search_and_default_ndots() -> None:
    assert parse_resolv_conf("") == ResolvConf(nameservers=(), search=(), ndots=1)


def test_only_comments_and_blank_lines() -> None:
    conf = parse_resolv_conf("# nameserver 1.1.1.1\n; search a.com\n\n   \n")
    assert conf == ResolvConf(nameservers=(), search=(), ndots=1)


def test_only_the_first_three_nameservers_are_used() -> None:
    text = "".join(f"nameserver 10.0.0.{n}\n" for n in range(1, 6))
    assert parse_resolv_conf(text).nameservers == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_invalid_nameservers_are_skipped_and_do_not_count_toward_three() -> None:
    text = (
        "nameserver not-an-address\n"
        "nameserver 10.0.0.1\n"
        "nameserver 10.0.0.1:53\n"
        "nameserver 10.0.0.2\n"
        "nameserver 300.1.1.1\n"
        "nameserver 10.0.0.3\n"
        "nameserver 10.0.0.4\n"
    )
    assert parse_resolv_conf(text).nameservers == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_ipv6_and_scoped_ipv6_nameservers_are_kept_as_written() -> None:
    text = "nameserver 2001:4860:4860::8888\nnameserver fe80::1%eth0\nnameserver ::1\n"
    assert parse_resolv_conf(text).nameservers == (
        "2001:4860:4860::8888",
        "fe80::1%eth0",
        "::1",
    )


def test_last_search_or_domain_line_wins_domain_after_search() -> None:
    conf = parse_resolv_conf("search a.com b.com\ndomain c.com\n")
    assert conf.search == ("c.com",)


def test_last_search_or_domain_line_wins_search_after_domain() -> None:
    conf = parse_resolv_conf("domain c.com\nsearch a.com b.com\n")
    assert conf.search == ("a.com", "b.com")


def test_domain_takes_only_its_first_word() -> None:
    assert parse_resolv_conf("domain c.com d.com\n").search == ("c.com",)


def test_search_without_a_value_changes_nothing() -> None:
    assert parse_resolv_conf("search a.com\nsearch\ndomain\n").search == ("a.com",)


def test_search_domains_are_lower_cased_without_trailing_dot() -> None:
    conf = parse_resolv_conf("search Default.SVC.Cluster.Local. Example.COM.\n")
    assert conf.search == ("default.svc.cluster.local", "example.com")


def test_search_root_means_no_search_domains() -> None:
    assert parse_resolv_conf("search a.com\nsearch .\n").search == ()


def test_search_keeps_order_and_repeats_like_the_stub() -> None:
    assert parse_resolv_conf("search b.com a.com b.com\n").search == ("b.com", "a.com", "b.com")


def test_tabs_separate_words() -> None:
    conf = parse_resolv_conf("nameserver\t10.0.0.1\nsearch\ta.com\tb.com\noptions\tndots:3\n")
    assert conf == ResolvConf(nameservers=("10.0.0.1",), search=("a.com", "b.com"), ndots=3)


def test_comment_words_end_a_line() -> None:
    text = "nameserver 10.0.0.1 # primary\nsearch a.com ; b.com\noptions ndots:2 #ndots:9\n"
    conf = parse_resolv_conf(text)
    assert conf == ResolvConf(nameservers=("10.0.0.1",), search=("a.com",), ndots=2)


@pytest.mark.parametrize(
    ("options", "ndots"),
    [
        ("ndots:0", 0),
        ("ndots:5", 5),
        ("ndots:15", 15),
        ("ndots:16", 15),
        ("ndots:1000", 15),
        ("ndots:-3", 0),
        ("ndots:abc", 0),  # atoi
        ("ndots:4x", 4),  # atoi stops at the first non-digit
        ("ndots:", 0),
    ],
)
def test_ndots_is_read_like_atoi_and_clamped(options: str, ndots: int) -> None:
    assert parse_resolv_conf(f"options {options}\n").ndots == ndots


def test_options_lines_accumulate_and_the_last_ndots_wins() -> None:
    text = "options ndots:2 timeout:1\noptions attempts:3 rotate\noptions edns0 ndots:4\n"
    assert parse_resolv_conf(text).ndots == 4


def test_options_without_ndots_keep_the_default() -> None:
    assert parse_resolv_conf("options timeout:2 attempts:3 edns0\n").ndots == 1


def test_unknown_lines_and_misspelled_keywords_are_ignored() -> None:
    text = (
        "sortlist 130.155.160.0/255.255.240.0\n"
        "lookup file bind\n"
        "nameserver10.0.0.9\n"
        "Nameserver 10.0.0.8\n"
        "nameserver 10.0.0.1\n"
        "searching x.com\n"
    )
    assert parse_resolv_conf(text) == ResolvConf(nameservers=("10.0.0.1",), search=(), ndots=1)


def test_keywords_must_start_the_line() -> None:
    conf = parse_resolv_conf("  nameserver 10.0.0.1\n\tsearch a.com\n nameserver 10.0.0.2\n")
    assert conf == ResolvConf(nameservers=(), search=(), ndots=1)


def test_crlf_line_endings() -> None:
    conf = parse_resolv_conf("nameserver 10.0.0.1\r\nsearch a.com\r\n")
    assert conf == ResolvConf(nameservers=("10.0.0.1",), search=("a.com",), ndots=1)


def test_read_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(K8S)
    assert read_resolv_conf(path) == parse_resolv_conf(K8S)
    assert read_resolv_conf(str(path)) == parse_resolv_conf(K8S)


def test_read_resolv_conf_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_resolv_conf(tmp_path / "absent")


# --- stub_candidates ------------------------------------------------------------------------------

SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com")
NDOTS1 = ResolvConf(nameservers=("10.96.0.10",), search=SEARCH, ndots=1)
NDOTS5 = ResolvConf(nameservers=("10.96.0.10",), search=SEARCH, ndots=5)


def searched(name: str) -> list[str]:
    return [f"{name}.{domain}" for domain in SEARCH]


@pytest.mark.parametrize("conf", [NDOTS1, NDOTS5], ids=["ndots1", "ndots5"])
def test_a_name_without_dots_tries_the_search_list_first(conf: ResolvConf) -> None:
    assert stub_candidates("backend", conf) == [*searched("backend"), "backend"]


def test_one_dot_with_ndots_1_is_tried_as_is_first() -> None:
    assert stub_candidates("backend.default", NDOTS1) == [
        "backend.default",
        *searched("backend.default"),
    ]


def test_one_dot_with_ndots_5_tries_the_search_list_first() -> None:
    assert stub_candidates("backend.default", NDOTS5) == [
        *searched("backend.default"),
        "backend.default",
    ]


def test_three_dots_with_ndots_1_is_tried_as_is_first() -> None:
    assert stub_candidates("a.b.c.d", NDOTS1) == ["a.b.c.d", *searched("a.b.c.d")]


def test_three_dots_with_ndots_5_tries_the_search_list_first() -> None:
    assert stub_candidates("a.b.c.d", NDOTS5) == [*searched("a.b.c.d"), "a.b.c.d"]


def test_exactly_ndots_dots_counts_as_enough() -> None:
    conf = ResolvConf(nameservers=(), search=("x.com",), ndots=3)
    assert stub_candidates("a.b.c.d", conf) == ["a.b.c.d", "a.b.c.d.x.com"]
    assert stub_candidates("a.b.c", conf) == ["a.b.c.x.com", "a.b.c"]


@pytest.mark.parametrize("conf", [NDOTS1, NDOTS5], ids=["ndots1", "ndots5"])
def test_a_trailing_dot_is_absolute_and_the_only_candidate(conf: ResolvConf) -> None:
    assert stub_candidates("backend.", conf) == ["backend"]
    assert stub_candidates("www.example.com.", conf) == ["www.example.com"]


def test_ndots_0_tries_even_a_single_label_as_is_first() -> None:
    conf = ResolvConf(nameservers=(), search=("a.com",), ndots=0)
    assert stub_candidates("backend", conf) == ["backend", "backend.a.com"]


def test_no_search_list_only_the_name() -> None:
    conf = ResolvConf(nameservers=(), search=(), ndots=5)
    assert stub_candidates("backend", conf) == ["backend"]
    assert stub_candidates("a.b.c.d.e.f", conf) == ["a.b.c.d.e.f"]


def test_case_is_preserved() -> None:
    assert stub_candidates("BackEnd", NDOTS1)[0] == "BackEnd.default.svc.cluster.local"


def test_a_root_search_domain_in_a_hand_built_conf_replaces_the_final_bare_try() -> None:
    conf = ResolvConf(nameservers=(), search=("", "a.com"), ndots=1)
    assert stub_candidates("backend", conf) == ["backend", "backend.a.com"]


def test_empty_name_and_root_have_no_candidates() -> None:
    assert stub_candidates("", NDOTS5) == []
    assert stub_candidates(".", NDOTS5) == []
