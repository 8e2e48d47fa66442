"""A metric kept outside prunebench, from this file alone: named in ``PRUNEBENCH_METRICS``, it becomes a bench
setting, a field of every cell's spec and result, a leaderboard column, a CSV field and a repro comparison, and
nothing in the harness names it (harness.metrics.registry)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from harness.metrics.base import Check, MeasureContext, Metric, MetricConfig

TOY_METRIC = f"{__name__}:ToyMetric"


class ToyConfig(MetricConfig):
    enabled: bool = False  # an extra: off unless a bench asks for it
    per: float = 1e6


class ToyScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: float  # the measured model's parameters, in units of ``per``


class ToyMetric(Metric[ToyConfig, ToyScore]):
    """Counts what the model in memory has left: a metric with nothing to estimate, so repro judges it exactly."""

    name = "toy"
    config_type = ToyConfig
    result_type = ToyScore
    extra = True
    column_order = 150
    tolerance, tolerance_kind = 0.0, "absolute"

    def default_config(self, profile: str) -> ToyConfig:
        return ToyConfig()

    def measure(self, config: ToyConfig, ctx: MeasureContext, before: object) -> ToyScore:
        return ToyScore(parameters=sum(p.numel() for p in ctx.model.parameters()) / config.per)

    def csv(self, result: ToyScore) -> dict[str, float]:
        return {"toy_parameters": result.parameters}

    def headers(self, sample: ToyScore) -> list[str]:
        return ["toy parameters"]

    def cells(self, seeds: list[ToyScore], dense: list[ToyScore] | None) -> list[str]:
        return [f"{seeds[0].parameters:.4f}"]

    def compare(self, old: ToyScore, new: ToyScore, tolerance: float | None) -> list[Check]:
        difference = new.parameters - old.parameters
        return [Check("toy.parameters", old.parameters, new.parameters, f"{difference:+g}", f"<= {tolerance:g} abs",
                      abs(difference) <= (tolerance or 0.0))]


def _env(**extra: str) -> dict[str, str]:
    here = str(Path(__file__).resolve().parent)  # this module must import in every process the bench starts
    return {**os.environ, "PRUNEBENCH_METRICS": TOY_METRIC, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])), **extra}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.real_model
def test_a_metric_named_in_the_environment_is_measured_shown_and_reproduced(tmp_path):
    bench = {
        "model": "smollm2-135m", "profile": "cpu-quick", "methods": ["dense", "shortgpt"], "sparsities": [0.25],
        "perplexity": {"enabled": False}, "downstream": {"enabled": False}, "latency": {"enabled": False},
        "qualitative": {"enabled": False}, "toy": {"enabled": True, "per": 1e3},
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    out = tmp_path / "out"
    run = _cli(["bench", "--config", str(tmp_path / "bench.yaml"), "--out", str(out)], _env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert "toy: on" in run.stderr  # the protocol printed before the run describes it

    spec = json.loads((out / "cells" / "shortgpt-s0.25-seed0.spec.json").read_text())
    assert spec["toy"] == {"enabled": True, "per": 1e3}  # the bench's settings, over the metric's defaults
    cells = {r["method"]: r for r in csv.DictReader((out / "leaderboard.csv").open())}
    dense, pruned = float(cells["dense"]["toy_parameters"]), float(cells["shortgpt"]["toy_parameters"])
    assert dense == float(cells["dense"]["params_after"]) / 1e3 and pruned < 0.85 * dense
    assert pruned == float(cells["shortgpt"]["params_after"]) / 1e3
    md = (out / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if "toy parameters" in line)
    row = next(line for line in md.splitlines() if "| shortgpt " in line)
    column = [c.strip() for c in header.split("|")].index("toy parameters")
    assert [c.strip() for c in row.split("|")][column] == f"{pruned:.4f}"

    # repro measures the cell again and judges the toy metric by its own (exact) tolerance; a user may replace it.
    again = _cli(["repro", str(out / "cells" / "dense.json"), "--tolerance", "toy=0.5", "--json"], _env())
    assert again.returncode == 0, again.stderr[-3000:]
    [cell] = json.loads(again.stdout)["cells"]
    [check] = [c for c in cell["checks"] if c["metric"] == "toy.parameters"]
    assert check["ok"] is True and check["tolerance"] == "<= 0.5 abs" and check["recorded"] == dense

    # A name that would shadow a setting of every result is refused in one line before anything runs.
    clash = _cli(["bench", "--config", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "other")],
                 _env(PRUNEBENCH_METRICS=f"{__name__}:Shadowing"))
    assert clash.returncode == 2 and not (tmp_path / "other").exists()
    assert clash.stderr.strip().splitlines() == [
        "error: PRUNEBENCH_METRICS: a metric is named 'status', which is a field of a result already"]


class Shadowing(ToyMetric):
    name = "status"
