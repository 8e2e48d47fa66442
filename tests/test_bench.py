"""The bench: cell expansion, validation, isolation of failing cells, resume after SIGKILL, schema checks,
the leaderboard. Real processes, the real embedded model, a deliberately tiny protocol."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.bench.config import BenchConfig, CellSpec, load_bench_file, make_config
from harness.bench.expand import hub_needs, resolve
from harness.errors import PrunebenchError
from harness.results import InvalidResult, read_result

# A protocol small enough for tests: a cell is a process start, a model load and a few short forwards.
TINY = {
    "model": "smollm2-135m",
    "profile": "cpu-quick",
    "perplexity": {"datasets": ["enwiki-sample"], "seq_len": 128, "max_windows": 3},
    "downstream": {"tasks": ["lambada_openai"], "limit": 8, "batch_size": 8},
    "latency": {"seq_len": 32, "warmup": 1, "repeats": 2, "decode_tokens": 2, "decode_prompt": 8},
    # 4 greedy tokens per prompt, not the profile's 12: generating them one by one was a quarter of a cell's time
    "qualitative": {"max_new_tokens": 4},
    "calibration": {"samples": 2, "seq_len": 64},
    "method_options": {"2ssp": {"search_batch": 16}},
}


# Perplexity alone: for the tests of how a bench runs (resume, signals, failures, the cache), not of what it measures.
MECHANICS = {name: {**TINY[name], "enabled": False} for name in ("downstream", "latency", "qualitative")}


def tiny_config(tmp_path: Path, **overrides) -> BenchConfig:
    return BenchConfig(**{**TINY, "out": tmp_path / "out", **overrides})


def test_a_bench_expands_into_cells_with_stable_hashes(tmp_path):
    bench = resolve(tiny_config(tmp_path, methods=["2ssp", "dense"], sparsities=[0.25, 0.5], seeds=[0, 1]))
    assert [c.id for c in bench.cells] == ["dense", "2ssp-s0.25-seed0", "2ssp-s0.25-seed1", "2ssp-s0.5-seed0",
                                           "2ssp-s0.5-seed1"]
    cell = bench.cells[1]
    assert (cell.calibration.source, cell.calibration.samples, cell.calibration.seq_len) == ("enwiki-sample", 2, 64)
    assert cell.method_options["search_batch"] == 16 and cell.method_options["alpha"] == 1.5
    assert bench.cells[0].calibration.source == "none"
    again = resolve(tiny_config(tmp_path, methods=["2ssp", "dense"], sparsities=[0.25, 0.5], seeds=[0, 1]))
    assert [c.config_hash() for c in again.cells] == [c.config_hash() for c in bench.cells]
    # A metric setting changes the configuration hash but not what the pruned model depends on.
    longer = resolve(tiny_config(tmp_path, methods=["2ssp"], sparsities=[0.25],
                                 perplexity={"datasets": ["enwiki-sample"], "seq_len": 256}))
    assert longer.cells[0].config_hash() != cell.config_hash()
    code = {"code": "0123456789abcdef", "torch": "2.13.0", "transformers": "5.23.0"}
    cpu = {"dtype": "float32", "device": "cpu: x"}
    assert longer.cells[0].prune_key("m", code, **cpu) == cell.prune_key("m", code, **cpu)
    assert cell.prune_key("m", code, **cpu) != bench.cells[2].prune_key("m", code, **cpu)  # another seed
    # Neither hash covers how to run (--force), and the pruning hash covers the code that prunes.
    forced = cell.model_copy(update={"reprune": True})
    assert (forced.config_hash(), forced.prune_key("m", code, **cpu)) == (cell.config_hash(),
                                                                          cell.prune_key("m", code, **cpu))
    assert cell.prune_key("m", {**code, "code": "fedcba9876543210"}, **cpu) != cell.prune_key("m", code, **cpu)


def test_the_driver_plans_each_cell_once_and_the_cell_carries_the_plan_out(tmp_path):
    from harness.bench.cell import prune_job
    from harness.bench.expand import validate
    from harness.pruning import prepare

    bench = resolve(tiny_config(tmp_path, methods=["2ssp", "dense"], sparsities=[0.25, 0.5], **MECHANICS))
    hashes = [c.config_hash() for c in bench.cells]
    validate(bench)
    assert [c.config_hash() for c in bench.cells] == hashes  # the plan follows from the settings: not hashed
    dense, quarter, half = bench.cells
    assert dense.plan == {} and quarter.plan["n_attn"] < half.plan["n_attn"]
    carried = CellSpec.model_validate_json(half.model_dump_json())  # as the executor hands it to the cell
    assert carried.plan == half.plan
    prepared = prepare(prune_job(carried))
    assert prepared.plan is carried.plan  # carried out, not made again
    assert prepare(prune_job(carried.model_copy(update={"plan": None}))).plan == half.plan  # a spec without one


def test_the_pruned_model_cache_key_names_what_auto_became(tmp_path):
    """``auto`` is bf16 on a GPU and float32 on a CPU: a key of the unresolved settings let a CPU run and a GPU run
    (or a host and a container sharing /cache) serve each other's pruned models."""
    from harness.devices import device_identity

    cell = resolve(tiny_config(tmp_path, methods=["2ssp"], sparsities=[0.25])).cells[0]
    assert (cell.dtype, cell.device) == ("auto", "auto")
    code = {"code": "0123456789abcdef", "torch": "2.13.0", "transformers": "5.23.0"}
    here = cell.prune_key("m", code, dtype="float32", device=device_identity(torch.device("cpu")))
    assert here != cell.prune_key("m", code, dtype="bfloat16", device="cuda: NVIDIA H100 80GB HBM3")
    assert here != cell.prune_key("m", code, dtype="bfloat16", device=device_identity(torch.device("cpu")))
    # Spelled out, the same resolved settings are the same pruning (and the configuration hash is untouched).
    spelled = cell.model_copy(update={"dtype": "float32", "device": "cpu"})
    assert spelled.prune_key("m", code, dtype="float32", device=device_identity(torch.device("cpu"))) == here
    assert device_identity(torch.device("cpu")).startswith("cpu: ")


