"""The ray executor, for real: a small bench on a local Ray instance of 2 CPUs gives the results of the
local executor; Ray workers and cell processes killed mid-run are recorded as failed and the bench
completes; a re-run skips what finished and Ctrl-C cancels what is outstanding. Plus the resource
rule and the one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_bench import TINY

from harness.bench.config import BenchConfig, make_config
from harness.bench.expand import resolve
from harness.errors import PrunebenchError
from harness.results import read_result

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed: pip install 'prunebench[ray]'")

# TINY without latency; no pruned-model cache, so that each executor really prunes (equal decisions mean something).
BENCH = {**TINY, "methods": ["dense", "2ssp"], "sparsities": [0.25], "latency": {**TINY["latency"], "enabled": False},
         "cache_pruned": False}
ON_RAY = {"executor": "ray", "executor_options": {"num_cpus": 2}}  # a local Ray instance of 2 CPUs
KILL_WORKER, KILL_CELL = "2ssp-s0.5-seed0", "2ssp-s0.375-seed0"
KEPT = ("dense", "2ssp-s0.25-seed0")


def bench_file(tmp: Path, name: str, **overrides) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps({**BENCH, **overrides}))))
    return path


def bench_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "bench", "--config", str(config), "--out", str(out), *extra]


# One thread per cell everywhere: a Ray cell's torch threads are the CPUs it reserved (1 by default),
# and the local reference must compute the same way for its numbers to be comparable bit for bit.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- no cluster needed


def spec(device: str = "cpu", dtype: str = "auto"):
    """A Ray bench's dense cell: a Ray bench asks for CUDA even where this (driver) machine has none."""
    config = {**BENCH, "methods": ["dense"], "device": device, "dtype": dtype, "executor": "ray"}
    return resolve(BenchConfig(**config)).cells[0]


def test_resources_follow_the_documented_rule_and_the_options():
    from harness.bench.executors.base import parse_options as typed
    from harness.bench.executors.ray import GIB, RayOptions, cell_resources

    def parse_options(options):
        return typed(RayOptions, options, "ray")

    n = 135_000_000
    cpu = cell_resources(spec("cpu"), parse_options({}), cluster_gpus=4, parameters=n)
    assert (cpu.cpus, cpu.gpus, cpu.memory_bytes) == (1.0, 0.0, 2 * GIB + 3 * n * 4)  # float32 on the CPU
    gpu = cell_resources(spec("auto"), parse_options({}), cluster_gpus=4, parameters=n)
    assert (gpu.gpus, gpu.memory_bytes) == (1.0, 2 * GIB + n * 2)  # bf16, weights pass through host memory once
    assert cell_resources(spec("auto"), parse_options({}), cluster_gpus=0, parameters=n).gpus == 0
    assert cell_resources(spec("cuda", "float16"), parse_options({}), 0, n).memory_bytes == 2 * GIB + n * 2
    opts = parse_options({"cpus_per_cell": 4, "gpus_per_cell": 0.5, "memory_per_cell_gb": 10})
    set_ = cell_resources(spec("cpu"), opts, cluster_gpus=0, parameters=None)
    assert (set_.cpus, set_.gpus, set_.memory_bytes, set_.threads()) == (4.0, 0.5, 10 * GIB, 4)
    # A bench file's executor_options reach the executor as they are.
    cfg = make_config({"executor": "ray", "executor_options": {"cpus_per_cell": 2, "address": "10.0.0.1:6379"}}, {})
    assert parse_options(cfg.executor_options).cpus_per_cell == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"cpus_per_cel": 2}, "ray executor option 'cpus_per_cel': Extra inputs are not permitted"),
    ({"gpus_per_cell": -1}, "ray executor option 'gpus_per_cell"),
])
def test_bad_options_are_one_line(options, message):
    from harness.bench.executors import make_executor

    with pytest.raises(PrunebenchError, match=message) as err:
        make_executor("ray", options)
    assert "\n" not in str(err.value)


def test_a_missing_ray_install_is_one_line(monkeypatch):
    from harness.bench.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(PrunebenchError, match=r"needs Ray.*install with pip install 'prunebench\[ray\]'"):
        make_executor("ray", {})


@needs_ray
def test_an_unreachable_address_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nobody answers there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    result = subprocess.run(bench_cmd(bench_file(tmp_path, "b", methods=["dense"]), out, "--executor", "ray",
                                      "--ray-address", f"127.0.0.1:{port}"),
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "cells").exists()


