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
                if value != "healthy":
                    merged[key] = value if merged[key] == "healthy" else merged[key]
            elif name not in _CONFIG_FIELDS and isinstance(value, int):
                merged[key] = int(merged[key]) + value
    return [(c, h, n, v) for (c, h, n), v in merged.items()]


def render_rows(rows: Iterable[Row]) -> str:
    """``cluster::field::value`` and ``cluster::host::field::value`` lines."""
    lines = []
    for cluster, host, name, value in rows:
        where = f"{cluster}::{host}" if host else cluster
        lines.append(f"{where}::{name}::{value}\n")
    return "".join(lines)
