"""A bench writes into runs/, never into results/; `prunebench publish` is the one step that updates results/,
and only with a finished, clean run from one commit; `prunebench repro` fails when it has nothing to check.

The synthetic results here are real published result files (results/smollm2-135m/cells/), read at test time
through harness.results and edited (commit, dirty flag, status), so they follow the schema of the day."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.bench.config import BenchConfig
from harness.bench.expand import default_out, published_root, resolve
from harness.bench.runner import plan_jobs, run_bench
from harness.cli import app
from harness.report.leaderboard import write_leaderboard
from harness.report.publish import PublishRefused, default_dest, publish, read_bench
from harness.results import CellResult, ErrorInfo, read_result, scan_results, write_result

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "smollm2-135m"
CELLS = ["dense", "2ssp-s0.25-seed0", "shortgpt-s0.25-seed0"]
COMMIT = "c0ffee" + "0" * 34


def published_result(cell: str, commit: str | None = COMMIT, dirty: bool = False,
                     failed: bool = False) -> CellResult:
    """A real published result as if measured at ``commit`` (None: none recorded), clean or not, ok or not."""
    data = read_result(PUBLISHED / "cells" / f"{cell}.json").model_dump(mode="json")
    git = None if commit is None else {"commit": commit, "dirty": dirty}
    data["environment"].setdefault("prunebench", {})["git"] = git
    if failed:
        error = ErrorInfo(kind="exception", message="RuntimeError: boom")
        data.update(status="failed", error=error.model_dump())
    return CellResult.model_validate(data)


def make_run(root: Path, cells: list[str] = CELLS, edits: dict[str, dict] | None = None) -> Path:
    """A finished run folder as a bench leaves it: bench.json, cells/<cell>.{json,log,spec.json} and
    leaderboard.md.

    ``edits`` maps a cell to the keyword arguments of published_result."""
    run = root / "runs" / "smollm2-135m"
    for cell in cells:
        write_result(run / "cells" / f"{cell}.json", published_result(cell, **(edits or {}).get(cell, {})))
        for suffix in (".log", ".spec.json"):
            shutil.copy2(PUBLISHED / "cells" / f"{cell}{suffix}", run / "cells" / f"{cell}{suffix}")
    shutil.copy2(PUBLISHED / "bench.json", run / "bench.json")
    (run / "leaderboard.md").write_text("# the run's own leaderboard (publish rebuilds it)\n")
    return run


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the bench's own output ------------------------------------------------------------------------------


def test_a_bench_without_out_writes_under_runs_not_results():
    bench = resolve(BenchConfig(methods=["dense"], profile="cpu-quick"))
    assert bench.out == Path("runs") / "smollm2-135m"
    assert default_out("smollm2-135m", "calibration") == Path("runs/smollm2-135m/calibration")
    assert default_out("HuggingFaceTB/SmolLM2-135M") == Path("runs/HuggingFaceTB--SmolLM2-135M")


@pytest.mark.parametrize("where", ["absolute", "relative", "itself"])
def test_a_bench_into_results_is_refused_before_anything_runs(where, monkeypatch):
    monkeypatch.chdir(REPO)
    out = {"absolute": REPO / "results" / "mine", "relative": Path("results/smollm2-135m"),
           "itself": "results"}[where]
    before = snapshot(REPO / "results")
    result = invoke("bench", "--out", out, "--methods", "dense", "--profile", "cpu-quick")
    assert result.exit_code == 2, result.output
    assert "holds published runs only" in result.stderr and "prunebench publish" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(REPO / "results") == before and not (REPO / "results" / "mine").exists()


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """A git clone of this repository, with its committed results/."""
    checkout = shutil.which("git") and subprocess.run(["git", "-C", str(REPO), "rev-parse"],
                                                      capture_output=True)
    if not checkout or checkout.returncode:
        pytest.skip("needs git and a git checkout of prunebench")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert (clone / "results" / "smollm2-135m" / "cells" / "dense.json").is_file()
    return clone


def git_status(repo: Path, *paths: str) -> str:
    """Changes, untracked and ignored files included."""
    args = ["status", "--porcelain", "--ignored", "--untracked-files=all", "--", *paths]
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_a_fresh_clones_bench_measures_instead_of_resuming_from_results(fresh_clone, monkeypatch):
    monkeypatch.chdir(fresh_clone)
    published = fresh_clone / "results" / "smollm2-135m"
    # Make the clone's published dense cell exactly current (same configuration hash as the cell planned now),
    # so that a bench into results/ would take it as done: the old behaviour, checked below as the control.
    dense = resolve(BenchConfig(methods=["dense"], profile="cpu-quick"))
    current = read_result(published / "cells" / "dense.json").model_dump(mode="json")
    current.update(config=dense.cells[0].model_dump(mode="json"), config_hash=dense.cells[0].config_hash())
    write_result(published / "cells" / "dense.json", CellResult.model_validate(current))
    subprocess.run(["git", "-C", str(fresh_clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                    "--allow-empty", "-qam", "published dense, current"], check=True)
    assert plan_jobs(dataclasses.replace(dense, out=published), force=False) == ([], ["dense"])  # the control
    assert published_root(published / "cells") == fresh_clone / "results"  # and that folder is refused

    bench = resolve(BenchConfig(methods=["every"], profile="cpu-quick"))
    assert bench.out == Path("runs/smollm2-135m")
    jobs, skipped = plan_jobs(bench, force=False)
    assert skipped == [] and [j.spec.id for j in jobs] == [c.id for c in bench.cells] and len(jobs) == 25
    runs = fresh_clone / "runs" / "smollm2-135m" / "cells"
    assert all(runs in j.result_path.resolve().parents for j in jobs)
    assert git_status(fresh_clone, "results") == ""  # nothing written under results/


@pytest.mark.real_model
def test_a_real_bench_in_a_fresh_clone_writes_and_resumes_in_runs(fresh_clone, monkeypatch):
    from test_bench import TINY

    monkeypatch.chdir(fresh_clone)
    config = BenchConfig(**{**TINY, "methods": ["dense"]})
    first = run_bench(config)
    assert first.exit_code == 0 and first.ran == ["dense"] and first.out == Path("runs/smollm2-135m")
    run = fresh_clone / "runs" / "smollm2-135m"
    assert read_result(run / "cells" / "dense.json").status == "ok"
    assert not (run / "leaderboard.md").exists()  # the runner runs cells; the bench command writes the leaderboard
    write_leaderboard(run)
    again = run_bench(config)
    assert again.exit_code == 0 and again.ran == [] and again.skipped == ["dense"]
    assert git_status(fresh_clone, "results") == ""
    # Publishing that real run: the cell ran this clone's code (committed, clean) unless it imported
    # another copy of prunebench.
    git = read_result(run / "cells" / "dense.json").environment["prunebench"]["git"]
    if git and git["dirty"] is False:
        done = publish(run, fresh_clone.parent / "published")
        assert done.cells == ["dense"] and done.commit == git["commit"]
        assert (done.dest / "leaderboard.md").is_file()
    else:
        with pytest.raises(PublishRefused, match="dirty tree|no prunebench commit"):
            publish(run, fresh_clone.parent / "published")
    changed = git_status(fresh_clone).splitlines()
    assert changed and all(line.startswith("!! runs/") for line in changed)  # ignored by git; nothing else


# --- publish -------------------------------------------------------------------------------------------


def test_publish_copies_a_clean_run_and_rebuilds_its_leaderboard(tmp_path):
    run = make_run(tmp_path)
    dest = tmp_path / "results" / "smollm2-135m"
    result = invoke("publish", run, "--to", dest)
    assert result.exit_code == 0, result.output
    assert f"published 3 cells of smollm2-135m (commit {COMMIT[:10]})" in result.stdout
    assert "git add" in result.stdout and f"wrote {dest / 'leaderboard.md'}" in result.stdout
    assert sorted(p.name for p in (dest / "cells").iterdir()) == sorted(
        f"{c}{s}" for c in CELLS for s in (".json", ".log", ".spec.json"))
    for cell in CELLS:
        for suffix in (".json", ".log", ".spec.json"):
            name = f"{cell}{suffix}"
            assert (dest / "cells" / name).read_bytes() == (run / "cells" / name).read_bytes()
    assert (dest / "bench.json").read_bytes() == (run / "bench.json").read_bytes()
    md = (dest / "leaderboard.md").read_text()  # rebuilt from the copies, not the run's own copied
    assert "publish rebuilds it" not in md and "### Target sparsity 25.0%" in md and "| ref " in md
    assert "| shortgpt " in md and "| window " not in md
    assert len((dest / "leaderboard.csv").read_text().strip().splitlines()) == 1 + len(CELLS)
    assert (dest / "leaderboard.png").stat().st_size > 1000 and (dest / "samples.md").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["smollm2-135m"]  # no temporary folder left


def test_publish_defaults_to_results_of_the_model_and_preset(tmp_path):
    run = make_run(tmp_path)
    assert default_dest(read_bench(run)) == Path("results/smollm2-135m")
    bench = json.loads((run / "bench.json").read_text())
    bench["config"]["preset"] = "calibration"
    assert default_dest(bench) == Path("results/smollm2-135m/calibration")


def _garbage(run):
    (run / "cells" / "garbage.json").write_text("{not json")


def _results_gone(run):
    for path in (run / "cells").glob("*.json"):
        if not path.name.endswith(".spec.json"):
            path.unlink()


@pytest.mark.parametrize(("edits", "damage", "message"), [
    ({"shortgpt-s0.25-seed0": {"dirty": True}}, None, "1 results were measured from a dirty tree"),
    ({"dense": {"commit": None}}, None, "record no prunebench commit"),
    ({"2ssp-s0.25-seed0": {"failed": True}}, None, "1 cells failed (2ssp-s0.25-seed0)"),
    ({"dense": {"commit": "beef" * 10}}, None,
     f"made by 2 commits: {COMMIT[:10]} (2 cells), beefbeefbe (1 cells)"),
    ({}, _garbage, "garbage.json: not readable JSON"),
    ({}, lambda run: (run / "cells" / "dense.json").write_text('{"schema_version": 2}'), "does not match"),
    ({}, lambda run: (run / "cells" / "dense.json").write_text('{"schema_version": 1}'), "schema version 1"),
    ({}, lambda run: (run / "bench.json").unlink(), "has no bench.json"),
    ({}, lambda run: (run / "bench.json").write_text("[]"), "is not a bench record"),
    ({}, lambda run: (run / "leaderboard.md").unlink(), "has no leaderboard.md"),
    ({}, _results_gone, "holds no result"),
    ({}, lambda run: (run / "cells" / "window-s0.5-seed0.spec.json").write_text("{}"),
     "1 cells have no result"),
])
def test_publish_refuses_a_run_that_is_not_clean_and_complete(tmp_path, edits, damage, message):
    run = make_run(tmp_path, edits=edits)
    if damage:
        damage(run)
    dest = tmp_path / "results" / "smollm2-135m"
    (dest / "cells").mkdir(parents=True)
    (dest / "cells" / "old.log").write_text("the previous publication")
    before = snapshot(dest.parent)
    result = invoke("publish", run, "--to", dest)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(dest.parent) == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["smollm2-135m"]  # no temporary folder left


def test_a_tree_dirty_only_outside_the_sources_publishes(tmp_path):
    """Publishing one model's run into results/ leaves the tree dirty for the next model's bench; that bench's
    results still ran exactly their commit's sources (their recorded source digest says so), so they publish. A
    result whose sources differed from the commit's does not."""
    recorded = read_result(PUBLISHED / "cells" / "dense.json").environment["prunebench"]
    commit = recorded["git"]["commit"]
    dirty = {cell: {"commit": commit, "dirty": True} for cell in CELLS}
    dest = tmp_path / "results" / "smollm2-135m"
    result = invoke("publish", make_run(tmp_path / "a", edits=dirty), "--to", dest)
    assert result.exit_code == 0, result.output
    assert "results were measured from modified (dirty) sources" not in (dest / "leaderboard.md").read_text()

    run = make_run(tmp_path / "b", edits=dirty)
    data = json.loads((run / "cells" / "dense.json").read_text())
    data["environment"]["prunebench"]["source_sha256"] = "0" * 64  # sources edited after the commit
    (run / "cells" / "dense.json").write_text(json.dumps(data))
    result = invoke("publish", run, "--to", tmp_path / "elsewhere")
    assert result.exit_code == 2 and "1 results were measured from a dirty tree (uncommitted changes to the " \
        "sources" in result.stderr and ": dense)" in result.stderr


