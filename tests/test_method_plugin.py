"""A method added from outside methods/: one class here, one registration, and the harness runs it.

The toy method removes the last N layers' FFNs through the adapter, so its checkpoint replays without any
entry in methods/custom_ops.py. It declares its calibration and option defaults per protocol; the
profiles read them. Registered with ``register_method`` in this process and named in
``PRUNEBENCH_METHODS`` for the processes a bench starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import Field

from methods import get_method, method_names, register_method, unregister_method
from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod
from methods.errors import MethodError
from methods.registry import ENV_VAR

TOY = "toy-drop-ffns"


class DropOptions(MethodOptions):
    layers: int = Field(2, ge=1, description="how many of the last layers lose their FFN")


class DropLastFFNs(PruningMethod):
    name = TOY
    summary = "toy: remove the FFNs of the last N layers"
    Options = DropOptions
    # Distinct per protocol, so that a test sees which one a profile chose.
    calibration = {"full": CalibrationNeeds(4, 32), "quick": CalibrationNeeds(2, 16)}
    protocol_options = {"quick": {"layers": 1}}

    def plan(self, adapter: ModelAdapter, sparsity: float, options: DropOptions) -> dict[str, Any]:
        L = adapter.num_layers
        if options.layers >= L:
            raise MethodError(f"{TOY}: layers={options.layers} must leave one of the {L} FFNs")
        return {"layers": list(range(L - options.layers, L))}

    def prune(self, adapter: ModelAdapter, options: DropOptions, ctx: PruneContext) -> dict[str, Any]:
        layers = self.plan(adapter, ctx.sparsity, options)["layers"]
        for i in layers:
            adapter.remove_ffn(i)
        return {"removed_ffn": layers, "calibration": list(ctx.calibration.shape)}


@pytest.fixture
def toy():
    register_method(TOY, DropLastFFNs)
    yield TOY
    unregister_method(TOY)


def test_a_registered_method_is_a_method_until_unregistered(toy):
    assert isinstance(get_method(TOY), DropLastFFNs)
    assert TOY in method_names()
    from methods import expand_method_name

    assert TOY in expand_method_name("every") and TOY not in expand_method_name("all")
    unregister_method(TOY)
    with pytest.raises(MethodError, match=f"unknown method '{TOY}'"):
        get_method(TOY)
    register_method(TOY, f"{__name__}:DropLastFFNs")  # the same class by its path; the fixture removes it
    assert isinstance(get_method(TOY), DropLastFFNs)


def test_registrations_that_cannot_work_are_refused_and_leave_nothing_behind():
    with pytest.raises(MethodError, match="'2ssp' is a built-in method"):
        register_method("2ssp", DropLastFFNs)
    with pytest.raises(MethodError, match="no module 'nosuch_plugin_module'"):
        register_method("toy-missing", "nosuch_plugin_module:Toy")
    with pytest.raises(MethodError, match="is not a PruningMethod subclass whose name is 'toy-other'"):
        register_method("toy-other", DropLastFFNs)  # its name attribute says otherwise
    with pytest.raises(MethodError, match="not a usable method name"):
        register_method("every", DropLastFFNs)
    assert not {"toy-missing", "toy-other", "every"} & set(method_names())


def test_the_environment_names_methods_and_a_malformed_entry_is_one_line(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f" {TOY} = {__name__}:DropLastFFNs ")
    assert isinstance(get_method(TOY), DropLastFFNs)
    monkeypatch.setenv(ENV_VAR, f"{TOY}:{__name__}")
    with pytest.raises(MethodError, match=f"^{ENV_VAR}: '{TOY}:{__name__}' is not name=module:Class$"):
        method_names()
    monkeypatch.setenv(ENV_VAR, f"window={__name__}:DropLastFFNs")
    with pytest.raises(MethodError, match="'window' is a built-in method"):
        get_method("window")


class Untouched(PruningMethod):
    """A second reference row: what makes the dense model special is ``reference``, not its name."""

    name = "toy-reference"
    summary = "toy: the model as loaded"
    calibration = {"full": CalibrationNeeds(0, 0), "quick": CalibrationNeeds(0, 0)}
    reference = True

    def plan(self, adapter: ModelAdapter, sparsity: float, options: MethodOptions) -> dict[str, Any]:
        return {}

    def prune(self, adapter: ModelAdapter, options: MethodOptions, ctx: PruneContext) -> dict[str, Any]:
        return {}


def test_a_reference_method_runs_once_first_and_is_never_recovered(toy, tmp_path):
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve

    register_method("toy-reference", Untouched)
    try:
        bench = resolve(BenchConfig(model="smollm2-135m", methods=[TOY, "toy-reference"], sparsities=[0.25, 0.5],
                                    seeds=[0, 1], recovery={}, out=tmp_path / "out"))
        assert "toy-reference" not in method_names(include_reference=False)
    finally:
        unregister_method("toy-reference")
    first, *rest = bench.cells
    assert (first.id, first.method, first.sparsity, first.seed, first.recovery) == ("toy-reference", "toy-reference",
                                                                                   0.0, 0, None)
    assert [c.method for c in rest] == [TOY] * 8  # 2 sparsities x 2 seeds, each pruned and recovered
    assert sum(c.recovery is not None for c in rest) == 4


def test_a_method_declares_protocols_never_profiles():
    with pytest.raises(TypeError, match="calibration must name exactly the protocols"):
        type("ByProfile", (DropLastFFNs,),
             {"calibration": {"paper": CalibrationNeeds(1, 8), "cpu-quick": CalibrationNeeds(1, 8)}})
    with pytest.raises(TypeError, match="protocol_options only those"):
        type("ByProfile", (DropLastFFNs,), {"protocol_options": {"cpu-quick": {"layers": 3}}})
    with pytest.raises(MethodError, match="unknown protocol 'cpu-quick'"):
        DropLastFFNs().options(protocol="cpu-quick")
    from harness.profiles import METHOD_PROTOCOL, PROFILES

    assert set(METHOD_PROTOCOL) == set(PROFILES)  # every profile runs a protocol, and only profiles do


def test_the_code_fingerprint_covers_an_added_methods_own_file(monkeypatch, tmp_path):
    from harness.prune_cache import code_fingerprint

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert set(code_fingerprint()) == {"code", "torch", "transformers"}
    plugin = tmp_path / "toy_fingerprint_plugin.py"  # never imported: the fingerprint reads the file
    plugin.write_text("# version 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ENV_VAR, "toy-fp=toy_fingerprint_plugin:Toy")
    first = code_fingerprint()
    plugin.write_text("# version 2: a fix\n")
    second = code_fingerprint()
    assert first["added_methods"] != second["added_methods"] and first["code"] == second["code"]


@pytest.mark.real_model
def test_the_toy_method_prunes_saves_and_reloads_through_the_harness(toy, smollm2_ref, tmp_path):
    from harness import load_pruned, pruning
    from harness.checkpoint import read_manifest
    from harness.data.tokens import Calibration
    from methods.custom_ops import CUSTOM_OPS

    def job(profile: str) -> pruning.PruneJob:
        return pruning.PruneJob(method=TOY, sparsity=0.1, model="smollm2-135m", profile=profile, dtype="float32",
                                device="cpu", calibration=Calibration(source="enwiki-sample"))

    paper = pruning.prepare(job("paper"))
    assert (paper.calibration.samples, paper.calibration.seq_len, paper.options.layers) == (4, 32, 2)
    quick = pruning.prepare(job("cpu-quick"))
    assert (quick.calibration.samples, quick.calibration.seq_len, quick.options.layers) == (2, 16, 1)
    assert quick.plan == {"layers": [29]}

    outcome = pruning.execute(quick)
    report = outcome.report
    assert report.method == TOY and report.decisions == {"removed_ffn": [29], "calibration": [2, 16]}
    assert report.calibration["samples"] == 2 and report.calibration["source"] == "enwiki-sample"
    assert not outcome.adapter.has_ffn(29) and outcome.adapter.has_ffn(28)
    assert report.parameters_after["blocks"] < report.parameters_before["blocks"]

    out = pruning.save(outcome, tmp_path / "toy")
    ops = read_manifest(out)["ops"]
    assert ops == [{"op": "remove_ffn", "layer": 29}] and not {op["op"] for op in ops} & set(CUSTOM_OPS)
    x = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(x).logits, outcome.loaded.model(x).logits)


@pytest.mark.real_model
def test_a_bench_cell_process_runs_the_method_named_in_the_environment(tmp_path):
    """The bench and its cell are separate processes: PRUNEBENCH_METHODS is what reaches both."""
    from harness.results import read_result

    bench = {
        "model": "smollm2-135m", "profile": "cpu-quick", "methods": [TOY], "sparsities": [0.1],
        "perplexity": {"datasets": ["enwiki-sample"], "seq_len": 64, "max_windows": 2},
        "downstream": {"enabled": False}, "latency": {"enabled": False}, "qualitative": {"enabled": False},
        "cache_pruned": False,
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    here = str(Path(__file__).resolve().parent)  # this module must import in the cell's process too
    env = {**os.environ, ENV_VAR: f"{TOY}={__name__}:DropLastFFNs",
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--config", str(tmp_path / "bench.yaml"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = read_result(tmp_path / "out" / "cells" / f"{TOY}-s0.1-seed0.json")
    assert result.status == "ok" and result.pruning.method == TOY
    assert result.pruning.decisions == {"removed_ffn": [29], "calibration": [2, 16]}
    assert result.config["calibration"] == {"source": "enwiki-sample", "samples": 2, "seq_len": 16,
                                            "construction": "joined", "draw": "fixed"}
    assert result.parameters.blocks_after < result.parameters.blocks_before
    assert result.perplexity["enwiki-sample"].value > 1 and result.perplexity["enwiki-sample"].protocol.windows == 2
    assert json.loads((tmp_path / "out" / "cells" / f"{TOY}-s0.1-seed0.spec.json").read_text())["method"] == TOY
