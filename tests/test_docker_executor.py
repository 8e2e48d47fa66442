"""The docker executor, for real: one bench cell of the default model in a container of the CPU image
gives the same decisions and perplexity as the same cell run without a container; a cell that leaves no
result is recorded by what ended it (image missing, engine refusal, exit code, time limit)."""

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
    # The container ran as the invoking user: what it wrote is theirs, and nothing else was re-owned.
    assert (tmp_path / "docker" / "cells" / "2ssp-s0.25-seed0.json").stat().st_uid == os.getuid()


@pytest.mark.docker
def test_a_missing_image_is_one_clear_line(cpu_image, tmp_path):
    result = bench(tmp_path, "missing", "--executor", "docker", "--image", "prunebench:no-such-tag")
    assert result.returncode == 2
    assert "image 'prunebench:no-such-tag' not found: build it with `make image`" in result.stderr
    assert not (tmp_path / "missing" / "cells" / "2ssp-s0.25-seed0.json").exists()


# ---------------------------------------------------------------- how a cell without a result is recorded


def test_a_container_exit_is_classified_by_its_status():
    from harness.bench.executors.docker import describe_container_exit

    exited = describe_container_exit(3, oom=False)
    assert (exited.kind, exited.exit_code) == ("exit", 3) and "code 3" in exited.message
    signalled = describe_container_exit(137, oom=False)
    assert (signalled.kind, signalled.exit_code) == ("killed", 137) and "SIGKILL" in signalled.message
    oom = describe_container_exit(137, oom=True)
    assert (oom.kind, oom.exit_code) == ("killed", 137) and "out of memory" in oom.message


def test_a_container_gets_the_gpus_cuda_visible_devices_names():
    """Every GPU went to every container, whatever CUDA_VISIBLE_DEVICES said on the machine that ran the bench."""
    from harness.bench.executors.docker import gpu_requests

    (every,) = gpu_requests(None)
    assert every["Count"] == -1 and every["Capabilities"] == [["gpu"]]
    (two,) = gpu_requests("1, 3")
    assert two["DeviceIDs"] == ["1", "3"] and two["Count"] == 0
    assert gpu_requests("GPU-8e1b0c4f")[0]["DeviceIDs"] == ["GPU-8e1b0c4f"]
    assert gpu_requests("") == [] and gpu_requests("-1") == []


def _job(tmp_path, spec_text: str | None = None, timeout_s: float | None = None):
    from test_bench import tiny_config

    from harness.bench.executors import CellJob
    from harness.bench.expand import resolve

    spec = resolve(tiny_config(tmp_path, methods=["dense"], latency={**TINY["latency"], "enabled": False})).cells[0]
    cells = tmp_path / "cells"
    cells.mkdir(exist_ok=True)
    job = CellJob(spec, cells / "dense.spec.json", cells / "dense.json", cells / "dense.log", timeout_s)
    job.spec_path.write_text(spec.model_dump_json() if spec_text is None else spec_text)
    return job


@pytest.fixture
def scratch_image(docker_engine):
    """A tag of a one-file image made on the spot (no registry, no build): it exists until the test removes it."""
    import io
    import tarfile

    import docker

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("empty")
        tar.addfile(info, io.BytesIO(b""))
    client = docker.from_env()
    tag = f"prunebench-test:scratch-{os.getpid()}"
    client.api.import_image_from_data(data.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    yield client, tag
    if client.images.list(name=tag):  # unless the test removed it
        client.images.remove(tag, force=True)


@pytest.mark.docker
def test_an_image_gone_before_the_cell_is_recorded_as_image_missing(scratch_image, tmp_path, monkeypatch):
    from harness.bench.executors.docker import DockerExecutor

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    client, tag = scratch_image
    executor = DockerExecutor(image=tag, gpus=False, echo=False)
    client.images.remove(tag, force=True)
    job = _job(tmp_path)
    assert executor.run_one(job)[0] == "failed"
    error = read_result(job.result_path).error
    assert error.kind == "image-missing" and tag in error.message and error.exit_code is None
    assert "image-missing" in job.log_path.read_text()


@pytest.mark.docker
def test_an_engine_refusal_is_recorded_as_engine(scratch_image, tmp_path, monkeypatch):
    from harness.bench.executors.docker import DockerExecutor

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    _, tag = scratch_image
    executor = DockerExecutor(image=tag, gpus=False, echo=False, network="prunebench-no-such-network")
    job = _job(tmp_path)
    assert executor.run_one(job)[0] == "failed"
    error = read_result(job.result_path).error
    assert error.kind == "engine" and "prunebench-no-such-network" in error.message


@pytest.mark.docker
def test_a_container_that_exits_non_zero_is_recorded_with_its_exit_code(cpu_image, tmp_path, monkeypatch):
    from harness.bench.executors.docker import DockerExecutor

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    job = _job(tmp_path, spec_text="{ this is not a cell")
    assert DockerExecutor(image="prunebench:cpu", gpus=False, echo=False).run_one(job)[0] == "failed"
    error = read_result(job.result_path).error
    assert (error.kind, error.exit_code) == ("exit", 1) and "JSONDecodeError" in error.log_tail


@pytest.mark.docker
def test_a_container_over_its_time_limit_is_recorded_as_timeout(cpu_image, tmp_path, monkeypatch):
    from harness.bench.executors.docker import DockerExecutor

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    job = _job(tmp_path, timeout_s=2.0)
    assert DockerExecutor(image="prunebench:cpu", gpus=False, echo=False).run_one(job) == ("failed", "timeout")
    error = read_result(job.result_path).error
    assert error.kind == "timeout" and "2 s" in error.message and error.exit_code is None
    import docker

    assert not docker.from_env().containers.list(all=True, filters={"label": "prunebench.cell=dense"})  # removed


@pytest.mark.parametrize(("options", "message"), [
    ({"imagee": "prunebench:cpu"}, "docker executor option 'imagee': Extra inputs are not permitted"),
    ({"echo": "loud"}, "docker executor option 'echo'"),
])
def test_bad_options_are_one_line_before_the_engine_is_asked(options, message, monkeypatch):
    """Like the ray executor's: a mistyped key is one line naming the options there are, never a TypeError; it is
    refused before any Docker engine is reached (none is here: the socket points nowhere)."""
    from harness.bench.executors import make_executor
    from harness.errors import PrunebenchError

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(PrunebenchError, match=message) as err:
        make_executor("docker", options)
    assert "\n" not in str(err.value) and "options: image, gpus, network, echo, memory" in str(err.value)