def test_publish_replaces_the_destination_as_a_whole(tmp_path):
    dest = tmp_path / "results" / "smollm2-135m"
    assert invoke("publish", make_run(tmp_path / "a", cells=CELLS), "--to", dest).exit_code == 0
    (dest / "notes.txt").write_text("left over")
    old_cell = "window-s0.5-seed0"  # a cell added by hand after publishing: not in its manifest, not counted
    write_result(dest / "cells" / f"{old_cell}.json", published_result(old_cell))
    assert "not among the files its published run's manifest" in scan_results(dest / "cells")[1][0]
    preset = dest / "calibration"  # a preset's run, published inside the model's folder: kept
    (preset / "cells").mkdir(parents=True)
    shutil.copy2(PUBLISHED / "bench.json", preset / "bench.json")
    write_result(preset / "cells" / "dense.json", published_result("dense"))

    newer = {"commit": "beef" * 10}
    run = make_run(tmp_path / "b", CELLS[:2], {"dense": newer, "2ssp-s0.25-seed0": newer})
    result = invoke("publish", run, "--to", dest)
    assert result.exit_code == 0, result.output
    assert "(replacing the previous publication, 3 results)" in result.stdout
    assert "kept the runs published inside it: calibration" in result.stdout
    assert not (dest / "notes.txt").exists() and not (dest / "cells" / f"{old_cell}.json").exists()
    assert not (dest / "cells" / "shortgpt-s0.25-seed0.json").exists()
    found, problems = scan_results(dest / "cells")
    assert problems == [] and sorted(r.cell.id for _, r in found) == sorted(CELLS[:2])
    assert {r.environment["prunebench"]["git"]["commit"] for _, r in found} == {"beef" * 10}
    assert len((dest / "leaderboard.csv").read_text().strip().splitlines()) == 3
    assert read_result(preset / "cells" / "dense.json").cell.id == "dense"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["smollm2-135m"]


