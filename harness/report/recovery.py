"""The leaderboard's recovery section: each pruned model beside its recovered self, on the same protocol.

A recovery bench measures every pruned model twice, as pruned and after LoRA healing (harness.recovery), in two
cells whose configurations differ only by ``recovery``. The recovered cells form a protocol of their own; the
table of the models they came from is the protocol their key names without recovery. Per sparsity and ranking
metric, the section shows each method's value before and after, a paired test between the two models of the
method (the same perplexity windows, the same examples; Holm-corrected over the table's methods), and the
ranks among the table's methods before and after recovery.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass

from harness.metrics.base import Metric
from harness.report.rows import ALPHA, Row, by_sparsity, first, protocol_key, rankings, short, shown_metrics
from harness.results import CellResult
from harness.schema import Scalar
from harness.stats import holm


def recovered(r: CellResult) -> bool:
    return r.config.get("recovery") is not None


@dataclass
class Healing:
    """The recovered results of one protocol and the results of the protocol they were recovered from."""

    key: str
    before_key: str
    after: list[CellResult]
    before: list[CellResult]


def pair_groups(groups: dict[str, list[CellResult]]) -> tuple[dict[str, list[CellResult]], list[Healing]]:
    """The groups shown as they are, and the recovered groups whose pruned models are in another group (shown
    side by side with it instead). A recovered group without its before group stays an ordinary table."""
    plain, healings = dict(groups), []
    for key, group in groups.items():
        if not all(recovered(r) for r in group):
            continue
        before_key = protocol_key(group[0], without_recovery=True)
        if before_key in groups:
            healings.append(Healing(key, before_key, plain.pop(key), groups[before_key]))
    return plain, healings


@dataclass(frozen=True)
class Change:
    """One method's change by recovery on one metric: the paired test's p, and whether Holm calls it a change."""

    p_value: float | None
    changed: bool

    def label(self) -> str:
        if self.p_value is None:
            return "-"
        return f"{'yes' if self.changed else 'no'} (p={self.p_value:.2g})"


def changes(before: list[Row], after: list[Row], metric: Metric) -> dict[str, Change]:
    """The paired test of each method's model before and after, Holm-corrected over the methods tested."""
    after_of = {row.method: row for row in after}
    tested: dict[str, float | None] = {}
    for row in before:
        if row.method in after_of:
            a, b = row.metric(metric.name), after_of[row.method].metric(metric.name)
            tested[row.method] = metric.paired_p(a, b) if a and b else None
    ps = {method: p for method, p in tested.items() if p is not None}
    rejected = dict(zip(ps, holm(list(ps.values()), ALPHA), strict=True)) if ps else {}
    return {method: Change(p, rejected.get(method, False)) for method, p in tested.items()}


def _value(row: Row | None, metric: Metric) -> str:
    """The metric's first column (its headline value, with its interval) for the row."""
    seeds = row.metric(metric.name) if row else None
    return metric.cells(seeds, None)[0] if seeds else "-"


def _seconds(row: Row) -> str:
    reports = [r.recovery for r in row.results if r.recovery]
    return f"{statistics.fmean(x.seconds for x in reports):.1f}" if reports else "-"


def _loss(row: Row) -> str:
    reports = [r.recovery for r in row.results if r.recovery]
    if not reports:
        return "-"
    return (f"{statistics.fmean(x.loss_first for x in reports):.2f} → "
            f"{statistics.fmean(x.loss_last for x in reports):.2f}")


