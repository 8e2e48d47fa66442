"""Leaderboards from result files: Markdown and CSV tables per sparsity, with the plots (harness.report.plots)
and the qualitative samples (harness.report.samples) beside them.

Only results measured under the same protocol share a table: the protocol key covers the model, the
evaluation data (by content hash or revision), the metrics' settings and the hardware. Invalid files are
reported by path and left out, never rewritten.

Every number is printed with its uncertainty (a 95 % interval, or mean ± standard deviation over seeds).
A rank is printed only where a paired test supports it: the rows are compared on the same perplexity
windows and the same downstream examples (``harness.stats.rank_by_paired_tests``), and rows that the
test does not separate from their group's leader share its rank ("1=").
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.env import fingerprint, ran_committed_sources
from harness.errors import PrunebenchError
from harness.files import write_text_atomic
from harness.hashing import canonical_hash, protocol_config
from harness.metrics.base import Metric
from harness.metrics.registry import METRICS
from harness.report.plots import heat_map, plot
from harness.report.samples import samples_markdown
from harness.results import CellResult, scan_results
from harness.schema import Scalar
from harness.stats import rank_by_paired_tests

log = logging.getLogger(__name__)

ALPHA = 0.05


def protocol_key(r: CellResult) -> str:
    config = protocol_config(r.config)
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


@dataclass(frozen=True)
class Ranking:
    label: str  # "1", "1=", "3"
    p_value: float | None  # against the leader of the row's group


def _group(results: list[CellResult]) -> dict[str, list[CellResult]]:
    groups: dict[str, list[CellResult]] = defaultdict(list)
    for r in results:
        groups[protocol_key(r)].append(r)
    return dict(groups)


def _rows(results: list[CellResult]) -> dict[float, list[Row]]:
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


def _prune_time(row: Row, notes: dict[str, str]) -> str:
    reports = [r.pruning for r in row.results if r.pruning]
    if not reports:
        return "-"
    text = f"{statistics.fmean(p.seconds for p in reports):.1f}"
    borrowed = [(r, p) for r, p in zip(row.results, reports, strict=False) if p.from_cache]
    if borrowed:
        mark = "†" * (len(notes) + 1) if len(notes) < 3 else f"[{len(notes) + 1}]"
        for r, p in borrowed:
            by = p.pruned_by
            run = f" of the run {by.run}" if by and by.run else ""
            who = (f"cell {by.cell}{run} on {by.finished_at}, commit {str((by.git or {}).get('commit', '?'))[:10]}"
                   f"{' (dirty)' if (by.git or {}).get('dirty') else ''}, {by.hardware}") if by else "an unrecorded run"
            notes[mark] = f"{r.cell.id}: pruned model reused from the cache; its prune time was measured by {who}"
        text += f" {mark}"
    return text


def sparsity_table(rows: list[Row], dense: Row | None, notes: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """One table: rows ordered by the first ranking metric, with a rank column per ranking metric."""
    shown = sorted((m for m in METRICS.values() if any(row.metric(m.name) for row in rows)),
                   key=lambda m: m.column_order)
    ranking_metrics = [m for m in shown if m.rank_basis(_first(rows, m)) is not None]
    ranks = {m.name: rankings([r for r in rows if r.method != "dense"], m) or {} for m in ranking_metrics}
    header = [f"# {_short(m)}" for m in ranking_metrics] + ["method", "achieved sparsity", "params (M)"]
    for m in shown:
        header += m.headers(_first(rows, m))
    header += ["prune time (s)"]
    primary = ranking_metrics[0] if ranking_metrics else None

    def order(row: Row) -> tuple[int, float]:
        if row.method == "dense" or primary is None:
            return (0, 0.0)
        v = primary.rank_value(row.metric(primary.name)) if row.metric(primary.name) else None
        return (1, v if v is not None else float("inf"))

    body = []
    for row in sorted(rows, key=order):
        line = [("ref" if row.method == "dense" else ranks[m.name].get(row.method, Ranking("-", None)).label)
                for m in ranking_metrics]
        params = [r.parameters for r in row.results if r.parameters]
        line += [row.method,
                 f"{100 * statistics.fmean(p.achieved_sparsity for p in params):.1f} %" if params else "-",
                 f"{1e-6 * statistics.fmean(p.total_after for p in params):.1f}" if params else "-"]
        for m in shown:
            seeds = row.metric(m.name)
            dense_seeds = dense.metric(m.name) if dense else None
            line += m.cells(seeds, dense_seeds) if seeds else ["-"] * len(m.headers(_first(rows, m)))
        line.append(_prune_time(row, notes))
        body.append(line)
    return header, body


def _first(rows: list[Row], metric: Metric) -> Any:
    return next(r.metric(metric.name)[0] for r in rows if r.metric(metric.name))


def _short(metric: Metric) -> str:
    return metric.short_name or metric.name


def describe_protocol(r: CellResult) -> list[str]:
    c = r.config
    env = r.environment
    runtime = env.get("runtime") or {}
    lines = [f"- model: `{r.cell.model}`, profile `{c.get('profile')}`, dtype {runtime.get('dtype', c.get('dtype'))}, "
             f"device {runtime.get('device', c.get('device'))}, numerics {c.get('numerics', 'exact')}, "
             f"tokenizer {c.get('tokenizer', 'fast')}"]
    for name, metric in METRICS.items():
        if r.metric(name) is not None:
            lines += metric.protocol_lines(r.metric(name))
    gpu = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    lines.append(f"- hardware: {env.get('cpu', {}).get('model')} ({env.get('cpu', {}).get('cores')} cores), {gpu}; "
                 f"torch {env.get('torch', {}).get('version')}, "
                 f"transformers {env.get('packages', {}).get('transformers')}")
    return lines


def provenance_lines(results: list[CellResult]) -> list[str]:
    """Which code measured the results; a loud warning for any result of a modified (dirty) tree."""
    commits: dict[str, list[str]] = defaultdict(list)
    dirty, unknown = [], []
    for r in results:
        git = r.git
        if not git:
            unknown.append(r.cell.id)
            continue
        commits[str(git.get("commit"))[:10]].append(r.cell.id)
        if not ran_committed_sources(r.environment):
            dirty.append(r.cell.id)
    lines = []
    if dirty:
        lines.append(f"**Warning: {len(dirty)} of {len(results)} results were measured from modified (dirty) "
                     f"sources, so no commit holds the code that made them:** {', '.join(sorted(dirty))}.")
    if unknown:
        lines.append(f"**Warning: {len(unknown)} results record no prunebench commit:** {', '.join(sorted(unknown))}.")
    made_by = "; ".join(f"`{c}` ({len(ids)} results)" for c, ids in sorted(commits.items()))
    if made_by:
        lines.append(f"Measured by prunebench commit {made_by}.")
    return lines


def table_note(results: list[CellResult]) -> str:
    """What the tables of a group mean, in the words of the metrics they show: how rows are ordered, what each rank
    column ranks by and on what its paired test pairs, how intervals are made."""
    shown = sorted((m for m in METRICS.values() if any(r.metric(m.name) for r in results)),
                   key=lambda m: m.column_order)
    ranking = [m for m in shown if m.rank_by]
    parts = []
    if ranking:
        labels = " and ".join(f"`# {_short(m)}`" for m in ranking)
        ranks = ("are ranks by " if len(ranking) > 1 else "is a rank by ") + " and by ".join(m.rank_by for m in ranking)
        parts.append(f"Rows are ordered by {ranking[0].order_by}. {labels} {ranks} that a paired test supports: the "
                     "best remaining row leads a group, every other row is compared with it on "
                     f"{' or '.join(m.paired_on for m in ranking)}, Holm-corrected at {ALPHA:g}; rows not separated "
                     "from the leader share its rank (`1=`).")
    intervals = list(dict.fromkeys(m.interval_note for m in shown if m.interval_note))
    if intervals:
        parts.append(f"Intervals are 95 %: {', '.join(intervals)}.")
    parts += [m.note for m in shown if m.note]
    parts.append("With several seeds: mean ± standard deviation over seeds.")
    return " ".join(parts)


def markdown(results: list[CellResult], failed: list[CellResult], problems: list[str]) -> str:
    out = io.StringIO()
    out.write(f"{TITLE}\n\n")
    out.write("Generated by `prunebench leaderboard` from the result files beside it; every number comes from those "
              "files.\n")
    for line in provenance_lines(results + failed):
        out.write(f"\n{line}\n")
    for key, group in sorted(_group(results).items(), key=lambda kv: -len(kv[1])):
        latest = max(group, key=lambda r: r.finished_at)
        out.write(f"\n## {latest.cell.model} — protocol `{key}`\n\n")
        out.write("\n".join(describe_protocol(latest)) + "\n")
        rows = _rows(group)
        dense = next(iter(rows.pop(0.0, [])), None)
        notes: dict[str, str] = {}
        if dense:
            out.write("\n### Dense model\n\n")
            header, body = sparsity_table([dense], dense, notes)
            out.write(tabulate(body, header, tablefmt="github", disable_numparse=True) + "\n")
        for sparsity in sorted(rows):
            out.write(f"\n### Target sparsity {sparsity:.1%}\n\n")
            header, body = sparsity_table(rows[sparsity], dense, notes)
            out.write(tabulate(body, header, tablefmt="github", disable_numparse=True) + "\n")
        out.write(f"\n{table_note(group)}\n")
        if notes:
            out.write("\n" + "".join(f"- {mark} {text}\n" for mark, text in notes.items()))
    if failed:
        out.write("\n## Failed cells\n\n")
        out.write(tabulate([[r.cell.id, r.error.kind if r.error else "?", (r.error.message if r.error else "")[:200]]
                            for r in failed], ["cell", "kind", "error"], tablefmt="github") + "\n")
    if problems:
        out.write("\n## Files left out\n\n" + "".join(f"- {p}\n" for p in problems))
    return out.getvalue()


def csv_rows(results: list[CellResult]) -> tuple[list[str], list[dict[str, Scalar]]]:
    ranks: dict[tuple[str, str], dict[str, Ranking]] = {}
    for key, group in _group([r for r in results if r.status == "ok"]).items():
        for sparsity, rows in _rows(group).items():
            for m in METRICS.values():
                for method, ranking in (rankings([r for r in rows if r.method != "dense"], m) or {}).items():
                    ranks.setdefault((key, f"{sparsity}|{method}"), {})[m.name] = ranking
    out = []
    for r in results:
        row: dict[str, Scalar] = {
            "model": r.cell.model, "row": r.cell.variant, "method": r.cell.method, "target_sparsity": r.cell.sparsity,
            "seed": r.cell.seed, "status": r.status, "protocol": protocol_key(r), "config_hash": r.config_hash,
        }
        for name, ranking in ranks.get((protocol_key(r), f"{r.cell.sparsity}|{r.cell.variant}"), {}).items():
            row[f"rank_{name}"] = ranking.label
            row[f"rank_{name}_p"] = ranking.p_value
        if r.parameters:
            row.update(achieved_sparsity=r.parameters.achieved_sparsity, params_before=r.parameters.total_before,
                       params_after=r.parameters.total_after, block_params_before=r.parameters.blocks_before,
                       block_params_after=r.parameters.blocks_after)
        for name, metric in METRICS.items():
            if r.metric(name) is not None:
                row.update(metric.csv(r.metric(name)))
        if r.pruning:
            row["prune_seconds"] = r.pruning.seconds
            row["prune_from_cache"] = r.pruning.from_cache
            row["prune_measured_by"] = r.pruning.pruned_by.cell if r.pruning.pruned_by else r.cell.id
        row["peak_rss_bytes"] = r.memory.get("peak_rss_bytes")
        row["peak_cuda_bytes"] = r.memory.get("peak_cuda_bytes")
        git = r.git or {}
        row["commit"] = git.get("commit")
        row["dirty"] = git.get("dirty")
        row["error"] = r.error.message if r.error else ""
        out.append(row)
    header: list[str] = []
    for row in out:
        header += [k for k in row if k not in header]
    return header, out


TITLE = "# prunebench leaderboard"


def _check_own(directory: Path, name: str) -> None:
    """The files a leaderboard replaces must be leaderboards: a user's own notes of the same name are left alone."""
    md, table = directory / f"{name}.md", directory / f"{name}.csv"
    if md.exists() and not (md.is_file() and md.read_text(errors="replace").startswith(TITLE)):
        raise PrunebenchError(f"{md} exists and is not a prunebench leaderboard: it is left alone; pass another --name")
    if table.exists() and not (table.is_file() and table.read_text(errors="replace").startswith("model,")):
        raise PrunebenchError(f"{table} exists and is not a prunebench leaderboard table: it is left alone; pass "
                              "another --name")


