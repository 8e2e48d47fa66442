"""Results that check themselves, settings that keep their meaning, and files others may read.

- A result's summaries are recomputed from its raw material when it is read; an edited one is left out of every
  table, by path. A result that claims a clean tree of a commit this repository holds must have run that
  commit's sources. A published run's manifest names every file it published, with its digest.
- A setting added after results were recorded keeps their hashes (a bench resumes them) and their meaning (a
  record without it reads as its earlier value, never today's default).
- What prunebench writes respects the umask, so a group shares a cache and published runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field
from typer.testing import CliRunner

from harness.cli import app
from harness.results import InvalidResult, read_result, scan_results
from methods import register_method, unregister_method
from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "smollm2-135m"
OLD_CELLS = REPO / "tests" / "records" / "smollm2-135m-6625192" / "cells"  # records older settings never saw


def published(cell: str) -> dict[str, Any]:
    return json.loads((PUBLISHED / "cells" / f"{cell}.json").read_text())


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


# --- summaries recomputed from raw material --------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["perplexity"]["enwiki-sample"].update(value=17.11), "value 17.11 is not what its windows give"),
    (lambda d: d["perplexity"]["enwiki-sample"]["interval"].update(low=20.0),
     "interval [20, 29.401] is not what its windows give"),
    (lambda d: d["perplexity"]["enwiki-sample"]["window_nll"].__setitem__(0, 1.0), "is not what its windows give"),
    (lambda d: d["perplexity"]["enwiki-sample"]["protocol"].update(targets=1), "windows score 10200 tokens"),
    (lambda d: d["parameters"].update(achieved_sparsity=0.3), "achieved_sparsity does not follow"),
])
def test_an_edited_summary_is_caught_when_read(tmp_path, edit, message):
    data = published("dense")
    edit(data)
    with pytest.raises(InvalidResult, match="edited by hand") as caught:
        read_result(write_json(tmp_path / "dense.json", data))
    assert message in str(caught.value) and str(tmp_path / "dense.json") in str(caught.value)


def test_the_leaderboard_leaves_an_edited_result_out_and_says_so(tmp_path):
    run = tmp_path / "run"
    for cell in ("dense", "2ssp-s0.25-seed0", "shortgpt-s0.25-seed0"):
        write_json(run / "cells" / f"{cell}.json", published(cell))
    forged = published("shortgpt-s0.25-seed0")
    forged["perplexity"]["enwiki-sample"]["value"] /= 10  # a baseline made to look better than 2SSP
    write_json(run / "cells" / "shortgpt-s0.25-seed0.json", forged)
    result = CliRunner().invoke(app, ["leaderboard", str(run)])
    assert result.exit_code == 0, result.output
    md = (run / "leaderboard.md").read_text()
    left_out = md.split("## Files left out")[1]
    assert "shortgpt-s0.25-seed0.json: perplexity: enwiki-sample: value" in left_out
    tables = md.split("## Files left out")[0]
    assert "| 2ssp " in tables and "| shortgpt " not in tables
    assert "shortgpt" not in (run / "leaderboard.csv").read_text()


# --- the dirty flag against the commit's tree --------------------------------------------------------------------


def _git_head() -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_a_clean_tree_claim_is_checked_against_the_commits_sources(tmp_path):
    from harness.env import commit_source_digest, source_digest

    head = _git_head()
    if head is None:
        pytest.skip("needs a git checkout")
    truth = commit_source_digest(head)
    assert truth is not None and len(truth) == 64
    data = published("dense")
    for dirty, digest, ok in ((False, truth, True), (False, "0" * 64, False), (True, "0" * 64, True)):
        data["environment"]["prunebench"].update(git={"commit": head, "dirty": dirty}, source_sha256=digest)
        path = write_json(tmp_path / "dense.json", data)
        if ok:
            assert read_result(path).git == {"commit": head, "dirty": dirty}
        else:
            with pytest.raises(InvalidResult, match=f"says it ran a clean tree of commit {head[:10]}, but the "
                                                    "sources it ran differ"):
                read_result(path)
    # What a process records is what it runs: in a clean checkout of HEAD that is HEAD's tree.
    assert (source_digest() == truth) == (not _dirty_sources())


def _dirty_sources() -> bool:
    import subprocess

    done = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--",
                           "harness", "methods"], capture_output=True, text=True)
    return bool(done.stdout.strip())


# --- the manifest of a published run -----------------------------------------------------------------------------


def _publish(tmp_path: Path) -> Path:
    from test_publish import make_run

    dest = tmp_path / "results" / "smollm2-135m"
    result = CliRunner().invoke(app, ["publish", str(make_run(tmp_path)), "--to", str(dest)])
    assert result.exit_code == 0, result.output
    return dest


def test_a_published_file_edited_or_added_afterwards_is_left_out(tmp_path):
    dest = _publish(tmp_path)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {"cells/dense.json", "cells/dense.log", "bench.json"} <= set(manifest["files"])
    assert scan_results(dest)[1] == []
    dense = dest / "cells" / "dense.json"
    dense.write_text(dense.read_text().replace('"wall_seconds": ', '"wall_seconds":  '))  # same values, new bytes
    shutil.copy2(dest / "cells" / "2ssp-s0.25-seed0.json", dest / "cells" / "2ssp-s0.375-seed0.json")
    found, problems = scan_results(dest)
    assert sorted(r.cell.id for _, r in found) == ["2ssp-s0.25-seed0", "shortgpt-s0.25-seed0"]
    assert any("dense.json: its content differs from what its published run's manifest" in p for p in problems)
    assert any("2ssp-s0.375-seed0.json: not among the files its published run's manifest" in p for p in problems)


# --- settings added later ------------------------------------------------------------------------------------------


def test_published_records_read_with_the_settings_they_ran(tmp_path):
    """Options added after an older SmolLM2 run read as their earlier values, not today's defaults."""
    from harness.bench.config import CellSpec

    slicegpt = read_result(OLD_CELLS / "slicegpt-s0.375-seed0.json").config
    assert slicegpt["method_options"]["variant"] == "paper"  # today's default is "reference"
    assert read_result(OLD_CELLS / "2ssp-s0.25-seed0.json").config["method_options"]["ffn_budget"] == (
        "balanced")
    assert read_result(OLD_CELLS / "window-s0.25-seed0.json").config["method_options"]["ties"] == "first"
    spec = CellSpec.from_record(slicegpt)
    assert spec.method_options["variant"] == "paper" and spec.numerics == "exact"
    assert spec.calibration.construction == "joined" and spec.calibration.draw == "fixed"


