"""The paper's experiments as named benches (the authors' --main_table_results and --ablation).

Each preset fills the bench's rows, sparsities and seeds; every other setting (model,
profile, executor, metrics) comes from the bench as usual, and the results go to their own folder,
runs/<model>/<preset>/, with their own leaderboard (`prunebench publish` copies them to
results/<model>/<preset>/).
"""

from __future__ import annotations

from harness.bench.config import BenchConfig, Row
from harness.errors import PrunebenchError

PAPER_SPARSITIES = [0.25, 0.375, 0.5]
CALIBRATION_SIZES = [2, 4, 8, 16, 32, 64, 128, 256]


def _main_table(config: BenchConfig, profile: str) -> dict:
    """Every registered method (dense and both forms of BlockPruner and EvoPress included) at the paper's
    three sparsities; perplexity on the profile's datasets."""
    return {"methods": ["every"], "sparsities": PAPER_SPARSITIES}


def _calibration(config: BenchConfig, profile: str) -> dict:
    """2SSP at 50 % with 2..256 calibration samples, seeds 0-4 (mean and spread on the leaderboard).

    Each seed draws its data as the authors' ablation does: the documents shuffled by Python's ``random``
    seeded with it (seed 0 keeps their order), then joined and cut (calibration ``draw: shuffle``), unless the
    bench sets another draw.
    """
    asked = config.calibration
    draw = asked.draw if "draw" in asked.model_fields_set else "shuffle"
    variants = [Row(name=f"2ssp-calib{n}", method="2ssp", calibration=asked.model_copy(update={"samples": n,
                                                                                             "draw": draw}))
                for n in CALIBRATION_SIZES]
    return {"methods": [], "rows": variants, "sparsities": [0.5], "seeds": [0, 1, 2, 3, 4]}


def _pair(name_a: str, options_a: dict, name_b: str, options_b: dict) -> dict:
    return {"methods": [], "sparsities": PAPER_SPARSITIES,
            "rows": [Row(name=name_a, method="2ssp", options=options_a),
                         Row(name=name_b, method="2ssp", options=options_b)]}


def _rows_vs_columns() -> dict:
    """2SSP, its column-scoring ablation within the balanced budget, and that ablation as the authors ran it
    (the FFNs take the whole budget and N_attn attention modules go too: above the target sparsity)."""
    pair = _pair("2ssp", {}, "2ssp-columns", {"scoring": "channels"})
    whole = Row(name="2ssp-columns-whole", method="2ssp", options={"scoring": "channels", "ffn_budget": "whole"})
    return {**pair, "rows": [*pair["rows"], whole]}


def _balancing(config: BenchConfig, profile: str) -> dict:
    """2SSP at every sparsity step k/L with every attention count N (the paper's sweep of the balance).

    The paper profile sweeps everything; cpu-quick keeps the paper's three sparsities and every third N,
    which still shows the shape of the heat map in minutes per row on a laptop. Infeasible pairs
    (N attention modules beyond the budget, or too few to reach it) are left out, with a note.
    """
    from harness.models import num_layers

    L = num_layers(config.model, config.trust_remote_code)
    steps = [k / L for k in range(1, L)] if profile == "paper" else PAPER_SPARSITIES
    return _sweep(L, steps, profile)


def _balancing_32(config: BenchConfig, profile: str) -> dict:
    """The sweep as the authors' code runs it: the sparsities i/32 for every model, whatever its L.

    Paper profile: i = 1 .. 31 with every N = 0 .. L-1; cpu-quick: i = 8, 12, 16 (25, 37.5, 50 %) with every
    third N, the reduction of ``balancing``. Infeasible pairs are left out, with a note.
    """
    from harness.models import num_layers

    L = num_layers(config.model, config.trust_remote_code)
    steps = [i / 32 for i in (range(1, 32) if profile == "paper" else (8, 12, 16))]
    return _sweep(L, steps, profile)


def _sweep(layers: int, sparsities: list[float], profile: str) -> dict:
    """2SSP rows with n_attn = N at the given sparsities: every N below L (paper), every third (cpu-quick)."""
    counts = range(layers) if profile == "paper" else range(0, layers, 3)
    variants = [Row(name=f"2ssp-nattn{n}", method="2ssp", options={"n_attn": n}) for n in counts]
    return {"methods": [], "rows": variants, "sparsities": sparsities}


PRESETS = {
    "main-table": _main_table,
    "calibration": _calibration,
    "one-stage": lambda c, p: _pair("2ssp", {}, "2ssp-stage1-only", {"stages": "width"}),
    "rows-vs-cols": lambda c, p: _rows_vs_columns(),
    "l1-norm": lambda c, p: _pair("2ssp", {}, "2ssp-l1", {"norm": "l1"}),
    "balancing": _balancing,
    "balancing-32": _balancing_32,
}


def apply_preset(config: BenchConfig, profile: str) -> BenchConfig:
    build = PRESETS.get(config.preset or "")
    if build is None:
        raise PrunebenchError(f"unknown preset '{config.preset}'; known: {', '.join(PRESETS)}")
    return config.model_copy(update=build(config, profile))
