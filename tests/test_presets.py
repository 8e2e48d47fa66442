"""The authors' command line through prunebench's: --num-prune, the ablation presets, qualitative samples."""

from __future__ import annotations

import json

import pytest

from harness.bench.config import BenchConfig
from harness.bench.expand import resolve
from harness.errors import PrunebenchError
from harness.pruning import sparsities_for


def test_num_prune_maps_blocks_to_sparsities():
    assert sparsities_for(12, 32) == [0.375]
    assert sparsities_for(-2, 32) == [0.25, 0.375, 0.5]
    assert sparsities_for(-1, 30) == [k / 30 for k in range(1, 30)]
    for bad in (0, 30, -3):
        with pytest.raises(PrunebenchError, match="--num-prune"):
            sparsities_for(bad, 30)


def test_bench_resolves_num_prune_on_the_model(smollm2_ref, tmp_path):
    bench = resolve(BenchConfig(methods=["shortgpt"], num_prune=9, profile="cpu-quick", out=tmp_path))
    assert bench.sparsities == [0.3] and [c.sparsity for c in bench.cells] == [0.3]


@pytest.mark.parametrize(("preset", "rows", "sparsities", "seeds"), [
    ("calibration", [f"2ssp-calib{n}" for n in (2, 4, 8, 16, 32, 64, 128, 256)], [0.5], [0, 1, 2, 3, 4]),
    ("one-stage", ["2ssp", "2ssp-stage1-only"], [0.25, 0.375, 0.5], [0]),
    ("rows-vs-cols", ["2ssp", "2ssp-columns", "2ssp-columns-whole"], [0.25, 0.375, 0.5], [0]),
    ("l1-norm", ["2ssp", "2ssp-l1"], [0.25, 0.375, 0.5], [0]),
])
def test_ablation_presets_expand_into_their_rows(preset, rows, sparsities, seeds, tmp_path):
    bench = resolve(BenchConfig(preset=preset, profile="cpu-quick", out=tmp_path / preset))
    assert list(dict.fromkeys(c.variant for c in bench.cells)) == rows
    assert sorted({c.sparsity for c in bench.cells}) == sparsities and sorted({c.seed for c in bench.cells}) == seeds
    assert all(c.method == "2ssp" for c in bench.cells)
    if preset == "calibration":
        assert {c.calibration.samples for c in bench.cells} == {2, 4, 8, 16, 32, 64, 128, 256}
        assert len({c.id for c in bench.cells}) == 8 * 5
    if preset == "one-stage":
        assert {c.method_options["stages"] for c in bench.cells} == {"both", "width"}
    if preset == "rows-vs-cols":
        options = {c.variant: (c.method_options["scoring"], c.method_options["ffn_budget"]) for c in bench.cells}
        assert options == {"2ssp": ("neurons", "balanced"), "2ssp-columns": ("channels", "balanced"),
                           "2ssp-columns-whole": ("channels", "whole")}


def test_main_table_and_balancing_presets(smollm2_ref, tmp_path):
    main = resolve(BenchConfig(preset="main-table", profile="paper", out=tmp_path / "m"))
    assert main.cells[0].variant == "dense" and {c.sparsity for c in main.cells[1:]} == {0.25, 0.375, 0.5}
    assert {"blockpruner-block", "evopress-block", "blockpruner", "evopress"} <= {c.method for c in main.cells}
    assert main.cells[0].perplexity.datasets == ["wikitext2", "c4", "fineweb-edu"]
    balancing = resolve(BenchConfig(preset="balancing", profile="paper", out=tmp_path / "b"))
    assert {c.method_options["n_attn"] for c in balancing.cells} == set(range(30))  # SmolLM2: 30 layers
    assert {c.sparsity for c in balancing.cells} == {k / 30 for k in range(1, 30)}
    with pytest.raises(PrunebenchError, match="unknown preset 'nope'"):
        resolve(BenchConfig(preset="nope", out=tmp_path))


@pytest.mark.parametrize(("profile", "steps", "counts"), [
    ("paper", range(1, 32), range(30)), ("cpu-quick", (8, 12, 16), range(0, 30, 3)),
])
def test_balancing_32_sweeps_i_over_32_whatever_the_layer_count(smollm2_ref, tmp_path, profile, steps, counts):
    """The authors' grid i/32 on SmolLM2's 30 layers (balancing would use k/30); infeasible pairs are left out
    with a note, and every sparsity of the grid keeps some feasible N."""
    from harness.bench.expand import validate

    bench = resolve(BenchConfig(preset="balancing-32", profile=profile, out=tmp_path))
    assert {c.sparsity for c in bench.cells} == {i / 32 for i in steps}
    assert {c.method_options["n_attn"] for c in bench.cells} == set(counts)
    assert len(bench.cells) == len(steps) * len(counts) and all(c.method == "2ssp" for c in bench.cells)
    assert {c.variant for c in bench.cells} == {f"2ssp-nattn{n}" for n in counts}  # the heat map's rows
    validate(bench)
    assert {c.sparsity for c in bench.cells} == {i / 32 for i in steps}
    assert len(bench.cells) + len(bench.notes) == len(steps) * len(counts)
    assert all("infeasible" in note for note in bench.notes) and (profile == "cpu-quick" or bench.notes)


@pytest.mark.real_model
def test_samples_and_heat_map_are_published(tmp_path, smollm2_ref):
    """A tiny real balancing sweep (2 x 2 cells): the heat map and the side-by-side samples are written."""
    import subprocess
    import sys

    import yaml
    from test_bench import TINY

    spec = {**TINY, "methods": ["dense"], "sparsities": [0.25, 0.375],
            "downstream": {**TINY["downstream"], "enabled": False},
            "latency": {**TINY["latency"], "enabled": False},
            "qualitative": {"prompts": ["The capital of France is"], "max_new_tokens": 6},
            "rows": [{"name": f"2ssp-nattn{n}", "method": "2ssp", "options": {"n_attn": n}} for n in (1, 3)]}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(spec))))
    result = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--config", str(path),
                             "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "balancing.png").stat().st_size > 1000
    samples = (out / "samples.md").read_text()
    assert "**The capital of France is**" in samples and "| 2ssp-nattn3 " in samples and "| dense " in samples
    assert samples.count("## Target sparsity") == 2