TOY = "toy-option-later"


class ToyOptionsV1(MethodOptions):
    layers: int = Field(1, ge=1)


class ToyV1(PruningMethod):
    name = TOY
    summary = "toy: an option is about to be added"
    Options = ToyOptionsV1
    calibration = {"full": CalibrationNeeds(2, 16), "quick": CalibrationNeeds(2, 16)}

    def plan(self, adapter: ModelAdapter, sparsity: float, options: MethodOptions) -> dict[str, Any]:
        return {}

    def prune(self, adapter: ModelAdapter, options: MethodOptions, ctx: PruneContext) -> dict[str, Any]:
        return {}


class ToyOptionsV2(ToyOptionsV1):
    order: Literal["old", "new"] = "new"  # the new default computes something else


class ToyV2(ToyV1):
    Options = ToyOptionsV2
    earlier_options = {"order": "old"}  # the one line that keeps older results what they were


class ToyOptionsV2Same(ToyOptionsV1):
    order: Literal["old", "new"] = "old"  # added with the old behaviour as its default


class ToyV2Same(ToyV1):
    Options = ToyOptionsV2Same
    earlier_options = {"order": "old"}


class ToyV2Undeclared(ToyV1):
    Options = ToyOptionsV2  # no earlier value declared


def _plan(tmp_path: Path, options: dict[str, Any] | None = None):
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve
    from harness.bench.runner import plan_jobs

    bench = resolve(BenchConfig(methods=[TOY], sparsities=[0.25], profile="cpu-quick", out=tmp_path / "run",
                                method_options={TOY: options or {}}))
    return bench, plan_jobs(bench, force=False)