def test_all_is_the_comparison_and_every_adds_the_whole_block_forms(tmp_path):
    comparison = ["dense", "2ssp", "shortgpt", "window", "slicegpt", "blockpruner", "evopress"]
    methods = [c.method for c in resolve(tiny_config(tmp_path, methods=["all"], sparsities=[0.25])).cells]
    assert methods == comparison
    every = [c.method for c in resolve(tiny_config(tmp_path, methods=["every"], sparsities=[0.25])).cells]
    assert set(every) == set(comparison) | {"blockpruner-block", "evopress-block"}
    both = [c.method
            for c in resolve(tiny_config(tmp_path, methods=["all", "evopress-block"], sparsities=[0.25])).cells]
    assert both == [*comparison, "evopress-block"]  # no duplicates, dense first


def test_bench_file_and_flags(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"methods": ["2ssp"], "sparsities": [0.5], "profile": "cpu-quick", "seeds": [3]}))
    cfg = make_config(load_bench_file(path), {"sparsities": [0.25, 0.375], "model": None})
    assert cfg.methods == ["2ssp"] and cfg.sparsities == [0.25, 0.375] and cfg.seeds == [3]
    path.write_text("methods: [2ssp\n")
    with pytest.raises(PrunebenchError, match="not valid YAML"):
        load_bench_file(path)
    with pytest.raises(PrunebenchError, match="bench setting 'sparsities.*not strictly between 0 and 1"):
        make_config({}, {"sparsities": [1.5]})
    with pytest.raises(PrunebenchError, match="bench setting 'unknown_key'"):
        make_config({"unknown_key": 1}, {})