def before_after_table(before: list[Row], after: list[Row], dense: Row | None) -> tuple[list[str], list[list[str]]]:
    """One sparsity: the methods recovered, each before and after, with the paired test and both ranks."""
    methods = [row.method for row in after]
    before = [row for row in before if row.method in methods]
    after_of = {row.method: row for row in after}
    metrics = [m for m in shown_metrics(before + after) if m.rank_basis(first(before + after, m)) is not None]
    header, ranks, tests = ["method"], {}, {}
    for m in metrics:
        label = m.headers(first(before + after, m))[0]
        header += [f"# {short(m)} before", f"# {short(m)} after", f"{label} before", f"{label} after",
                   f"{short(m)} changed (Holm)"]
        ranks[m.name] = (rankings(before, m) or {}, rankings(after, m) or {})
        tests[m.name] = changes(before, after, m)
    header += ["train loss (first → last)", "recovery time (s)"]
    body = []
    if dense is not None:
        line = [dense.method]
        for m in metrics:
            line += ["ref", "ref", _value(dense, m), "-", "-"]
        body.append(line + ["-", "-"])
    primary = metrics[0] if metrics else None

    def order(row: Row) -> float:
        value = primary.rank_value(after_of[row.method].metric(primary.name)) if primary else None
        return value if value is not None else float("inf")

    for row in sorted(before, key=order):
        line = [row.method]
        for m in metrics:
            rank_before, rank_after = ranks[m.name]
            line += [rank_before[row.method].label if row.method in rank_before else "-",
                     rank_after[row.method].label if row.method in rank_after else "-",
                     _value(row, m), _value(after_of[row.method], m), tests[m.name][row.method].label()]
        body.append(line + [_loss(after_of[row.method]), _seconds(after_of[row.method])])
    return header, body


def tables(healing: Healing) -> Iterator[tuple[float, list[str], list[list[str]]]]:
    """(sparsity, header, body) of each sparsity at which some method was recovered."""
    before, after = by_sparsity(healing.before), by_sparsity(healing.after)
    dense = next(iter(before.get(0.0, [])), None)
    for sparsity in sorted(after):
        header, body = before_after_table(before.get(sparsity, []), after[sparsity], dense)
        yield sparsity, header, body


def settings_line(healing: Healing) -> str:
    r = healing.after[0]
    report = r.recovery
    settings = r.config["recovery"]
    data = report.data if report else {}
    return (f"- recovery: LoRA rank {settings['rank']}, alpha {settings['alpha']:g}, {settings['steps']} steps of "
            f"{settings['batch_size']} x {settings['seq_len']} tokens, lr {settings['lr']:g} ({settings['schedule']}, "
            f"{settings['warmup_steps']} warm-up), targets {', '.join(settings['target_modules'])}; trained on "
            f"{data.get('source', settings['data'])} ({data.get('role', '?')} part)"
            f"{f'; follows {report.follows}' if report else ''}")


NOTE = ("Each pruned model is shown before and after its recovery, measured on the same windows and examples. "
        "`changed` is the metric's paired test between the two models of the method (the test of its rank "
        f"column), Holm-corrected over the methods of the table at {ALPHA:g}. The ranks are among the methods of "
        "the table, before and after recovery, each supported by the paired test as in the tables above; rows are "
        "ordered by the first rank after recovery.")


def csv_fields(healings: list[Healing]) -> dict[str, dict[str, Scalar]]:
    """Per recovered cell id: the cell it was recovered from, and each ranking metric's paired test against it."""
    out: dict[str, dict[str, Scalar]] = {}
    for healing in healings:
        before, after = by_sparsity(healing.before), by_sparsity(healing.after)
        for sparsity, rows in after.items():
            for m in shown_metrics(rows):
                if m.rank_basis(first(rows, m)) is None:
                    continue
                for method, change in changes(before.get(sparsity, []), rows, m).items():
                    row = next(r for r in rows if r.method == method)
                    for r in row.results:
                        fields = out.setdefault(r.cell.id, {"recovered_from": _before_id(r, before.get(sparsity))})
                        fields[f"recovery_p_{m.name}"] = change.p_value
                        fields[f"recovery_changed_{m.name}"] = change.changed
    return out


def _before_id(r: CellResult, rows: list[Row] | None) -> str | None:
    for row in rows or []:
        for b in row.results:
            if row.method == r.cell.variant and b.cell.seed == r.cell.seed:
                return b.cell.id
    return None
