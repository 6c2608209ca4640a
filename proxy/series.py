"""One worker's live series: ``Stats``, the object every recording call goes through.

It lives apart from the metric declarations (``proxy.stats``) so that it can be compiled
(``proxy.native``) while they stay Python: a routed HTTP request records about six series, and
as interpreted method calls those were a tenth of its instructions (callgrind, bench/README).
The declarations must stay interpreted for the recording methods to keep trusting their
caller: compiled classes would have mypyc check each argument's type on every call, and a
metric recorded through the wrong method (a Histogram given to ``inc``) would fail where it is
recorded in one build and at ``snapshot()`` in the other. Here they are classes from an
interpreted module, which mypyc passes as plain objects, so both builds refuse a
mis-recorded series the same way: when the snapshot is taken.
"""

from __future__ import annotations

from typing import Any

from proxy.stats import Counter, Gauge, Histogram, Key, Labels, Metric, MetricInfo

# A histogram series' flat row: bucket counts (ints), then the sum of the values. Any, not
# list[float]: compiled, a float element type would turn every count into a float.
Row = list[Any]


class Cell:
    """One counter or gauge series' value. Code that records a series on every request
    resolves its cell once (``Stats.counter``) and adds to ``value``: no key tuple is built
    and no label set hashed per record (CPython does not cache a tuple's hash, and Istio's
    fifteen label pairs cost more to hash than the addition they key)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Stats:
    """One worker's counters, gauges and histograms, keyed by (declared metric, label values)."""

    def __init__(self) -> None:
        self._counters: dict[Key, Cell] = {}
        self._gauges: dict[Key, Cell] = {}
        # Per series one flat row: row[i] counts observations in bucket i, NOT cumulative
        # (row[len(bounds)] is the +Inf bucket), and row[-1] is the sum of the values, so an
        # observation is one search of the bounds and two in-place additions.
        self.histograms: dict[Key, Row] = {}

    @property
    def counters(self) -> dict[Key, int]:
        """Each counter series' value: a copy, for reading (record through ``inc``)."""
        return {key: cell.value for key, cell in self._counters.items()}

    @property
    def gauges(self) -> dict[Key, int]:
        """Each gauge series' value: a copy, for reading (record through ``gauge_*``)."""
        return {key: cell.value for key, cell in self._gauges.items()}

    # The recording methods trust their caller's types: a check per call would cost on every
    # connection and request; snapshot() refuses a mis-recorded series instead.

    def counter(self, metric: Counter, label_values: Labels = ()) -> Cell:
        """The cell of a counter series, created at 0 the first time (as Prometheus shows a
        counter it has seen: from the first record on)."""
        return _cell(self._counters, (metric, label_values))

    def inc(self, metric: Counter, label_values: Labels = (), amount: int = 1) -> None:
        self.counter(metric, label_values).value += amount

    def gauge_add(self, metric: Gauge, label_values: Labels, amount: int) -> None:
        _cell(self._gauges, (metric, label_values)).value += amount

    def gauge_set(self, metric: Gauge, label_values: Labels, value: int) -> None:
        _cell(self._gauges, (metric, label_values)).value = value

    def histogram(self, metric: Histogram, label_values: Labels = ()) -> Row:
        """The row of a histogram series, for ``record``, created empty the first time. A
        metric without bounds cannot be bucketed at all, so it fails here, loudly (once per
        series, so the type check is free)."""
        key = (metric, label_values)
        row = self.histograms.get(key)
        if row is None:
            if not isinstance(metric, Histogram):
                raise TypeError(_misrecorded(metric, "observe"))
            row = self.histograms[key] = [0] * (len(metric.bounds) + 2)
        return row

    def observe(self, metric: Histogram, label_values: Labels, value: float) -> None:
        """Count ``value`` in the bucket of the smallest bound >= value (Prometheus ``le``: a
        value exactly on a bound belongs to that bucket), or in +Inf above the last bound."""
        record(self.histogram(metric, label_values), metric.bounds, value)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """A JSON-able copy, for the supervisor: plain lists, since it crosses processes.

        ``metrics``: ``[name, kind, help, bounds, across_workers]`` per metric recorded, so the
        supervisor renders without importing (or trusting) any table of its own; then
        ``counters`` and ``gauges`` as ``[name, labels, value]``, ``histograms`` as
        ``[name, labels, per-bucket counts (+Inf last, not cumulative), sum, count]``.
        Raises TypeError for a series recorded through the wrong method (a Histogram given to
        ``inc``), ValueError for two declarations of one name."""
        described: dict[str, Metric] = {}
        counters = [
            [_describe(metric, Counter, "inc", described), _wire(label_values), cell.value]
            for (metric, label_values), cell in self._counters.items()
        ]
        gauges = [
            [_describe(metric, Gauge, "gauge_add or gauge_set", described), _wire(lv), cell.value]
            for (metric, lv), cell in self._gauges.items()
        ]
        histograms = [
            [_describe(metric, Histogram, "observe", described), _wire(lv), *_histogram_wire(row)]
            for (metric, lv), row in self.histograms.items()
        ]
        return {
            "metrics": [_info_wire(metric.info()) for metric in described.values()],
            "counters": counters,
            "gauges": gauges,
            "histograms": histograms,
        }


def _cell(cells: dict[Key, Cell], key: Key) -> Cell:
    """The cell of series ``key`` in ``cells``, created at 0 the first time."""
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = Cell()
    return cell


def record(row: Row, bounds: tuple[float, ...], value: float) -> None:
    """Count ``value`` in a histogram series' row (``Stats.histogram``) whose metric has these
    ``bounds``: in the bucket of the first bound not below it, as ``bisect_left`` finds it,
    by a loop because compiled, that is a few compares where ``bisect`` was a generic call."""
    index = 0
    for bound in bounds:
        if not bound < value:
            break
        index += 1
    row[index] += 1
    row[-1] += value


def _describe(metric: object, kind: type[Metric], method: str, described: dict[str, Metric]) -> str:
    """The name a series of ``metric`` travels under, once ``metric`` is known to be a ``kind``
    and the only declaration of its name among those ``described`` so far (it is added)."""
    if not isinstance(metric, kind):
        raise TypeError(_misrecorded(metric, method))
    name: str = metric.name
    seen = described.setdefault(name, metric)
    if seen is not metric:
        raise ValueError(f"metric {metric.name!r} is declared twice: {seen!r} and {metric!r}")
    return name


def _misrecorded(metric: object, method: str) -> str:
    if isinstance(metric, Metric):
        return (
            f"{metric.kind} {metric.name!r} was recorded with Stats.{method}; "
            f"a {metric.kind} is recorded with Stats.{metric.recorded_with}"
        )
    return (
        f"{metric!r} was recorded with Stats.{method} but is not a declared metric "
        "(a Counter, Gauge or Histogram from proxy.stats)"
    )


def _wire(label_values: Labels) -> list[list[str]]:
    return list(map(list, label_values))


def _histogram_wire(row: Row) -> list[Any]:
    """A live row as it travels: per-bucket counts (+Inf last), sum, count."""
    return [row[:-1], row[-1], sum(row[:-1])]


def _info_wire(info: MetricInfo) -> list[Any]:
    name, kind, help_text, bounds, across_workers = info
    return [name, kind, help_text, None if bounds is None else list(bounds), across_workers]