def test_publish_does_not_replace_another_models_results_without_force(tmp_path):
    dest = tmp_path / "results" / "smollm2-135m"
    dest.mkdir(parents=True)
    (dest / "bench.json").write_text(json.dumps({"config": {"model": "meta-llama/Llama-2-7b-hf"}}))
    run = make_run(tmp_path)
    refused = invoke("publish", run, "--to", dest)
    assert refused.exit_code == 2
    assert "holds results of another model (meta-llama/Llama-2-7b-hf)" in refused.stderr
    assert "--force" in refused.stderr and not (dest / "cells").exists()
    forced = invoke("publish", run, "--to", dest, "--force")
    assert forced.exit_code == 0, forced.output
    assert read_bench(dest)["config"]["model"] == "smollm2-135m"


def test_publish_refuses_to_publish_a_folder_onto_itself(tmp_path):
    run = make_run(tmp_path)
    result = invoke("publish", run, "--to", run / "published")
    assert result.exit_code == 2 and "overlap" in result.stderr and not (run / "published").exists()


# --- repro ---------------------------------------------------------------------------------------------


def test_repro_with_nothing_left_by_its_filter_fails_in_one_line():
    published = [p for p in sorted((PUBLISHED / "cells").glob("*.json")) if not p.name.endswith(".spec.json")]
    result = invoke("repro", *published, "--only-device", "cuda")
    assert result.exit_code == 1, result.output
    assert "nothing to reproduce" in result.stderr
    assert f"none of the {len(published)} results" in result.stderr
    assert f"measured on cpu ({len(published)})" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("command", ["bench", "publish", "repro"])
