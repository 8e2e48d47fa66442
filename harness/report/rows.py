"""What every leaderboard table is made of: results grouped by protocol, rows (one method at one sparsity, one
result per seed), and the ranks a paired test supports."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from harness.env import fingerprint
from harness.hashing import canonical_hash, protocol_config
from harness.metrics.base import Metric
from harness.metrics.registry import METRICS
from harness.results import CellResult
from harness.stats import rank_by_paired_tests

ALPHA = 0.05


def protocol_key(r: CellResult, without_recovery: bool = False) -> str:
    """The hash of what the rows of one table share; ``without_recovery``: the key the result would have had,
    had its model not been recovered (the table of the models it was recovered from)."""
    config = protocol_config({**r.config, "recovery": None} if without_recovery else r.config)
    data: dict[str, Any] = {}
    for name, metric in METRICS.items():
        if r.metric(name) is not None:
            data.update(metric.data_identity(r.metric(name)))
    return canonical_hash({"config": config, "data": data, "hardware": fingerprint(r.environment)}, 10)


@dataclass
class Row:
    method: str
    sparsity: float
    results: list[CellResult]

    def metric(self, name: str) -> list[Any] | None:
        """The metric's result of every seed, or None if a seed lacks it."""
        values = [r.metric(name) for r in self.results]
        return values if all(v is not None for v in values) else None

    @property
    def reference(self) -> bool:
        """The dense model's row: what the others are compared with, never ranked itself."""
        return self.results[0].cell.reference


@dataclass(frozen=True)
class Ranking:
    label: str  # "1", "1=", "3"
    p_value: float | None  # against the leader of the row's group


def by_protocol(results: list[CellResult]) -> dict[str, list[CellResult]]:
    groups: dict[str, list[CellResult]] = defaultdict(list)
    for r in results:
        groups[protocol_key(r)].append(r)
    return dict(groups)


def by_sparsity(results: list[CellResult]) -> dict[float, list[Row]]:
    """The rows of one protocol's results, per target sparsity."""
    by: dict[tuple[str, float], list[CellResult]] = defaultdict(list)
    for r in results:
        by[(r.cell.variant, r.cell.sparsity)].append(r)
    table: dict[float, list[Row]] = defaultdict(list)
    for (method, sparsity), rs in by.items():
        table[sparsity].append(Row(method, sparsity, sorted(rs, key=lambda r: r.cell.seed)))
    return dict(table)


def rankings(rows: list[Row], metric: Metric) -> dict[str, Ranking] | None:
    """Ranks of the rows by one metric that the metric's paired test supports (None: it does not rank)."""
    values = {row.method: metric.rank_value(row.metric(metric.name)) for row in rows if row.metric(metric.name)}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    by_name = {row.method: row for row in rows}
    order = sorted(values, key=values.get)

    def p_value(leader: str, other: str) -> float:
        p = metric.paired_p(by_name[leader].metric(metric.name), by_name[other].metric(metric.name))
        return 1.0 if p is None else p  # rows that cannot be paired are never called different

    ranked = rank_by_paired_tests(order, p_value, alpha=ALPHA)
    return {r.key: Ranking(f"{r.rank}{'=' if r.shared else ''}", r.p_value) for r in ranked}


def shown_metrics(rows: list[Row]) -> list[Metric]:
    """The metrics some row has, in column order."""
    return sorted((m for m in METRICS.values() if any(row.metric(m.name) for row in rows)),
                  key=lambda m: m.column_order)


def first(rows: list[Row], metric: Metric) -> Any:
    """One result of the metric among the rows (what its headers and rank basis are read from)."""
    return next(r.metric(metric.name)[0] for r in rows if r.metric(metric.name))


def short(metric: Metric) -> str:
    return metric.short_name or metric.name
