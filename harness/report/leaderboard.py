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
from pathlib import Path

from tabulate import tabulate

from harness.env import ran_committed_sources
from harness.errors import PrunebenchError
from harness.files import write_text_atomic
from harness.metrics.registry import METRICS
from harness.report import recovery
from harness.report.plots import heat_map, plot, recovery_plot
from harness.report.rows import (
    ALPHA,
    Ranking,
    Row,
    by_protocol,
    by_sparsity,
    first,
    protocol_key,
    rankings,
    short,
    shown_metrics,
)
from harness.report.samples import samples_markdown
from harness.results import CellResult, scan_results
from harness.schema import Scalar

log = logging.getLogger(__name__)

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
    shown = shown_metrics(rows)
    ranking_metrics = [m for m in shown if m.rank_basis(first(rows, m)) is not None]
    ranks = {m.name: rankings([r for r in rows if not r.reference], m) or {} for m in ranking_metrics}
    header = [f"# {short(m)}" for m in ranking_metrics] + ["method", "achieved sparsity", "params (M)"]
    for m in shown:
        header += m.headers(first(rows, m))
    header += ["prune time (s)"]
    primary = ranking_metrics[0] if ranking_metrics else None

    def order(row: Row) -> tuple[int, float]:
        if row.reference or primary is None:
            return (0, 0.0)
        v = primary.rank_value(row.metric(primary.name)) if row.metric(primary.name) else None
        return (1, v if v is not None else float("inf"))

    body = []
    for row in sorted(rows, key=order):
        line = [("ref" if row.reference else ranks[m.name].get(row.method, Ranking("-", None)).label)
                for m in ranking_metrics]
        params = [r.parameters for r in row.results if r.parameters]
        line += [row.method,
                 f"{100 * statistics.fmean(p.achieved_sparsity for p in params):.1f} %" if params else "-",
                 f"{1e-6 * statistics.fmean(p.total_after for p in params):.1f}" if params else "-"]
        for m in shown:
            seeds = row.metric(m.name)
            dense_seeds = dense.metric(m.name) if dense else None
            line += m.cells(seeds, dense_seeds) if seeds else ["-"] * len(m.headers(first(rows, m)))
        line.append(_prune_time(row, notes))
        body.append(line)
    return header, body


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
        labels = " and ".join(f"`# {short(m)}`" for m in ranking)
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
    groups, healings = recovery.pair_groups(by_protocol(results))
    for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        latest = max(group, key=lambda r: r.finished_at)
        out.write(f"\n## {latest.cell.model} — protocol `{key}`\n\n")
        out.write("\n".join(describe_protocol(latest)) + "\n")
        rows = by_sparsity(group)
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
    for healing in healings:
        model = healing.after[0].cell.model
        out.write(f"\n## {model} — recovery `{healing.key}` of protocol `{healing.before_key}`\n\n")
        out.write(recovery.settings_line(healing) + "\n")
        for sparsity, header, body in recovery.tables(healing):
            out.write(f"\n### Target sparsity {sparsity:.1%}: before and after recovery\n\n")
            out.write(tabulate(body, header, tablefmt="github", disable_numparse=True) + "\n")
        out.write(f"\n{recovery.NOTE}\n")
    if failed:
        out.write("\n## Failed cells\n\n")
        out.write(tabulate([[r.cell.id, r.error.kind if r.error else "?", (r.error.message if r.error else "")[:200]]
                            for r in failed], ["cell", "kind", "error"], tablefmt="github") + "\n")
    if problems:
        out.write("\n## Files left out\n\n" + "".join(f"- {p}\n" for p in problems))
    return out.getvalue()


def csv_rows(results: list[CellResult]) -> tuple[list[str], list[dict[str, Scalar]]]:
    ranks: dict[tuple[str, str], dict[str, Ranking]] = {}
    for key, group in by_protocol([r for r in results if r.status == "ok"]).items():
        for sparsity, rows in by_sparsity(group).items():
            for m in METRICS.values():
                for method, ranking in (rankings([r for r in rows if not r.reference], m) or {}).items():
                    ranks.setdefault((key, f"{sparsity}|{method}"), {})[m.name] = ranking
    healed = recovery.csv_fields(recovery.pair_groups(by_protocol([r for r in results if r.status == "ok"]))[1])
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
        row.update(healed.get(r.cell.id, {}))
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
    plain, healings = recovery.pair_groups(by_protocol(ok))
    groups = sorted(plain.values(), key=len, reverse=True)
    if groups:
        for path in (plot(groups[0], directory / f"{name}.png"), heat_map(groups[0], directory / "balancing.png")):
            if path:
                written.append(path)
    if healings:
        path = recovery_plot(healings[0].before, healings[0].after, directory / "recovery.png")
        if path:
            written.append(path)
    if any(r.qualitative for r in ok):
        samples = directory / "samples.md"
        write_text_atomic(samples, samples_markdown(ok))
        written.append(samples)
    for stale in (directory / f"{name}.png", directory / "balancing.png", directory / "recovery.png",
                  directory / "samples.md"):
        if stale not in written and stale.is_file():
            log.info("removing %s: this leaderboard has nothing to put there", stale)
            stale.unlink()
    return written