def test_the_help_of_the_commands_renders(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert ("results/" if command != "repro" else "--only-device") in result.output


def test_the_plot_draws_each_methods_accuracy_at_its_achieved_sparsity_with_its_interval(tmp_path):
    """The leaderboard plot's accuracy panel: one point per row and sparsity, at the achieved (not target)
    sparsity, with the mean accuracy's own interval; a run without downstream scores gets the perplexity panel
    alone, one without perplexity the accuracy panel alone."""
    from harness.report.plots import _series, plot

    found, problems = scan_results(REPO / "tests" / "records" / "smollm2-135m-6625192" / "cells")
    assert not problems and len(found) == 3
    results = [r for _, r in found]

    def accuracy(r):
        i = r.downstream.mean_acc_interval
        return 100 * r.downstream.mean_acc, 100 * i.low, 100 * i.high

    series = _series(results, accuracy)
    assert set(series) == {"2ssp", "slicegpt", "window"}
    for r in results:
        (x, y, down, up), = series[r.cell.variant]
        assert x == pytest.approx(100 * r.parameters.achieved_sparsity)
        assert y - down == pytest.approx(100 * r.downstream.mean_acc_interval.low)
        assert y + up == pytest.approx(100 * r.downstream.mean_acc_interval.high)
    from matplotlib.image import imread

    both = imread(plot(results, tmp_path / "both.png"))
    no_downstream = [r.model_copy(update={"downstream": None}) for r in results]
    alone = imread(plot(no_downstream, tmp_path / "ppl.png"))
    assert both.shape[1] > 1.5 * alone.shape[1]  # two panels side by side, against one
    # Each metric draws its own panel: accuracy alone where perplexity was off; nothing to plot, no file.
    no_perplexity = imread(plot([r.model_copy(update={"perplexity": None}) for r in results], tmp_path / "acc.png"))
    assert no_perplexity.shape == alone.shape and not (no_perplexity == alone).all()
    nothing = [r.model_copy(update={"perplexity": None, "downstream": None}) for r in results]
    assert plot(nothing, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_the_note_under_the_tables_says_what_the_metrics_shown_rank_and_order_by():
    """The note is built from the metrics the results hold: with perplexity and accuracy both ranks and their paired
    tests are described and rows follow perplexity; without perplexity the rows follow mean accuracy and the note
    names no perplexity; without either, no rank is described."""
    from harness.report.leaderboard import table_note

    found, problems = scan_results(REPO / "tests" / "records" / "smollm2-135m-6625192" / "cells")
    assert not problems
    results = [r for _, r in found]
    both = table_note(results)
    assert both.startswith("Rows are ordered by perplexity on the first dataset. `# PPL` and `# acc` are ranks by "
                           "perplexity and by mean accuracy that a paired test supports")
    assert "perplexity windows" in both and "downstream examples" in both and "Recovery = " in both
    no_ppl = table_note([r.model_copy(update={"perplexity": None}) for r in results])
    assert no_ppl.startswith("Rows are ordered by mean accuracy. `# acc` is a rank by mean accuracy that a paired "
                             "test supports") and "perplexity" not in no_ppl
    neither = table_note([r.model_copy(update={"perplexity": None, "downstream": None}) for r in results])
    assert "rank" not in neither and "Rows are ordered" not in neither and "Recovery" not in neither
