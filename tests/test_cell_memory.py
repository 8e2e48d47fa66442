"""A cell holds one model at a time: once the dense forward passes are done, a pruned model served from
the cache is loaded into the memory the dense one let go, not beside it. Real cells of the embedded
SmolLM2-135M in their own processes, peak resident memory (VmHWM) read at two points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.bench.config import BenchConfig
from harness.bench.expand import resolve

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

# Runs one cell as harness.bench.cell does and reads the process's peak resident memory when the pruned
# model is asked for (everything before it is the dense phase: loading, the dense forward passes) and at
# the end. The cell's own functions run unchanged; the wrapper only reads /proc.
DRIVER = """
import json, sys
from pathlib import Path

import harness.bench.cell as cell
from harness.bench.config import CellSpec


def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


marks = {}
obtain = cell.prune_or_reuse


def observed(spec, loaded, memory):
    marks["dense_phase"] = peak()
    return obtain(spec, loaded, memory)


cell.prune_or_reuse = observed
result = cell.run(CellSpec(**json.loads(Path(sys.argv[1]).read_text())))
marks["end"] = peak()
print(json.dumps({**marks, "from_cache": result.pruning.from_cache, "total_after": result.parameters.total_after,
                  "total_before": result.parameters.total_before}))
"""


def run_cell(driver: Path, spec_path: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, str(driver), str(spec_path)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.real_model
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_a_cell_served_from_the_cache_never_holds_the_dense_and_the_pruned_model_together(smollm2_ref, tmp_path):
    from harness.paths import cache_dir

    cache = tmp_path / "cache"  # a pruned-model cache of its own; the converted embedded model is shared
    cache.mkdir()
    (cache / "models").symlink_to(cache_dir() / "models")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PRUNEBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    config = BenchConfig(
        model="smollm2-135m", profile="cpu-quick", methods=["shortgpt"], sparsities=[0.25], dtype="float32",
        device="cpu", out=tmp_path / "out", calibration={"samples": 1, "seq_len": 32},
        perplexity={"datasets": ["enwiki-sample"], "seq_len": 64, "max_windows": 1},
        downstream={"enabled": False}, qualitative={"enabled": False},
        latency={"seq_len": 16, "warmup": 0, "repeats": 2, "decode_tokens": 1, "decode_prompt": 4},  # dense forwards
    )
    [spec] = resolve(config).cells
    spec_path, driver = tmp_path / "cell.spec.json", tmp_path / "driver.py"
    spec_path.write_text(spec.model_dump_json())
    driver.write_text(DRIVER)

    assert run_cell(driver, spec_path, env)["from_cache"] is False  # this one prunes and fills the cache
    served = run_cell(driver, spec_path, env)
    assert served["from_cache"] is True
    dense, pruned = served["total_before"] * 4, served["total_after"] * 4  # float32 weights
    assert served["dense_phase"] > dense  # the measure sees the dense model (VmHWM, not a later reading)
    # Holding both would raise the peak by the whole pruned model (SmolLM2 at 25 %: about 400 MiB).
    grew = served["end"] - served["dense_phase"]
    assert grew < pruned / 2, (f"peak grew by {grew / MIB:.0f} MiB after the dense phase "
                               f"(pruned model {pruned / MIB:.0f} MiB, dense {dense / MIB:.0f} MiB)")
