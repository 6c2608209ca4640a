"""The metrics the ``proxy`` package declares, found by importing every one of its modules:
each has a help text, no Prometheus name is declared twice (or exposed by two metrics), each
renders with its kind and help, and every name a scrape in the end-to-end tests, the demo or
the benchmarks expects is still declared."""

from __future__ import annotations

import importlib
import pkgutil
import re
import traceback
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import proxy
from proxy.admin.prometheus import render
from proxy.series import Stats
from proxy.stats import Counter, Gauge, Histogram, Metric, merge

ROOT = Path(__file__).resolve().parents[3]

# What README's port table promises on :15020 and for the DNS proxy.
DOCUMENTED = {
    "counter": [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_requests_total",
        *(f"downstream_rq_{n}xx" for n in range(1, 6)),
        "downstream_rq_total",
        "upstream_rq_total",
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_rq_timeout",
        "upstream_rq_per_try_timeout",
        "upstream_cx_http1_total",
        "upstream_cx_http2_total",
        "downstream_cx_http2_total",
        "dns_queries_total",
        "dns_answers_total",
        "dns_failures_total",
        "dns_malformed_total",
    ],
    "histogram": [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "dns_upstream_latency_ms",
    ],
}


def module_names() -> list[str]:
    """Every module of the package, each directory listed by pkgutil: ``walk_packages`` alone
    would not enter a directory without ``__init__.py`` (proxy/filters is one), and would
    ignore a subpackage that fails to import."""
    package = Path(proxy.__file__).parent
    names = ["proxy"]
    for directory in sorted({path.parent for path in package.rglob("*.py")}):
        prefix = ".".join(directory.relative_to(package.parent).parts)
        names += [f"{prefix}.{info.name}" for info in pkgutil.iter_modules([str(directory)])]
    return sorted(names)


def declared() -> dict[Metric, list[str]]:
    """Each declared metric and the modules holding it (where it is declared, and the ones
    importing it), from every module's top level."""
    holders: dict[Metric, list[str]] = defaultdict(list)
    failures = []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except Exception:
            failures.append(f"{name}:\n{traceback.format_exc()}")
            continue
        for value in vars(module).values():
            if isinstance(value, Metric):
                holders[value].append(name)
    assert not failures, "modules that do not import:\n" + "\n".join(failures)
    return holders


def exposed(metric: Metric) -> set[str]:
    """The family name and the sample names a metric puts in the Prometheus text."""
    if isinstance(metric, Counter):
        family = metric.name.removesuffix("_total")
        return {family, f"{family}_total"}
    if isinstance(metric, Histogram):
        return {metric.name, *(f"{metric.name}_{part}" for part in ("bucket", "sum", "count"))}
    return {metric.name}


def test_the_walk_reaches_every_module() -> None:
    names = set(module_names())
    on_disk = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "proxy").rglob("*.py")
    }
    assert on_disk <= names, "modules the walk did not reach"
    assert {"proxy.filters.http1_downstream", "proxy.workers", "proxy.dns.server"} <= names


def test_every_declared_metric_has_a_help_text() -> None:
    missing = [
        f"{metric!r} ({', '.join(modules)})"
        for metric, modules in declared().items()
        if not metric.help.strip() or "\n" in metric.help
    ]
    assert not missing, "no help, or help on several lines: " + ", ".join(missing)


def test_no_name_is_declared_twice() -> None:
    by_name: dict[str, list[Metric]] = defaultdict(list)
    holders = declared()
    for metric in holders:
        by_name[metric.name].append(metric)
    twice = {
        name: [holders[metric] for metric in metrics]
        for name, metrics in by_name.items()
        if len(metrics) > 1
    }
    assert not twice, f"declared more than once (modules holding each object): {twice}"


def test_no_two_metrics_expose_the_same_prometheus_name() -> None:
    """A counter ``x_total`` and a gauge ``x``, or a histogram ``x`` and a counter
    ``x_count``, would clash in the text though their declared names differ."""
    owners: dict[str, list[Metric]] = defaultdict(list)
    for metric in declared():
        for name in exposed(metric):
            owners[name].append(metric)
    clashes = {name: metrics for name, metrics in owners.items() if len(metrics) > 1}
    assert not clashes


def record_each(metrics) -> Stats:
    """One series of every metric, through the method its kind takes."""
    stats = Stats()
    for metric in metrics:
        if isinstance(metric, Counter):
            stats.inc(metric)
        elif isinstance(metric, Gauge):
            stats.gauge_set(metric, (), 1)
        else:
            stats.observe(metric, (), 1)
    return stats


def test_every_declared_metric_renders_with_its_kind_and_help() -> None:
    metrics = list({metric.name: metric for metric in declared()}.values())  # one per name
    text = render(merge([record_each(metrics).snapshot()])).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert len(families) == len(metrics)
    for metric in metrics:
        family = families[
            metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
        ]
        assert (family.type, family.documentation) == (metric.kind, metric.help), metric


def test_the_documented_metrics_are_declared_with_their_kind() -> None:
    kinds = {metric.name: metric.kind for metric in declared()}
    for kind, names in DOCUMENTED.items():
        assert {name: kinds.get(name) for name in names} == dict.fromkeys(names, kind)


# Where other suites read metrics: /stats (``stat(pod, "name...")``, ``?filter=^name``) shows
# declared counter and gauge names; /stats/prometheus shows sample names.
STATS_NAME = [
    re.compile(r'\bstat\(\s*\w+,\s*f?"([a-z0-9_]+)'),
    re.compile(r"/stats\?filter=\^?([a-z0-9_]+)"),
]
SAMPLE_NAME = [
    re.compile(r'prometheus_sum\(\s*\w+,\s*"([a-z0-9_]+)"'),
    re.compile(r'"([a-z0-9_]+)\{"'),  # startswith("istio_requests_total{"), "...{" in text
    re.compile(r'"([a-z0-9_]+_bucket)"'),
]


def expected_by_other_suites() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(/stats names, Prometheus sample names) each mapped to the files that expect them."""
    files = [
        *(ROOT / "tests" / "e2e").rglob("*.py"),
        *(ROOT / "tests" / "support").glob("*.py"),
        *(ROOT / "scripts").glob("*.py"),
        *(ROOT / "bench").glob("*.py"),
    ]
    stats_names: dict[str, set[str]] = defaultdict(set)
    sample_names: dict[str, set[str]] = defaultdict(set)
    for path in files:
        source = path.read_text()
        where = str(path.relative_to(ROOT))
        for pattern in STATS_NAME:
            for name in pattern.findall(source):
                stats_names[name].add(where)
        for pattern in SAMPLE_NAME:
            for name in pattern.findall(source):
                sample_names[name].add(where)
    return stats_names, sample_names


def test_every_name_a_scrape_elsewhere_expects_is_declared() -> None:
    stats_names, sample_names = expected_by_other_suites()
    assert len(stats_names) > 20 and len(sample_names) > 2, "the scan found nothing: fix it"
    metrics = declared()
    in_stats = {m.name for m in metrics if isinstance(m, Counter | Gauge)}
    in_text = set().union(*(exposed(m) for m in metrics))
    missing_stats = {name: files for name, files in stats_names.items() if name not in in_stats}
    missing_text = {name: files for name, files in sample_names.items() if name not in in_text}
    assert not missing_stats, f"/stats names no metric declares: {missing_stats}"
    assert not missing_text, f"Prometheus names no metric exposes: {missing_text}"
