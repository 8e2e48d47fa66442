"""The hf export: a pruned model as a plain transformers directory, loaded where prunebench cannot be imported,
with logits identical to load_pruned; what a standard config cannot hold is refused in one line; bench cells
export beside their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ARCHS, meta_adapter, tiny_model
from conftest import tiny_config as tiny_config_of

from harness.checkpoint import load_pruned, read_manifest
from harness.export import FORMATS, ExportRefused, check_export, export, export_model
from harness.export.base import file_digest, structure_of
from methods.arch import adapt

TEXT = "Structured pruning removes whole layers, attention modules or neurons from a language model."

# Runs with -I -S: no PYTHONPATH, no current directory, no site hooks (so no editable install of prunebench);
# only the venv's site-packages directory itself is appended, where transformers and torch live.
ISOLATED = """
import importlib.util, sys
purelib, text, out, *dirs = sys.argv[1:]
sys.path.append(purelib)
for name in ("harness", "methods"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable: the check would prove nothing"
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
answers = {}
for d in dirs:
    ids = AutoTokenizer.from_pretrained(d)(text, return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        answers[d] = {"ids": ids, "logits": model(ids).logits, "dtype": str(model.dtype), "class": type(model).__name__}
assert not any(m.split(".")[0] in ("harness", "methods") for m in sys.modules)
torch.save(answers, out)
"""


def load_isolated(tmp_path: Path, *dirs: Path) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = tmp_path / "answers.pt"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", ISOLATED, sysconfig.get_paths()["purelib"], TEXT, str(out),
                           *map(str, dirs)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.real_model
def test_a_shortgpt_checkpoint_loads_in_plain_transformers_with_identical_logits(shortgpt_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(shortgpt_checkpoint)
    removed = manifest["prune_report"]["decisions"]["n"]
    f32 = export(shortgpt_checkpoint, "hf", tmp_path / "f32.hf")
    bf16 = export(shortgpt_checkpoint, "hf", tmp_path / "bf16.hf", dtype="bfloat16")
    assert (f32.dtype, bf16.dtype) == ("float32", "bfloat16")
    for report in (f32, bf16):
        path = Path(report.path)
        assert (report.bytes, report.sha256) == file_digest(path)
        assert ({"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
                <= {p.name for p in path.iterdir()})
        assert not (path / "prunebench.json").exists() and not list(tmp_path.glob(".*tmp*"))
        config = json.loads((path / "config.json").read_text())
        assert config["num_hidden_layers"] == 30 - removed and config["intermediate_size"] == 1536
        assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == report.dtype
        assert "auto_map" not in config and not any("prunebench" in key for key in config)
    kept = manifest["parameters"]["total"]  # the pruned model's parameters, tied embedding once
    for report, width in ((f32, 4), (bf16, 2)):  # the weights, plus a few MB of config and tokenizer
        assert 0 < report.bytes - width * kept < 5e6, (report.bytes, width * kept)

    answers = load_isolated(tmp_path, Path(f32.path), Path(bf16.path))
    ids = AutoTokenizer.from_pretrained(shortgpt_checkpoint)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = load_pruned(shortgpt_checkpoint, dtype=torch.float32)(ids).logits
        # bfloat16: what transformers itself makes of the float32 export in bfloat16 (load_pruned's .to() would
        # also round the rotary frequencies, which transformers keeps in float32)
        expected_bf16 = AutoModelForCausalLM.from_pretrained(f32.path, dtype=torch.bfloat16)(ids).logits
    for path, dtype, want in ((f32.path, torch.float32, expected), (bf16.path, torch.bfloat16, expected_bf16)):
        got = answers[path]
        assert got["class"] == "LlamaForCausalLM" and got["dtype"] == str(dtype)
        assert torch.equal(got["ids"], ids)  # the tokenizer came along
        assert torch.equal(got["logits"], want), (got["logits"] - want).abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_exports_fewer_and_narrower_layers_to_a_standard_config(arch, tmp_path):
    """Layers removed and every FFN cut to one width: layer_types follows, intermediate_size is the new width."""
    from transformers import AutoModelForCausalLM

    adapter = adapt(tiny_model(arch, layers=4))
    adapter.remove_layers([1])
    for i in range(adapter.num_layers):
        adapter.keep_ffn_neurons(i, torch.randperm(96, generator=torch.Generator().manual_seed(i))[:40])
    report = export_model(adapter, None, None, "hf", tmp_path / "out")
    assert any("no tokenizer" in note for note in report.notes)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (3, 40)
    assert config.get("layer_types") == getattr(adapter.config, "layer_types", None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, adapter.model(ids).logits)


@pytest.mark.parametrize(("edit", "difference"), [
    (lambda a: a.remove_attention(2), "layer 2 has no attention"),
    (lambda a: a.remove_ffn(0), "layer 0 has no FFN"),
    (lambda a: a.keep_ffn_neurons(1, list(range(40))), "layer 1 keeps 40 of 96 FFN neurons while others keep 96"),
    (lambda a: [a.remove_attention(i) for i in (0, 1, 3)], "layers 0, 1, 3 have no attention"),
])
def test_what_a_standard_config_cannot_say_is_refused_in_one_line(arch, edit, difference):
    from harness.export.hf import _per_layer_problem

    adapter = meta_adapter(tiny_config_of(arch))
    edit(adapter)
    structure = structure_of(adapter, adapter.ops)
    reason = FORMATS["hf"].refusal(structure, "float32")
    problem = _per_layer_problem(structure)
    if problem is not None:  # this transformers does not build per-layer configs: refused, saying so
        assert reason == f"{difference}; {problem}" and "\n" not in reason
        assert problem.startswith(f"transformers {transformers.__version__} ")
    else:
        assert reason is None
    rotated = structure_of(adapter, [*adapter.ops, {"op": "slicegpt"}])
    assert FORMATS["hf"].refusal(rotated, "float32") == (
        "SliceGPT's rotations of the residual stream (ops: slicegpt) have no transformers config equivalent")


@pytest.mark.real_model
def test_a_heterogeneous_model_is_refused_or_exported_exactly(smollm2, tmp_path):
    """Whichever the installed transformers can do: a refusal naming why, or an export with identical logits."""
    from transformers import AutoModelForCausalLM

    adapter = adapt(smollm2.model)
    adapter.remove_attention(3)
    adapter.keep_ffn_neurons(5, list(range(812)))
    try:
        export_model(adapter, smollm2.tokenizer, None, "hf", tmp_path / "out")
    except ExportRefused as err:
        assert str(err).startswith("cannot export the model as hf: layer 3 has no attention; layer 5 keeps 812")
        assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
        return
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits,
                           adapter.model(ids).logits)


@pytest.mark.real_model
def test_a_2ssp_checkpoint_is_refused_naming_the_layers_and_the_format_that_holds_it(twossp_checkpoint):
    removed = sorted(read_manifest(twossp_checkpoint)["prune_report"]["decisions"]["removed_attention"])
    with pytest.raises(ExportRefused) as err:
        check_export(twossp_checkpoint, "hf")
    message = str(err.value)
    assert message.startswith(f"cannot export '{twossp_checkpoint}' as hf: layers {', '.join(map(str, removed))} "
                              "have no attention; ")
    assert "\n" not in message
    assert message.endswith("; format gguf can hold it" if "gguf" in FORMATS else "; no export format can hold it")


@pytest.mark.real_model
def test_a_cell_records_a_refused_export_and_writes_nothing(twossp_checkpoint, tmp_path):
    """The cell's own export step on a 2SSP model: refused with its reason, the cell's result is not at stake."""
    from transformers import AutoTokenizer

    from harness.bench.cell import _logged, write_exports
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve

    [spec] = resolve(BenchConfig(methods=["2ssp"], sparsities=[0.25], profile="cpu-quick", export=["hf"],
                                 out=tmp_path / "run")).cells
    manifest = read_manifest(twossp_checkpoint)
    adapter = _logged(load_pruned(twossp_checkpoint), manifest)
    done = write_exports(spec, adapter, AutoTokenizer.from_pretrained(twossp_checkpoint),
                         manifest["prune_report"]["model"], tmp_path / "exports")
    assert list(done.refused) == ["hf"] and done.written == {}
    assert "have no attention" in done.refused["hf"] and "\n" not in done.refused["hf"]
    assert not (tmp_path / "exports").exists() or not list((tmp_path / "exports").iterdir())


@pytest.mark.real_model
def test_a_bench_exports_every_cell_beside_its_result_and_the_leaderboard_ignores_them(tmp_path):
    import yaml

    from harness.results import read_result, scan_results

    bench = {"model": "smollm2-135m", "profile": "cpu-quick", "methods": ["dense", "shortgpt"], "sparsities": [0.2],
             "perplexity": {"datasets": ["enwiki-sample"], "seq_len": 128, "max_windows": 2},
             "downstream": {"enabled": False}, "latency": {"enabled": False}, "qualitative": {"enabled": False},
             "calibration": {"samples": 2, "seq_len": 64}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "harness.cli", "bench", "--config", str(tmp_path / "bench.yaml"), "--out", str(out),
            "--export", "hf"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    layers = {}
    for cell in ("dense", "shortgpt-s0.2-seed0"):
        result = read_result(out / "cells" / f"{cell}.json")
        written = result.exports.written["hf"]
        path = out / "cells" / "exports" / f"{cell}.hf"
        assert Path(written.path) == path and (written.bytes, written.sha256) == file_digest(path)
        assert result.exports.refused == {} and result.config["export"] == ["hf"]
        layers[cell] = json.loads((path / "config.json").read_text())["num_hidden_layers"]
        removed = result.pruning.decisions["n"] if result.pruning else 0
        assert layers[cell] == 30 - removed
    assert layers["shortgpt-s0.2-seed0"] < layers["dense"] == 30
    found, problems = scan_results(out)
    assert problems == [] and len(found) == 2  # config.json and tokenizer.json under exports/ are no results
    assert "Files left out" not in (out / "leaderboard.md").read_text()
    # Run again: both cells are done, with or without exports asked; a result that lacks an asked export is not.
    from harness.bench.config import load_bench_file, make_config
    from harness.bench.expand import resolve
    from harness.bench.runner import plan_jobs

    def planned(export: list[str]) -> list[str]:
        config = make_config(load_bench_file(tmp_path / "bench.yaml"), {"out": out, "export": export})
        return [job.spec.id for job in plan_jobs(resolve(config), force=False)[0]]

    assert planned(["hf"]) == planned([]) == []
    dense = out / "cells" / "dense.json"
    dense.write_text(read_result(dense).model_copy(update={"exports": None}).model_dump_json())
    assert planned([]) == [] and planned(["hf"]) == ["dense"]