def run_cli(args: list[str], env_extra: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize(("flags", "message"), [
    (["--methods", "nosuch"], "unknown method 'nosuch'"),
    (["--model", "/nonexistent/model"], "model directory '/nonexistent/model' does not exist"),
    (["--sparsity", "0.25,x"], "comma-separated list"),
    (["--profile", "quick"], "bench setting 'profile'"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_cell(tmp_path, flags, message):
    out = tmp_path / "out"
    result = run_cli(["bench", "--out", str(out), *flags], timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "cells").exists()


def test_unknown_dataset_in_a_bench_file_is_refused(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({**TINY, "perplexity": {"datasets": ["nosuchdata"]}, "methods": ["dense"]}))
    result = run_cli(["bench", "--config", str(path), "--out", str(tmp_path / "out")], timeout=120)
    assert result.returncode == 2 and "nosuchdata" in result.stderr


def write_bench_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "bench.yaml"
    values = json.loads(json.dumps({**TINY, **overrides}, default=str))
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.real_model
def test_a_crashing_cell_is_recorded_and_the_others_run(tmp_path):
    """A cell process that dies without a result (here: its spec file is garbage) is recorded as failed."""
    from harness.bench.executors import CellJob
    from harness.bench.executors.local import LocalExecutor

    bench = resolve(tiny_config(tmp_path, methods=["dense"], **MECHANICS))
    cells = tmp_path / "cells"
    cells.mkdir()
    bad = CellJob(bench.cells[0].model_copy(update={"id": "broken"}), cells / "broken.spec.json",
                  cells / "broken.json", cells / "broken.log", None)
    bad.spec_path.write_text("{ this is not a cell")
    good = CellJob(bench.cells[0], cells / "dense.spec.json", cells / "dense.json", cells / "dense.log", None)
    good.spec_path.write_text(good.spec.model_dump_json())
    events = []
    LocalExecutor().run([bad, good], events.append)
    statuses = [(e.job.spec.id, e.status) for e in events if e.kind == "done"]
    assert statuses == [("broken", "failed"), ("dense", "ok")]
    broken = read_result(bad.result_path)
    assert broken.status == "failed" and broken.error.kind == "exit" and "JSONDecodeError" in broken.error.log_tail
    assert broken.error.exit_code == 1  # the interpreter's status for an uncaught exception
    assert read_result(good.result_path).perplexity["enwiki-sample"].value > 1


@pytest.mark.real_model
@pytest.mark.parametrize("fork", [True, False], ids=["forked", "fresh"])
def test_a_cell_over_its_time_limit_is_killed_and_recorded(tmp_path, fork):
    from harness.bench.executors import CellJob
    from harness.bench.executors.local import LocalExecutor

    spec = resolve(tiny_config(tmp_path, methods=["dense"])).cells[0]
    job = CellJob(spec, tmp_path / "c.spec.json", tmp_path / "c.json", tmp_path / "c.log", timeout_s=1.0)
    job.spec_path.write_text(spec.model_dump_json())
    events = []
    LocalExecutor(fork=fork).run([job], events.append)
    status = events[-1].status
    result = read_result(job.result_path)
    assert status == "failed" and result.error.kind == "timeout" and "1 s" in result.error.message
    assert result.error.exit_code is None  # stopped by the executor, not ended by itself


@pytest.mark.real_model
def test_resume_after_sigkill_keeps_finished_cells(tmp_path):
    path = write_bench_file(tmp_path, methods=["dense", "2ssp"], sparsities=[0.25], **MECHANICS)
    out = tmp_path / "out"
    cells = out / "cells"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bench = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--config", str(path), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while not (cells / "dense.json").exists():  # the first cell finished: the second is under way
        assert time.time() < deadline and bench.poll() is None
        time.sleep(0.5)
    time.sleep(1)
    bench.send_signal(signal.SIGKILL)
    bench.wait()
    first = read_result(cells / "dense.json")
    mtime = (cells / "dense.json").stat().st_mtime
    # The killed bench's cell dies with it: no orphan writes a result later (a cell takes longer than this to end).
    time.sleep(6)
    assert not (cells / "2ssp-s0.25-seed0.json").exists()

    again = run_cli(["bench", "--config", str(path), "--out", str(out)])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 cells already done" in again.stderr and "dense" in again.stderr
    assert (cells / "dense.json").stat().st_mtime == mtime and read_result(cells / "dense.json") == first
    assert read_result(cells / "2ssp-s0.25-seed0.json").status == "ok"
    # The leaderboard from this real run: a table for the sparsity, a CSV row per cell, a plot.
    md = (out / "leaderboard.md").read_text()
    assert "### Target sparsity 25.0%" in md and "| ref " in md
    assert len((out / "leaderboard.csv").read_text().strip().splitlines()) == 3
    assert (out / "leaderboard.png").stat().st_size > 1000

    # A third run does nothing but publish; a corrupt file is moved aside, reported, and its cell re-run.
    (cells / "dense.json").write_text('{"schema_version": 1, "status": "ok"')
    third = run_cli(["bench", "--config", str(path), "--out", str(out)])
    assert third.returncode == 0
    assert "not readable JSON" in third.stderr and "moved aside" in third.stderr
    assert list(cells.glob("dense.json.invalid-*")) and read_result(cells / "dense.json").status == "ok"


def test_schema_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidResult, match="bad.json: not readable JSON"):
        read_result(bad)
    bad.write_text(json.dumps({"schema_version": 2, "status": "ok", "cell": {"id": "x"}}))
    with pytest.raises(InvalidResult, match="does not match the result schema"):
        read_result(bad)
    bad.write_text(json.dumps({"schema_version": 1, "status": "ok", "cell": {"id": "x"}}))
    with pytest.raises(InvalidResult, match="result schema version 1, this prunebench reads versions 2, 3"):
        read_result(bad)


def sigint_default() -> None:
    """In the child, before exec: SIGINT at its default disposition. A pytest started as a background job
    runs with SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.real_model
def test_sigint_stops_the_bench_cleanly(tmp_path):
    path = write_bench_file(tmp_path, methods=["dense", "2ssp"], sparsities=[0.25], **MECHANICS)
    out = tmp_path / "out"
    bench = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--config", str(path), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=sigint_default)
    deadline = time.time() + 600
    while not (out / "cells" / "dense.json").exists():
        assert time.time() < deadline and bench.poll() is None
        time.sleep(0.5)
    bench.send_signal(signal.SIGINT)
    _, err = bench.communicate(timeout=120)
    assert bench.returncode == 130
    assert "interrupted: finished cells are kept" in err
    assert read_result(out / "cells" / "dense.json").status == "ok"
    assert not (out / "cells" / "2ssp-s0.25-seed0.json").exists()


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    """A finished real bench (dense and 2SSP at 25 %, tiny protocol): the fixture JSONs of the leaderboard tests."""
    tmp = tmp_path_factory.mktemp("bench")
    path = write_bench_file(tmp, methods=["dense", "2ssp"], sparsities=[0.25])
    result = run_cli(["bench", "--config", str(path), "--out", str(tmp / "out")])
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


@pytest.mark.real_model
def test_every_metric_is_recorded_with_its_protocol_and_environment(small_bench):
    r = read_result(small_bench / "cells" / "2ssp-s0.25-seed0.json")
    assert r.status == "ok" and r.cell.method == "2ssp"
    assert abs(r.parameters.achieved_sparsity - 0.25) < 0.005
    assert r.parameters.total_after < r.parameters.total_before
    assert set(r.pruning.stages) >= {"stage1.calibration_forward", "stage2.search"} and r.pruning.seconds > 0
    assert r.pruning.decisions["n_attn"] == 2 and len(r.pruning.decisions["removed_attention"]) == 2
    ppl = r.perplexity["enwiki-sample"]
    assert (ppl.value > 1 and ppl.protocol.windows == 3 and ppl.protocol.seq_len == 128
            and ppl.protocol.data["text_sha256"])
    assert ppl.interval.low < ppl.value < ppl.interval.high and len(ppl.window_nll) == 3
    score = r.downstream.scores["lambada_openai"]
    assert 0 <= score.acc <= 1 and score.acc_interval.low <= score.acc <= score.acc_interval.high
    assert len(score.outcomes["acc"]) == score.n == 8 and score.outcomes["acc"].count("1") == round(score.acc * 8)
    assert r.latency.prefill_ms.repeats == 2 and len(r.latency.prefill_ms.samples) == 2
    speedup = r.latency.prefill_speedup
    assert speedup.value > 0 and speedup.interval.low <= speedup.value <= speedup.interval.high
    assert r.memory["process_peak_rss_bytes"] > 0
    if not r.pruning.from_cache:  # the pruning phase's own peak exists only where this cell pruned
        assert 0 < r.memory["peak_rss_bytes"] <= r.memory["process_peak_rss_bytes"]
    env = r.environment
    assert env["torch"]["version"].startswith("2.13.0") and env["packages"]["transformers"] and env["cpu"]["model"]
    assert r.config["method"] == "2ssp" and r.config_hash and r.config["calibration"]["samples"] == 2


@pytest.mark.real_model
def test_a_metric_change_reuses_the_cached_pruned_model(small_bench, tmp_path):
    path = write_bench_file(tmp_path, methods=["2ssp"], sparsities=[0.25], **MECHANICS,
                            perplexity={"datasets": ["enwiki-sample"], "seq_len": 128, "max_windows": 2})
    result = run_cli(["bench", "--config", str(path), "--out", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-2000:]
    first = read_result(small_bench / "cells" / "2ssp-s0.25-seed0.json")
    second = read_result(tmp_path / "out" / "cells" / "2ssp-s0.25-seed0.json")
    assert second.pruning.from_cache and second.pruning.cache_key == first.pruning.cache_key
    assert second.pruning.decisions == first.pruning.decisions
    assert second.perplexity["enwiki-sample"].protocol.windows == 2
    # The prune time shown is the first run's, and the leaderboard says so instead of calling it the cell's own.
    assert second.pruning.seconds == first.pruning.seconds and second.pruning.pruned_by == first.pruning.pruned_by
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    row = next(line for line in md.splitlines() if "| 2ssp " in line)
    assert row.rstrip(" |").endswith("†")
    by = first.pruning.pruned_by
    assert by.run and f"its prune time was measured by cell {by.cell} of the run {by.run} on {by.finished_at}" in md


@pytest.mark.real_model
def test_leaderboard_never_mixes_protocols(small_bench, tmp_path):
    import shutil

    from harness.report.leaderboard import write_leaderboard

    shutil.copytree(small_bench / "cells", tmp_path / "a")
    other = json.loads((small_bench / "cells" / "dense.json").read_text())
    other["config"]["perplexity"]["seq_len"] = 512  # as if measured with longer windows
    other["cell"]["id"] = other["config"]["id"] = "dense-other"
    (tmp_path / "a" / "dense-other.json").write_text(json.dumps(other))
    (tmp_path / "a" / "garbage.json").write_text("[1, 2")
    written = write_leaderboard(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.count("## smollm2-135m — protocol") == 2
    assert "## Files left out" in md and "garbage.json: not readable JSON" in md
    assert {p.suffix for p in written} == {".md", ".csv", ".png"}
    assert (tmp_path / "a" / "garbage.json").read_text() == "[1, 2"  # reported, never rewritten


def _fabricated_row(cells: Path, base: dict, name: str, nll_shift: float, windows: int) -> None:
    """A copy of ``base`` as another leaderboard row whose per-window NLL is shifted by ``nll_shift`` nats per token."""
    import copy
    import math

    from harness.stats import perplexity_interval

    r = copy.deepcopy(base)
    r["cell"]["variant"] = r["config"]["variant"] = name
    r["cell"]["id"] = r["config"]["id"] = f"{name}-s0.25-seed0"
    p = r["perplexity"]["enwiki-sample"]
    nll = [n + nll_shift * t for n, t in zip(p["window_nll"], p["window_targets"], strict=True)]
    p["window_nll"] = (nll * windows)[:windows]
    p["window_targets"] = (p["window_targets"] * windows)[:windows]
    p["protocol"]["windows"] = windows
    p["protocol"]["targets"] = sum(p["window_targets"])
    p["value"] = math.exp(math.fsum(p["window_nll"]) / sum(p["window_targets"]))
    p["interval"].update(perplexity_interval(p["window_nll"], p["window_targets"]).__dict__)
    (cells / f"{r['cell']['id']}.json").write_text(json.dumps(r))


@pytest.mark.real_model
def test_leaderboard_ranks_only_what_the_paired_test_separates(small_bench, tmp_path):
    import shutil

    from harness.report.leaderboard import write_leaderboard

    cells = tmp_path / "cells"
    shutil.copytree(small_bench / "cells", cells)
    base = json.loads((cells / "2ssp-s0.25-seed0.json").read_text())
    (cells / "2ssp-s0.25-seed0.json").unlink()
    # 8 windows: an exact sign-flip test can reach p = 2/256; identical windows give p = 1.
    _fabricated_row(cells, base, "best", 0.0, 8)
    _fabricated_row(cells, base, "twin", 0.0, 8)
    _fabricated_row(cells, base, "worse", 0.5, 8)
    _fabricated_row(cells, base, "worst", 1.0, 8)
    write_leaderboard(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    cells_of = [line.split("|") for line in md.splitlines() if line.startswith("| ")]
    ranks = {c[3].strip(): c[1].strip() for c in cells_of if c[3].strip() in ("best", "twin", "worse", "worst")}
    assert ranks == {"best": "1=", "twin": "1=", "worse": "3", "worst": "4"}
    assert "[95 % CI]" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "leaderboard.csv").read_text())))
    by_row = {r["row"]: r for r in rows}
    assert by_row["twin"]["rank_perplexity"] == "1=" and float(by_row["twin"]["rank_perplexity_p"]) == 1.0
    # With 3 windows no difference, however large, is significant: no rank of its own.
    for f in cells.glob("*-s0.25-seed0.json"):
        f.unlink()
    _fabricated_row(cells, base, "best", 0.0, 3)
    _fabricated_row(cells, base, "worst", 1.0, 3)
    write_leaderboard(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert [line.split("|")[1].strip() for line in md.splitlines() if "| worst " in line or "| best " in line] == \
        ["1=", "1="]


@pytest.mark.real_model
def test_results_of_a_dirty_tree_are_flagged_in_the_leaderboard(small_bench, tmp_path):
    import shutil

    from harness.report.leaderboard import write_leaderboard

    shutil.copytree(small_bench / "cells", tmp_path / "cells")
    for path in (tmp_path / "cells").glob("*.json"):
        if path.name.endswith(".spec.json"):
            continue
        data = json.loads(path.read_text())
        data["environment"]["prunebench"]["git"] = {"commit": "0" * 40, "dirty": path.name == "dense.json"}
        path.write_text(json.dumps(data))
    write_leaderboard(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "**Warning: 1 of 2 results were measured from modified (dirty) sources" in md and "dense" in md


@pytest.mark.real_model
def test_a_recovery_bench_shows_each_pruned_model_before_and_after(small_bench, tmp_path):
    """--recover beside a finished bench: the plain cells are resumed untouched, the recovered cell heals the model
    the plain one cached, and the leaderboard pairs the two on the same windows and examples."""
    import shutil

    from harness.metrics.registry import METRICS

    out = tmp_path / "out"
    shutil.copytree(small_bench, out)
    plain = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    path = write_bench_file(tmp_path, methods=["dense", "2ssp"], sparsities=[0.25],
                            recovery={"steps": 2, "batch_size": 2, "micro_batch_size": 2, "seq_len": 32,
                                      "warmup_steps": 0})
    result = run_cli(["bench", "--config", str(path), "--out", str(out), "--recover"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json") if p.name in plain} == plain
    before = read_result(out / "cells" / "2ssp-s0.25-seed0.json")
    after = read_result(out / "cells" / "2ssp-s0.25-seed0-recovered.json")
    assert after.recovery.steps == 2 and after.pruning.from_cache
    assert after.pruning.decisions == before.pruning.decisions and after.parameters == before.parameters
    assert before.recovery is None
    md = (out / "leaderboard.md").read_text()
    assert md.count("## smollm2-135m — protocol") == 1 and "## smollm2-135m — recovery" in md
    row = next(line for line in md.splitlines() if line.startswith("| 2ssp ") and "→" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    for name in ("perplexity", "downstream"):
        metric = METRICS[name]
        shown = [metric.cells([before.metric(name)], None)[0], metric.cells([after.metric(name)], None)[0]]
        assert cells[cells.index(shown[0]) + 1] == shown[1]  # before, then after
        p = metric.paired_p([before.metric(name)], [after.metric(name)])
        assert f"(p={p:.2g})" in cells[cells.index(shown[0]) + 2]
    assert (out / "recovery.png").stat().st_size > 0
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    healed = next(r for r in rows if r["recovered_from"])
    pruned = next(r for r in rows if r["row"] == "2ssp" and not r["recovered_from"])
    assert healed["recovered_from"] == "2ssp-s0.25-seed0" and healed["protocol"] != pruned["protocol"]
    assert float(healed["recovery_p_perplexity"]) == pytest.approx(
        METRICS["perplexity"].paired_p([before.perplexity], [after.perplexity]))


@pytest.mark.real_model
def test_repro_tolerance_is_the_methods_own_where_it_declares_one(small_bench):
    from harness.report.repro import compare, tolerances
    from harness.results import CellResult

    old = read_result(small_bench / "cells" / "2ssp-s0.25-seed0.json")
    data = old.model_dump(mode="json")
    data["perplexity"]["enwiki-sample"]["value"] *= 1.005  # a 5e-3 drift, as SliceGPT shows across CPUs
    new = CellResult.model_validate(data)
    ppl = [c for c in compare(old, new, tolerances([])) if c.metric.startswith("perplexity")]
    assert ppl and not any(c.ok for c in ppl) and ppl[0].tolerance == "<= 0.001 rel"
    as_slicegpt = old.model_copy(update={"cell": old.cell.model_copy(update={"method": "slicegpt"})})
    ppl = [c for c in compare(as_slicegpt, new, tolerances([])) if c.metric.startswith("perplexity")]
    assert ppl and all(c.ok for c in ppl) and ppl[0].tolerance == "<= 0.01 rel"
    # The user's tolerance replaces the metric's (the method's still widens it); the others stay.
    given = tolerances(["perplexity=6e-3"])
    assert given == {**tolerances([]), "perplexity": 6e-3} and given["downstream"] == 0.02
    ppl = [c for c in compare(old, new, given) if c.metric.startswith("perplexity")]
    assert ppl and all(c.ok for c in ppl) and ppl[0].tolerance == "<= 0.006 rel"


@pytest.mark.parametrize(("given", "message"), [
    (["latency=0.1"], "one of the metrics repro judges: perplexity (relative, default 0.001), downstream (absolute"),
    (["perplexity"], "the value must be a number >= 0"),
    (["perplexity=-1"], "the value must be a number >= 0"),
    (["downstream=lots"], "the value must be a number >= 0"),
])
def test_a_bad_repro_tolerance_is_one_line(given, message):
    from harness.report.repro import tolerances

    with pytest.raises(PrunebenchError) as err:
        tolerances(given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_profile_that_needs_the_hub_fails_at_once_without_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--profile", "paper", "--methods", "2ssp",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data source 'c4': allenai/c4@1588ec454efa en/c4-train.00000-of-01024.json.gz is " \
        "not in prunebench's data cache" in errors[0], result.stderr
    assert "the Hugging Face hub is unreachable" in errors[0] and "profile cpu-quick" in errors[0]
    assert "does not answer: reading the" in result.stderr and not (tmp_path / "out" / "cells").exists()


def test_a_bench_fetches_what_its_calibration_and_its_metrics_read_from_the_hub(tmp_path):
    """The driver's one hub access (harness.bench.inputs) covers the calibration corpus and what each metric says it
    reads (Metric.hub_needs): the paper's perplexity corpora, downstream tasks read from the hub; nothing offline."""
    paper = BenchConfig(profile="paper", methods=["dense", "2ssp"], sparsities=[0.5], out=tmp_path / "paper",
                        downstream={"source": "hub", "tasks": ["piqa", "arc_easy"]})
    assert hub_needs(resolve(paper)) == (
        [("c4", "calibration"), ("wikitext2", "evaluation"), ("c4", "evaluation"), ("fineweb-edu", "evaluation")],
        ["piqa", "arc_easy"])
    quiet = paper.model_copy(update={"out": tmp_path / "quiet", "perplexity": {"enabled": False},
                                     "downstream": {"source": "package"}})
    assert hub_needs(resolve(quiet)) == ([("c4", "calibration")], [])
    assert hub_needs(resolve(BenchConfig(methods=["dense"], out=tmp_path / "quick"))) == ([], [])


def test_a_second_bench_into_a_running_benchs_folder_is_one_line(tmp_path):
    """While a bench runs into a folder it holds its lock; another bench into that folder is refused in one line,
    exit 2, before any cell starts, and leaves the first bench's files alone."""
    from filelock import FileLock

    from harness.outputs import RUN_LOCK

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / RUN_LOCK):  # the first bench, as far as the second can tell
        second = run_cli(["bench", "--methods", "dense", "--out", str(out)])
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
    assert "another bench is running into" in errors[0]
    assert not (out / "cells").exists() and not (out / "bench.json").exists()
