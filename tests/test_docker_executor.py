"""The docker executor, for real: one bench cell of the default model in a container of the CPU image
gives the same decisions and perplexity as the same cell run without a container."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from test_bench import TINY

from harness.results import read_result

CELL = {**TINY, "methods": ["2ssp"], "sparsities": [0.25], "latency": {**TINY["latency"], "enabled": False}}


def bench(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(CELL))))
    return subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--config", str(path), "--out",
                           str(tmp_path / name), *extra], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.docker
@pytest.mark.real_model
def test_a_cell_in_a_container_equals_the_same_cell_without_one(cpu_image, tmp_path):
    docker = bench(tmp_path, "docker", "--executor", "docker", "--image", "prunebench:cpu")
    assert docker.returncode == 0, docker.stderr[-3000:]
    assert "[2ssp-s0.25-seed0]" in docker.stderr  # the container's log streamed to the terminal
    local = bench(tmp_path, "local")
    assert local.returncode == 0, local.stderr[-3000:]
    a = read_result(tmp_path / "docker" / "cells" / "2ssp-s0.25-seed0.json")
    b = read_result(tmp_path / "local" / "cells" / "2ssp-s0.25-seed0.json")
    assert a.environment["container"]["image"] == "prunebench:cpu"
    assert a.environment["container"]["digest"] == cpu_image
    assert b.environment["container"] is None
    assert a.pruning.decisions == b.pruning.decisions
    assert a.perplexity["enwiki-sample"].value == b.perplexity["enwiki-sample"].value
    assert a.parameters == b.parameters
    assert "in container" in (tmp_path / "docker" / "cells" / "2ssp-s0.25-seed0.log").read_text()


@pytest.mark.docker
def test_a_missing_image_is_one_clear_line(cpu_image, tmp_path):
    result = bench(tmp_path, "missing", "--executor", "docker", "--image", "prunebench:no-such-tag")
    assert result.returncode == 2
    assert "image 'prunebench:no-such-tag' not found: build it with `make image`" in result.stderr
    assert not (tmp_path / "missing" / "cells" / "2ssp-s0.25-seed0.json").exists()