@needs_ray
def test_a_cell_no_node_can_hold_fails_at_once_instead_of_waiting_forever(tmp_path):
    config = bench_file(tmp_path, "big", methods=["dense"], executor="ray",
                        executor_options={"num_cpus": 1, "memory_per_cell_gb": 100_000})
    result = subprocess.run(bench_cmd(config, tmp_path / "out"), capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    r = read_result(tmp_path / "out" / "cells" / "dense.json")
    assert r.status == "failed" and r.error.kind == "invalid"
    assert "no node of the cluster can hold the cell (1 CPU, 0 GPU, 100000.0 GiB" in r.error.message
    assert "memory_per_cell_gb" in r.error.message


# ---------------------------------------------------------------- a real bench on a local Ray instance


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                found[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, IndexError, ValueError):
                continue
    return found


def descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    out, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - out
        out |= frontier
    return out


def cell_process(bench_pid: int, cell_id: str) -> tuple[int, int, Path] | None:
    """(cell pid, its Ray worker's pid, its log) once this bench's cell runs, else None."""
    table = processes()
    for pid in descendants(bench_pid, table):
        ppid, cmd = table[pid]
        if "harness.bench.cell" in cmd and f"/prunebench-{cell_id}-" in cmd:
            spec_path = Path(cmd.split("--spec ", 1)[1].split()[0])
            return pid, ppid, spec_path.with_name(f"{cell_id}.log")
    return None


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("local")
    result = subprocess.run(bench_cmd(bench_file(tmp, "local"), tmp / "out"), capture_output=True, text=True,
                            env=ENV, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


@pytest.fixture(scope="module")
def ray_bench(tmp_path_factory) -> dict:
    """Four cells on 2 CPUs; mid-run (while pruning) the Ray worker of one cell and the process of
    another are SIGKILLed. The other two cells must finish and the bench must complete."""
    tmp = tmp_path_factory.mktemp("ray")
    config = bench_file(tmp, "ray", sparsities=[0.25, 0.5, 0.375], **ON_RAY)
    t0 = time.time()
    bench = subprocess.Popen(bench_cmd(config, tmp / "out"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
    killed: dict[str, dict] = {}
    try:
        while bench.poll() is None and len(killed) < 2:
            assert time.time() - t0 < 1500, "the ray bench did not reach its cells"
            for cell_id, target in ((KILL_WORKER, "worker"), (KILL_CELL, "cell")):
                found = None if cell_id in killed else cell_process(bench.pid, cell_id)
                if found and found[2].exists() and "pruning with" in found[2].read_text(errors="replace"):
                    cell_pid, worker_pid = found[:2]
                    assert processes()[worker_pid][1].startswith("ray::")  # the parent is a Ray worker
                    os.kill(worker_pid if target == "worker" else cell_pid, signal.SIGKILL)
                    killed[cell_id] = {"cell": cell_pid, "worker": worker_pid}
            time.sleep(0.5)
        _, err = bench.communicate(timeout=1500)
    finally:
        if bench.poll() is None:
            bench.kill()
    return {"out": tmp / "out", "config": config, "returncode": bench.returncode, "stderr": err, "killed": killed,
            "seconds": time.time() - t0}


@needs_ray
@pytest.mark.real_model
def test_a_bench_on_ray_equals_the_same_bench_run_locally(ray_bench, local_reference):
    assert set(ray_bench["killed"]) == {KILL_WORKER, KILL_CELL}, ray_bench["stderr"][-3000:]
    for cell in KEPT:
        a = read_result(ray_bench["out"] / "cells" / f"{cell}.json")  # schema-checked on reading
        b = read_result(local_reference / "cells" / f"{cell}.json")
        assert a.status == b.status == "ok"
        # Equal configs but for the run each belongs to (its folder and start, which is not hashed).
        assert a.config_hash == b.config_hash and {**a.config, "run": ""} == {**b.config, "run": ""}
        assert a.parameters == b.parameters  # achieved sparsity included
        assert (a.pruning and a.pruning.decisions) == (b.pruning and b.pruning.decisions)
        assert a.perplexity["enwiki-sample"].value == b.perplexity["enwiki-sample"].value
        assert a.downstream.scores["lambada_openai"].outcomes == b.downstream.scores["lambada_openai"].outcomes
        assert a.environment["ray"]["resources"]["cpus"] == 1 and a.environment["ray"]["hostname"]
        assert "as a Ray task" in (ray_bench["out"] / "cells" / f"{cell}.log").read_text()
        assert (ray_bench["out"] / "cells" / f"{cell}.spec.json").exists()
    assert read_result(ray_bench["out"] / "cells" / "2ssp-s0.25-seed0.json").pruning.from_cache is False


@needs_ray
@pytest.mark.real_model
def test_tasks_killed_mid_run_are_recorded_and_the_bench_completes(ray_bench):
    out, err = ray_bench["out"], ray_bench["stderr"]
    assert ray_bench["returncode"] == 1, err[-3000:]
    worker = read_result(out / "cells" / f"{KILL_WORKER}.json")
    assert worker.status == "failed" and worker.error.kind == "killed"
    assert "Ray worker running the cell died" in worker.error.message
    cell = read_result(out / "cells" / f"{KILL_CELL}.json")
    assert cell.status == "failed" and cell.error.kind == "killed" and "SIGKILL" in cell.error.message
    assert "pruning with" in cell.error.log_tail  # the log of the killed cell came back from the worker
    assert not alive(ray_bench["killed"][KILL_WORKER]["cell"])  # the cell died with its worker: no orphan
    assert "4/4 done (2 failed)" in err and "2 cells failed" in err
    md = (out / "leaderboard.md").read_text()
    assert "### Target sparsity 25.0%" in md


@needs_ray
@pytest.mark.real_model
def test_a_rerun_skips_finished_cells_and_ctrl_c_cancels_the_rest(ray_bench):
    out = ray_bench["out"]
    before = {c: (out / "cells" / f"{c}.json").stat().st_mtime for c in KEPT}
    # SIGINT at its default in the bench process: under a pytest started as a background job it is inherited
    # as ignored, and the Ctrl-C below would do nothing.
    bench = subprocess.Popen(bench_cmd(ray_bench["config"], out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not (cell_process(bench.pid, KILL_WORKER) and cell_process(bench.pid, KILL_CELL)):
        assert time.time() < deadline and bench.poll() is None, bench.communicate()[1][-3000:]
        time.sleep(0.5)
    running = [cell_process(bench.pid, c)[0] for c in (KILL_WORKER, KILL_CELL)]
    bench.send_signal(signal.SIGINT)
    _, err = bench.communicate(timeout=300)
    assert bench.returncode == 130, err[-3000:]
    assert "2 cells already done" in err and "interrupted: finished cells are kept" in err
    assert {c: (out / "cells" / f"{c}.json").stat().st_mtime for c in KEPT} == before
    time.sleep(1)
    assert not any(alive(pid) for pid in running)  # cancelled with their tasks
    assert read_result(out / "cells" / f"{KILL_WORKER}.json").error.kind == "killed"  # untouched