def write_leaderboard(directory: Path, name: str = "leaderboard") -> list[Path]:
    """Write ``name``.md, .csv and .png into ``directory`` from the results found under it.

    Refused (nothing written) when no valid result is found. Plot and sample files of an earlier leaderboard
    that this one does not rebuild (no perplexity any more, no sample) are removed, never left stale."""
    directory = Path(directory)
    _check_own(directory, name)
    found, problems = scan_results(directory)
    if not found:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        why = f": {problems[0]}{more}" if problems else ""
        raise PrunebenchError(f"no valid result under {directory}{why}; nothing written")
    for p in problems:
        log.warning("%s (left out)", p)
    ok = [r for _, r in found if r.status == "ok"]
    failed = [r for _, r in found if r.status == "failed"]
    written = []
    md = directory / f"{name}.md"
    write_text_atomic(md, markdown(ok, failed, problems))
    written.append(md)
    header, rows = csv_rows(ok + failed)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = directory / f"{name}.csv"
    write_text_atomic(csv_path, buf.getvalue())
    written.append(csv_path)
    groups = sorted(_group(ok).values(), key=len, reverse=True)
    if groups:
        for path in (plot(groups[0], directory / f"{name}.png"), heat_map(groups[0], directory / "balancing.png")):
            if path:
                written.append(path)
    if any(r.qualitative for r in ok):
        samples = directory / "samples.md"
        write_text_atomic(samples, samples_markdown(ok))
        written.append(samples)
    for stale in (directory / f"{name}.png", directory / "balancing.png", directory / "samples.md"):
        if stale not in written and stale.is_file():
            log.info("removing %s: this leaderboard has nothing to put there", stale)
            stale.unlink()
    return written
