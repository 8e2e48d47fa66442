"""Leaderboards from result files: Markdown and CSV tables per sparsity, and a plot.

Only results measured under the same protocol share a table: the protocol key covers the model, the
evaluation data (by content hash or revision), the downstream tasks and limits, the latency settings
and the hardware. Invalid files are reported by path and left out, never rewritten.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.bench.config import canonical_hash
from harness.env import fingerprint
from harness.results import CellResult, scan_results, write_text_atomic

log = logging.getLogger(__name__)

PER_CELL_KEYS = {"id", "method", "variant", "sparsity", "seed", "method_options", "calibration", "cache_pruned",
                 "prunebench_version", "reprune"}


def protocol_key(r: CellResult) -> str:
    config = {k: v for k, v in r.config.items() if k not in PER_CELL_KEYS}
    data = {name: (p.protocol.get("text_sha256") or p.protocol.get("revision"), p.protocol.get("targets"))
            for name, p in r.perplexity.items()}
    return canonical_hash({"config": config, "data": data, "hardware": fingerprint(r.environment)}, 10)


@dataclass
class Row:
    method: str
    sparsity: float
    results: list[CellResult]

    def mean(self, values: Iterable[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return statistics.fmean(vals) if vals else None

    def spread(self, values: Iterable[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return statistics.stdev(vals) if len(vals) > 1 else None

    def ppl(self, dataset: str) -> list[float | None]:
        return [r.perplexity[dataset].value if dataset in r.perplexity else None for r in self.results]

    def acc(self, task: str | None = None) -> list[float | None]:
        out = []
        for r in self.results:
            d = r.downstream or {}
            out.append(d.get("mean_acc") if task is None else (d.get("scores", {}).get(task) or {}).get("acc"))
        return out

    def latency(self, field: str) -> list[float | None]:
        return [getattr(r.latency, field) if r.latency else None for r in self.results]


def _fmt(value: float | None, spread: float | None = None, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:.{digits}f}"
    return f"{text} ± {spread * scale:.{digits}f}" if spread is not None else text


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


def _tasks(results: list[CellResult]) -> list[str]:
    for r in results:
        if r.downstream:
            return list(r.downstream.get("scores", {}))
    return []


def sparsity_table(rows: list[Row], datasets: list[str], tasks: list[str], dense: Row | None) -> tuple[list[str], list[list[str]]]:
    """One table: methods ranked by perplexity on the first dataset."""
    dense_acc = dense.mean(dense.acc()) if dense else None
    key = datasets[0] if datasets else None

    def rank_key(row: Row) -> float:
        v = row.mean(row.ppl(key)) if key else None
        return v if v is not None else float("inf")

    header = ["#", "method", "achieved sparsity", "params (M)"] + [f"PPL {d}" for d in datasets]
    header += (["acc mean (%)", "recovery (%)"] + [f"{t} (%)" for t in tasks]) if tasks else []
    header += ["prune time (s)", "prefill speed-up", "decode speed-up"]
    body = []
    ordered = sorted(rows, key=rank_key)
    for rank, row in enumerate(ordered, 1):
        acc = row.mean(row.acc())
        line = [str(rank) if row.method != "dense" else "ref", row.method,
                _fmt(row.mean(r.parameters.achieved_sparsity for r in row.results if r.parameters), scale=100, digits=1) + " %",
                _fmt(row.mean(r.parameters.total_after for r in row.results if r.parameters), scale=1e-6, digits=1)]
        line += [_fmt(row.mean(row.ppl(d)), row.spread(row.ppl(d))) for d in datasets]
        if tasks:
            recovery = acc / dense_acc if acc is not None and dense_acc else None
            line += [_fmt(acc, row.spread(row.acc()), scale=100, digits=1), _fmt(recovery, scale=100, digits=1)]
            line += [_fmt(row.mean(row.acc(t)), scale=100, digits=1) for t in tasks]
        line += [_fmt(row.mean(r.pruning.seconds if r.pruning else None for r in row.results), digits=1),
                 _fmt(row.mean(row.latency("prefill_speedup")), digits=2) + "x",
                 _fmt(row.mean(row.latency("decode_speedup")), digits=2) + "x"]
        body.append(line)
    return header, body


def describe_protocol(r: CellResult) -> list[str]:
    c = r.config
    env = r.environment
    runtime = env.get("runtime") or {}
    lines = [f"- model: `{r.cell.model}`, profile `{c.get('profile')}`, dtype {runtime.get('dtype', c.get('dtype'))}, "
             f"device {runtime.get('device', c.get('device'))}"]
    for name, p in r.perplexity.items():
        ident = p.protocol.get("revision") or (p.protocol.get("text_sha256") or "")[:12]
        lines.append(f"- perplexity `{name}` ({p.protocol.get('role')} part, {ident}): {p.protocol.get('windows')} windows x "
                     f"{p.protocol.get('seq_len')} tokens, {p.protocol.get('targets')} scored tokens, BOS {p.protocol.get('bos')}")
    if r.downstream:
        proto = r.downstream.get("protocol", {})
        lines.append(f"- downstream (lm-eval {proto.get('lm_eval_version', '?')}, {proto.get('num_fewshot', 0)}-shot, "
                     f"limit {proto.get('limit')}): {', '.join(r.downstream.get('scores', {}))}")
    if r.latency:
        lp = r.latency.protocol
        lines.append(f"- latency: prefill 1 x {lp.get('seq_len')} ({lp.get('warmup')} warm-ups, {lp.get('repeats')} repeats, "
                     f"{lp.get('clock')}), decode {lp.get('decode_tokens')} tokens; speed-ups against the dense model "
                     f"measured in the same process")
    git = (env.get("prunebench") or {}).get("git") or {}
    gpu = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    lines.append(f"- hardware: {env.get('cpu', {}).get('model')} ({env.get('cpu', {}).get('cores')} cores), {gpu}; "
                 f"torch {env.get('torch', {}).get('version')}, transformers {env.get('packages', {}).get('transformers')}; "
                 f"prunebench {(git.get('commit') or '?')[:10]}{' (dirty)' if git.get('dirty') else ''}")
    return lines


def markdown(results: list[CellResult], failed: list[CellResult], problems: list[str]) -> str:
    out = io.StringIO()
    out.write("# prunebench leaderboard\n\n")
    out.write("Generated by `prunebench leaderboard` from the result files beside it; every number comes from those files.\n")
    for key, group in sorted(_group(results).items(), key=lambda kv: -len(kv[1])):
        latest = max(group, key=lambda r: r.finished_at)
        out.write(f"\n## {latest.cell.model} — protocol `{key}`\n\n")
        out.write("\n".join(describe_protocol(latest)) + "\n")
        datasets = list(latest.perplexity)
        tasks = _tasks(group)
        rows = _rows(group)
        dense = next(iter(rows.pop(0.0, [])), None)
        if dense:
            out.write("\n### Dense model\n\n")
            header, body = sparsity_table([dense], datasets, tasks, dense)
            out.write(tabulate(body, header, tablefmt="github", disable_numparse=True) + "\n")
        for sparsity in sorted(rows):
            out.write(f"\n### Target sparsity {sparsity:.1%}\n\n")
            header, body = sparsity_table(rows[sparsity], datasets, tasks, dense)
            out.write(tabulate(body, header, tablefmt="github", disable_numparse=True) + "\n")
        out.write("\nRanked by perplexity on the first dataset. Recovery = mean accuracy / dense mean accuracy. "
                  "Mean ± standard deviation over seeds where there are several.\n")
    if failed:
        out.write("\n## Failed cells\n\n")
        out.write(tabulate([[r.cell.id, r.error.kind if r.error else "?", (r.error.message if r.error else "")[:200]]
                            for r in failed], ["cell", "kind", "error"], tablefmt="github") + "\n")
    if problems:
        out.write("\n## Files left out\n\n" + "".join(f"- {p}\n" for p in problems))
    return out.getvalue()


def csv_rows(results: list[CellResult]) -> tuple[list[str], list[dict[str, Any]]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "model": r.cell.model, "row": r.cell.variant, "method": r.cell.method, "target_sparsity": r.cell.sparsity,
            "seed": r.cell.seed,
            "status": r.status, "protocol": protocol_key(r), "config_hash": r.config_hash,
        }
        if r.parameters:
            row.update(achieved_sparsity=r.parameters.achieved_sparsity, params_before=r.parameters.total_before,
                       params_after=r.parameters.total_after, block_params_before=r.parameters.blocks_before,
                       block_params_after=r.parameters.blocks_after)
        for name, p in r.perplexity.items():
            row[f"ppl_{name}"] = p.value
        if r.downstream:
            row["acc_mean"] = r.downstream.get("mean_acc")
            row["acc_norm_mean"] = r.downstream.get("mean_acc_norm")
            for task, s in r.downstream.get("scores", {}).items():
                row[f"acc_{task}"] = s.get("acc")
                row[f"acc_stderr_{task}"] = s.get("acc_stderr")
                row[f"acc_norm_{task}"] = s.get("acc_norm")
        if r.pruning:
            row["prune_seconds"] = r.pruning.seconds
            row["prune_from_cache"] = r.pruning.from_cache
        if r.latency:
            row.update(prefill_ms=r.latency.prefill_ms.median, decode_tokens_per_s=r.latency.decode_tokens_per_s.median,
                       prefill_speedup=r.latency.prefill_speedup, decode_speedup=r.latency.decode_speedup)
        row["peak_rss_bytes"] = r.memory.get("peak_rss_bytes")
        row["peak_cuda_bytes"] = r.memory.get("peak_cuda_bytes")
        row["error"] = r.error.message if r.error else ""
        rows.append(row)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    return header, rows


def plot(results: list[CellResult], path: Path) -> Path | None:
    """Perplexity on the first dataset against achieved sparsity, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results or not results[0].perplexity:
        return None
    dataset = next(iter(results[0].perplexity))
    by_point: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        if dataset in r.perplexity and r.parameters:
            by_point[(r.cell.variant, r.cell.sparsity)].append((r.parameters.achieved_sparsity * 100, r.perplexity[dataset].value))
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (row, _), points in by_point.items():  # seeds averaged
        series[row].append((statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, points in sorted(series.items()):
        points.sort()
        if method == "dense":
            ax.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="dense")
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity of the transformer blocks (%)")
    ax.set_ylabel(f"perplexity ({dataset}, log scale)")
    ax.set_title(f"{results[0].cell.model}: perplexity vs sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def publish(directory: Path, name: str = "leaderboard") -> list[Path]:
    """Write ``name``.md, .csv and .png into ``directory`` from the results found under it."""
    directory = Path(directory)
    found, problems = scan_results(directory)
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
    if any(r.samples for r in ok):
        samples = directory / "samples.md"
        write_text_atomic(samples, samples_markdown(ok))
        written.append(samples)
    return written


def heat_map(results: list[CellResult], path: Path) -> Path | None:
    """2SSP perplexity over (sparsity, attention modules removed): the paper's balancing sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

    cells = [r for r in results if r.cell.method == "2ssp" and r.config.get("method_options", {}).get("n_attn") is not None
             and r.perplexity]
    counts = sorted({r.config["method_options"]["n_attn"] for r in cells})
    rates = sorted({r.cell.sparsity for r in cells})
    if len(counts) < 2 or len(rates) < 2:
        return None
    dataset = next(iter(cells[0].perplexity))
    grid = [[math.nan] * len(counts) for _ in rates]
    for r in cells:
        grid[rates.index(r.cell.sparsity)][counts.index(r.config["method_options"]["n_attn"])] = math.log10(
            r.perplexity[dataset].value)
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.35), max(4, len(rates) * 0.3)))
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis_r")
    ax.set_xticks(range(len(counts)), [str(c) for c in counts], fontsize=7)
    ax.set_yticks(range(len(rates)), [f"{s:.3f}" for s in rates], fontsize=7)
    ax.set_xlabel("attention modules removed (N_attn)")
    ax.set_ylabel("target sparsity")
    ax.set_title(f"2SSP balance between the stages: log10 perplexity ({dataset}); blank = infeasible")
    fig.colorbar(image, ax=ax, label="log10 perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def samples_markdown(results: list[CellResult]) -> str:
    """Each prompt's continuation by every row, side by side, one table per sparsity."""
    out = io.StringIO()
    out.write("# Qualitative samples\n\nGreedy continuations of the same prompts, fixed length, from each result file "
              "beside this one (seed 0 where there are several).\n")
    chosen = {}
    for r in sorted(results, key=lambda r: r.cell.seed, reverse=True):
        if r.samples:
            chosen[(r.cell.sparsity, r.cell.variant)] = r
    prompts = list(dict.fromkeys(s["prompt"] for r in chosen.values() for s in r.samples or []))
    dense = [r for (sp, _), r in chosen.items() if sp == 0.0]
    for sparsity in sorted({sp for sp, _ in chosen if sp > 0}):
        rows = dense + [r for (sp, _), r in sorted(chosen.items()) if sp == sparsity]
        out.write(f"\n## Target sparsity {sparsity:.1%}\n")
        for prompt in prompts:
            out.write(f"\n**{prompt}**\n\n")
            body = [[r.cell.variant, next((s["completion"] for s in r.samples or [] if s["prompt"] == prompt), "")
                     .replace("\n", " ").replace("|", "\\|")] for r in rows]
            out.write(tabulate(body, ["row", "continuation"], tablefmt="github", disable_numparse=True) + "\n")
    return out.getvalue()
