"""Where CUDA is not usable, a run says why: a warning when a model other than the embedded ones falls back to the
CPU, a line of the bench header and of each result, and a one-line refusal of ``--device cuda``.

Most of these run for real on this machine, which has no usable GPU; on a machine with one they are skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.devices import cuda_absence, cuda_unavailable_reason, driver_version

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is usable here: nothing falls back")

DRIVER_570 = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
              "(dvs-builder@U16-I3-B04-4-1)  Thu Jan 23 2025\nGCC version:  gcc version 12.3.0\n")


def test_the_cause_is_named_from_torchs_build_the_driver_and_the_visible_devices(tmp_path):
    (tmp_path / "version").write_text(DRIVER_570)
    assert driver_version(tmp_path / "version") == "570.86.15"
    assert driver_version(tmp_path / "absent") is None
    old = cuda_absence("2.13.0", "13.0", "570.86.15", None)
    assert "built for CUDA 13.0, which needs NVIDIA driver >= 580" in old and "driver 570.86.15" in old
    assert "needs NVIDIA driver" not in cuda_absence("2.13.0", "12.8", "570.86.15", None)  # new enough for 12.x
    assert cuda_absence("2.13.0+cpu", None, None, None) == "torch 2.13.0+cpu is a build without CUDA"
    assert "no NVIDIA driver is loaded" in cuda_absence("2.13.0", "13.0", None, None)
    assert "hides every GPU" in cuda_absence("2.13.0", "13.0", "580.65.06", "")


@NO_GPU
def test_a_model_of_its_own_run_on_the_cpu_by_auto_says_why_in_one_warning(smollm2_ref, caplog):
    from harness.models import load_model, resolve_model

    local = resolve_model(smollm2_ref.location)  # the same weights as a model directory: not an embedded model
    assert local.kind == "local"
    with caplog.at_level(logging.WARNING, logger="harness.models"):
        loaded = load_model(local, device="auto")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert loaded.device.type == "cpu" and len(warned) == 1
    assert warned[0] == f"model {local.name} runs on the CPU in float32, because {cuda_unavailable_reason()}"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.models"):
        load_model(smollm2_ref, device="auto")  # the embedded models are meant for a CPU
        load_model(local, device="cpu")  # chosen, not fallen back to
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@NO_GPU
def test_the_bench_header_and_each_result_record_why_auto_is_the_cpu(tmp_path):
    from harness.bench.cell import runtime
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve
    from harness.bench.runner import describe
    from harness.models import load_model, resolve_model

    bench = resolve(BenchConfig(methods=["dense"], profile="cpu-quick", out=tmp_path / "out"))
    line = f"device auto runs on the CPU, because {cuda_unavailable_reason()}"
    assert bench.cpu_fallback == cuda_unavailable_reason() and line in describe(bench)
    chosen = resolve(BenchConfig(methods=["dense"], device="cpu", profile="cpu-quick", out=tmp_path / "out"))
    assert chosen.cpu_fallback is None and not [x for x in describe(chosen) if "runs on the CPU" in x]
    loaded = load_model(resolve_model(None), device="auto")
    assert runtime(bench.cells[0], loaded) == {"dtype": "float32", "device": "cpu",
                                               "cpu_fallback": cuda_unavailable_reason()}
    assert "cpu_fallback" not in runtime(chosen.cells[0], loaded)


@NO_GPU
@pytest.mark.parametrize("args", [
    ["eval", "--device", "cuda"],
    ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--device", "cuda"],
    ["bench", "--methods", "dense", "--device", "cuda:1"],
], ids=["eval", "prune", "bench"])
def test_device_cuda_without_a_usable_gpu_is_refused_in_one_line(args, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, *(["--out", str(out)] if args[0] != "eval" else [])])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not usable here: " + str(cuda_unavailable_reason()) in lines[0], lines
    assert not Path(out).exists()
