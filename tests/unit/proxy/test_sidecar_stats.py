"""The supervisor's /stats and /stats/prometheus: its own declared metrics (reloads, worker
restarts, workers alive), the DNS proxy's, and the workers' snapshots, merged."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.http import Request
from proxy.config.model import Mesh
from proxy.dns.server import DNS_QUERIES_TOTAL
from proxy.series import Stats
from proxy.session import DOWNSTREAM_CX_TOTAL
from proxy.sidecar import (
    CONFIG_RELOAD_REJECTED,
    CONFIG_RELOAD_TOTAL,
    WORKER_RESTARTS_TOTAL,
    WORKERS_ALIVE,
    Options,
    Sidecar,
)
from proxy.stats import labels, listener_labels
from proxy.worker import WorkerReport

OUT = listener_labels("virtualOutbound")


class FakeWorker:
    """A live worker whose report is a fixed snapshot."""

    def __init__(self, index: int, connections: int) -> None:
        self.index = index
        self.alive = True
        self.stats = Stats()
        self.stats.inc(DOWNSTREAM_CX_TOTAL, OUT, connections)

    async def report(self) -> WorkerReport:
        return WorkerReport(self.stats.snapshot(), [], 0)


def sidecar() -> Sidecar:
    side = Sidecar(Options(), Mesh())
    side.workers = [FakeWorker(0, 2), FakeWorker(1, 3)]  # type: ignore[list-item]
    side.reloads, side.rejected, side.worker_restarts = 2, 1, 3
    side.stats.inc(DNS_QUERIES_TOTAL, labels(transport="udp"))
    return side


def get(side: Sidecar, route: str, **query: str) -> str:
    request = Request("GET", route, {key: [value] for key, value in query.items()})
    handler = side._stats if route == "/stats" else side._prometheus
    response = asyncio.run(handler(request))
    assert response.status == 200
    return response.body.decode()


def test_stats_text_lists_every_counter_and_gauge_sorted() -> None:
    assert get(sidecar(), "/stats").splitlines() == [
        "config_reload_rejected: 1",
        "config_reload_total: 2",
        "dns_queries_total.transport=udp: 1",
        "downstream_cx_total.listener=virtualOutbound: 5",  # both workers
        "worker_restarts_total: 3",
        "workers_alive: 2",
    ]


def test_stats_filter_and_json() -> None:
    side = sidecar()
    assert get(side, "/stats", filter="^config_reload") == (
        "config_reload_rejected: 1\nconfig_reload_total: 2\n"
    )
    rows = json.loads(get(side, "/stats", filter="^worker", format="json"))["stats"]
    assert rows == [
        {"name": "worker_restarts_total", "value": 3},
        {"name": "workers_alive", "value": 2},
    ]


def test_a_fresh_supervisor_reports_zeros() -> None:
    side = Sidecar(Options(), Mesh())
    assert get(side, "/stats").splitlines() == [
        "config_reload_rejected: 0",
        "config_reload_total: 0",
        "worker_restarts_total: 0",
        "workers_alive: 0",
    ]


def test_prometheus_text_carries_the_supervisors_declared_metrics() -> None:
    text = get(sidecar(), "/stats/prometheus")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for metric, family_name, value in [
        (CONFIG_RELOAD_TOTAL, "config_reload", 2),
        (CONFIG_RELOAD_REJECTED, "config_reload_rejected", 1),
        (WORKER_RESTARTS_TOTAL, "worker_restarts", 3),
        (WORKERS_ALIVE, "workers_alive", 2),
    ]:
        family = families[family_name]
        assert (family.type, family.documentation) == (metric.kind, metric.help)
        assert [sample.value for sample in family.samples] == [value]
    assert families["dns_queries"].documentation == DNS_QUERIES_TOTAL.help
