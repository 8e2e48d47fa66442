"""Qualitative samples beside a leaderboard: every row's greedy continuation of the same prompts."""

from __future__ import annotations

import io

from tabulate import tabulate

from harness.results import CellResult


def samples_markdown(results: list[CellResult]) -> str:
    """Each prompt's continuation by every row, side by side, one table per sparsity."""
    out = io.StringIO()
    out.write("# Qualitative samples\n\nGreedy continuations of the same prompts, fixed length, from each result file "
              "beside this one (seed 0 where there are several).\n")
    chosen = {}
    for r in sorted(results, key=lambda r: r.cell.seed, reverse=True):
        if r.qualitative:
            chosen[(r.cell.sparsity, r.cell.variant)] = r
    prompts = list(dict.fromkeys(s.prompt for r in chosen.values() for s in r.qualitative or []))
    dense = [r for (sp, _), r in chosen.items() if sp == 0.0]
    for sparsity in sorted({sp for sp, _ in chosen if sp > 0}):
        rows = dense + [r for (sp, _), r in sorted(chosen.items()) if sp == sparsity]
        out.write(f"\n## Target sparsity {sparsity:.1%}\n")
        for prompt in prompts:
            out.write(f"\n**{prompt}**\n\n")
            body = [[r.cell.variant, next((s.completion for s in r.qualitative or [] if s.prompt == prompt), "")
                     .replace("\n", " ").replace("|", "\\|")] for r in rows]
            out.write(tabulate(body, ["row", "continuation"], tablefmt="github", disable_numparse=True) + "\n")
    return out.getvalue()