def _as_version(cls: type[PruningMethod]) -> None:
    try:
        unregister_method(TOY)
    except Exception:  # not registered yet
        pass
    register_method(TOY, cls)


@pytest.fixture
def toy_versions():
    yield _as_version
    unregister_method(TOY)


def test_an_option_added_later_keeps_an_older_results_hash_resume_and_meaning(tmp_path, toy_versions):
    toy_versions(ToyV1)
    bench, ([job], skipped) = _plan(tmp_path)
    assert skipped == [] and job.spec.method_options == {"layers": 1}
    # Its result, as the cell would have written it (numbers from a real published cell).
    data = {**published("shortgpt-s0.25-seed0"), "config": job.spec.model_dump(mode="json"),
            "config_hash": job.spec.config_hash(), "cell": {**published("shortgpt-s0.25-seed0")["cell"],
                                                           "id": job.spec.id, "method": TOY, "variant": TOY}}
    data["config"].pop("run")  # as older code wrote it (a version-2 file)
    write_json(job.result_path, data)
    (tmp_path / "run" / "bench.json").write_text("{}")  # what makes the folder a bench run (run_bench writes it)
    job.spec_path.unlink()

    toy_versions(ToyV2Same)  # the option arrives with the old behaviour as its default: resumed as it was
    _, (jobs, skipped) = _plan(tmp_path)
    assert jobs == [] and skipped == [job.spec.id]

    toy_versions(ToyV2)  # the option arrives with a new default
    old = read_result(job.result_path)
    assert old.config["method_options"] == {"layers": 1, "order": "old"}  # what it ran, not today's default
    from harness.bench.config import CellSpec

    assert CellSpec.from_record(old.config).config_hash() == old.config_hash  # its hash is what it recorded
    _, (jobs, skipped) = _plan(tmp_path)
    assert [j.spec.id for j in jobs] == [job.spec.id] and skipped == []  # today's default computes otherwise
    _, (jobs, skipped) = _plan(tmp_path, {"order": "old"})
    assert jobs == [] and skipped == [job.spec.id]  # asked for the old behaviour: resumed

    toy_versions(ToyV2Undeclared)  # an option without an earlier value: the record cannot say what it ran
    with pytest.raises(InvalidResult, match=r"made before the settings method_options\.order existed, which "
                                            "declare no earlier value"):
        read_result(job.result_path)


# --- permissions -------------------------------------------------------------------------------------------------


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_results_and_checkpoints_follow_the_umask(tmp_path, group_umask):
    from conftest import tiny_model

    from harness.checkpoint import save_pruned
    from harness.files import write_text_atomic
    from methods.arch import adapt

    write_text_atomic(tmp_path / "r.json", "{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o664
    out = save_pruned(adapt(tiny_model("llama", layers=2)), None, tmp_path / "ckpt")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o664 and set(modes.values()) == {0o664}  # safetensors alone writes 0600
    assert out.stat().st_mode & 0o777 == 0o775


def test_repro_judges_every_recorded_decision_and_only_names_what_newer_code_adds():
    from harness.report.repro import compare, tolerances

    old = read_result(OLD_CELLS / "2ssp-s0.25-seed0.json")
    decisions = dict(old.pruning.decisions)
    newer = old.model_copy(update={"pruning": old.pruning.model_copy(update={
        "decisions": {**decisions, "numerics": "exact"}})})
    [check] = [c for c in compare(old, newer, tolerances([])) if c.metric == "decisions"]
    assert check.ok and check.difference == "newly reported: numerics"
    moved = {**decisions, "removed_attention": list(reversed(decisions["removed_attention"])) + [0]}
    other = old.model_copy(update={"pruning": old.pruning.model_copy(update={"decisions": moved})})
    [check] = [c for c in compare(old, other, tolerances([])) if c.metric == "decisions"]
    assert check.ok is False and check.new == "DIFFERENT: removed_attention"
