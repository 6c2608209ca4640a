"""/clusters: merge the workers' endpoint rows and print them in Envoy's text format."""

from __future__ import annotations

from collections.abc import Iterable

Row = tuple[str, str, str, int | str]
# Fields that are the same in every worker (config), not summed.
_CONFIG_FIELDS = frozenset({"weight", "max_connections"})


def merge_rows(per_worker: Iterable[Iterable[Row]]) -> list[Row]:
    """Sum counters across workers; a host is unhealthy if any worker says so."""
    merged: dict[tuple[str, str, str], int | str] = {}
    for rows in per_worker:
        for cluster, host, name, value in rows:
            key = (cluster, host, name)
            if key not in merged:
                merged[key] = value
            elif name == "health_flags":
                merged[key] = _union_flags(str(merged[key]), str(value))
            elif name not in _CONFIG_FIELDS and isinstance(value, int):
                merged[key] = int(merged[key]) + value
    return [(c, h, n, v) for (c, h, n), v in merged.items()]


def _union_flags(a: str, b: str) -> str:
    """``/failed_outlier_check`` from one worker and ``/failed_active_hc`` from another make
    both; "healthy" only when every worker says so."""
    flags = {f for f in (a + b).replace("healthy", "").split("/") if f}
    return "".join(f"/{f}" for f in sorted(flags)) or "healthy"


def render_rows(rows: Iterable[Row]) -> str:
    """``cluster::field::value`` and ``cluster::host::field::value`` lines."""
    lines = []
    for cluster, host, name, value in rows:
        where = f"{cluster}::{host}" if host else cluster
        lines.append(f"{where}::{name}::{value}\n")
    return "".join(lines)
