"""Run each cell in a fresh container of a pinned prunebench image, through the Docker engine's API.

The container sees the bench's results directory (read-write, at the same absolute path, so the
spec and result paths need no translation) and the model/data cache (read-write at /cache); its
root filesystem is read-only, /tmp is a tmpfs. It runs as the invoking user, so what it writes there
belongs to whoever ran the bench and nothing on the host is re-owned. GPUs are passed through when the
host has them. The image's id (and repo digest when pushed) goes into each result's environment, and
the container's log streams to the terminal and into the log file beside the result.

A cell that leaves no result is recorded by what ended it: ``image-missing`` (the image went away),
``engine`` (the engine refused or lost the container), ``timeout``, ``killed`` (out of memory or a
signal, with the exit status) or ``exit`` (with the exit code).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict

import docker
from harness.bench.executors.base import (
    HUB_ENV,
    BenchInterrupted,
    CellJob,
    Failure,
    OneAtATime,
    cell_command,
    fresh_result,
    parse_options,
    record_failure,
    timeout_failure,
)
from harness.errors import PrunebenchError, first_line
from harness.paths import cache_dir

log = logging.getLogger("prunebench.docker")

CONTAINER_CACHE = "/cache"
CONTAINER_PYTHON = "python"  # the image's venv is first on its PATH (docker/Dockerfile.*)
# A container on this machine may also use this machine's hub token.
FORWARDED_ENV = (*HUB_ENV, "HF_TOKEN")


def has_gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def gpu_requests(visible: str | None) -> list[Any]:
    """The GPUs a container is given: those ``CUDA_VISIBLE_DEVICES`` names on this machine (indices or UUIDs, as
    the NVIDIA runtime takes them), none when it hides them all, every GPU when it is not set. Inside, the GPUs
    given are numbered from 0, so the variable itself is not passed on."""
    if visible is None:
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if not ids or ids[0] == "-1":  # CUDA stops at the first invalid entry: "-1" hides every GPU
        return []
    return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def default_image() -> str:
    return "prunebench:cuda" if has_gpus() else "prunebench:cpu"


def describe_container_exit(code: int, oom: bool) -> Failure:
    """A container that ended without a result: killed (out of memory, or by signal ``code`` - 128), or exited."""
    if oom:
        return Failure("killed", "the container was killed for running out of memory", code)
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return Failure("killed", f"the container's process was killed by {name} (exit status {code})", code)
    return Failure("exit", f"the container exited with code {code} without writing a result", code)


class DockerOptions(BaseModel):
    """``executor_options`` of the docker executor (a bench file's ``executor_options``, or ``--image``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None  # None: prunebench:cuda where the engine sees GPUs, else prunebench:cpu
    gpus: bool | None = None  # pass the GPUs through; None: where the engine has them
    network: str | None = None  # a Docker network for the container (None: the engine's default)
    echo: bool = True  # copy the container's output to the terminal as it runs
    memory: str | None = None  # the container's memory limit, as Docker reads it ("16g")


class DockerExecutor(OneAtATime):
    name = "docker"

    def __init__(self, **options: Any):
        opts = parse_options(DockerOptions, options, self.name)  # a mistyped key: one line, before the engine
        try:
            self.client = docker.from_env(timeout=600)
            self.client.ping()
        except (docker.errors.DockerException, OSError) as err:  # no socket, refused, or an API error
            raise PrunebenchError(
                "no Docker engine answers (start one, e.g. `sudo docker/ensure-engine.sh`, or use --executor local): "
                f"{first_line(err, named=False)}"
            ) from None
        self.image_name = opts.image or default_image()
        try:
            self.image = self.client.images.get(self.image_name)
        except docker.errors.ImageNotFound:
            raise PrunebenchError(f"image '{self.image_name}' not found: build it with `make image` "
                                  f"(docker/build-image.sh cpu|cuda)") from None
        self.gpus = has_gpus() if opts.gpus is None else opts.gpus
        self.network = opts.network
        self.echo = opts.echo
        self.memory = opts.memory

    def image_digest(self) -> str:
        digests = self.image.attrs.get("RepoDigests") or []
        return digests[0] if digests else self.image.id

    def _mounts(self, job: CellJob) -> dict[str, dict[str, str]]:
        out = job.result_path.parent.resolve()
        cache = cache_dir().resolve()
        cache.mkdir(parents=True, exist_ok=True)  # as the invoking user, before the engine creates it as root
        return {str(out): {"bind": str(out), "mode": "rw"}, str(cache): {"bind": CONTAINER_CACHE, "mode": "rw"}}

    def _container_args(self, job: CellJob) -> dict[str, Any]:
        env = {
            "PRUNEBENCH_CACHE": CONTAINER_CACHE,
            "HF_HOME": f"{CONTAINER_CACHE}/huggingface",
            "PRUNEBENCH_IMAGE": self.image_name,
            "PRUNEBENCH_IMAGE_DIGEST": self.image_digest(),
            "PYTHONUNBUFFERED": "1",
            **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
        }
        python, *cell = cell_command(job.spec_path.resolve(), job.result_path.resolve(), python=CONTAINER_PYTHON)
        args: dict[str, Any] = {
            "image": self.image.id,
            "entrypoint": [python],
            "command": cell,
            "environment": env,
            "volumes": self._mounts(job),
            "user": f"{os.getuid()}:{os.getgid()}",
            "read_only": True,
            "tmpfs": {"/tmp": "rw,exec,size=8g", "/home/prunebench": "rw,size=1g"},
            "detach": True,
            "labels": {"prunebench.cell": job.spec.id},
            "shm_size": "2g",
        }
        if self.network:
            args["network_mode"] = self.network
        if self.memory:
            args["mem_limit"] = self.memory
        if self.gpus:
            args["device_requests"] = gpu_requests(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return args

    def run_one(self, job: CellJob) -> tuple[str, str]:
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        container, failure = self._start(job)
        outcome = self._wait(container, job, started) if failure is None else failure
        if isinstance(outcome, str):
            return outcome, ""
        failure = outcome
        with open(job.log_path, "a") as note:
            note.write(f"=== cell {job.spec.id}: {failure.kind}: {failure.message}\n")
        record_failure(job, started, failure)
        return "failed", "timeout" if failure.kind == "timeout" else failure.message

    def _start(self, job: CellJob) -> tuple[Any, Failure | None]:
        """Create and start the container (never pulling: the image is the one checked at start-up)."""
        container = None
        try:
            container = self.client.containers.create(**self._container_args(job))
            container.start()
            return container, None
        except docker.errors.ImageNotFound as err:
            failure = Failure("image-missing", f"image '{self.image_name}' ({self.image.short_id}) is no longer "
                                               f"there: build it with `make image` ({first_line(err, named=False)})")
        except (docker.errors.DockerException, requests.RequestException) as err:
            failure = Failure("engine", "the Docker engine could not start the container: "
                                        f"{first_line(err, named=False)}")
        if container is not None:
            self._remove(container)
        return None, failure

    def _wait(self, container: Any, job: CellJob, started: float) -> str | Failure:
        """Wait for the container and remove it: the status of the result the cell wrote, or why it wrote none."""
        streamer = threading.Thread(target=self._stream_logs, args=(container, job), daemon=True)
        streamer.start()
        deadline = None if job.timeout_s is None else time.monotonic() + job.timeout_s
        try:
            state = container.wait(timeout=job.timeout_s)  # None: as long as it runs
            streamer.join(timeout=10)
            container.reload()
            oom = container.attrs.get("State", {}).get("OOMKilled", False)
        except KeyboardInterrupt:
            self._remove(container)
            raise BenchInterrupted from None
        except (docker.errors.DockerException, requests.RequestException) as err:
            self._remove(container)
            # The engine's read timeout is how a wait with a limit ends: a timeout only once the limit passed.
            if deadline is not None and time.monotonic() >= deadline:
                return timeout_failure(job.timeout_s)
            return Failure("engine", f"lost the container while waiting for it: {first_line(err, named=False)}")
        self._remove(container)
        status = fresh_result(job, started)
        if status is not None:
            return status
        code = state.get("StatusCode", -1)
        engine_error = (state.get("Error") or {}).get("Message")
        if engine_error or code < 0:
            return Failure("engine", f"the Docker engine reports the container's end as an error: "
                                     f"{engine_error or f'status {code}'}")
        return describe_container_exit(code, oom)

    def _stream_logs(self, container: Any, job: CellJob) -> None:
        with open(job.log_path, "ab") as out:
            out.write(f"=== cell {job.spec.id} in container {container.short_id} of {self.image_name}\n".encode())
            try:
                for chunk in container.logs(stream=True, follow=True):
                    out.write(chunk)
                    out.flush()
                    if self.echo:  # the container's own output, streamed to the terminal as it comes
                        for line in chunk.decode(errors="replace").splitlines():
                            sys.stderr.write(f"[{job.spec.id}] {line}\n")
                        sys.stderr.flush()
            except (docker.errors.DockerException, requests.RequestException) as err:
                log.warning("cell %s: the container's log stream broke off: %s", job.spec.id,
                            first_line(err, named=False))
                out.write(f"=== the log stream broke off: {first_line(err, named=False)}\n".encode())

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            log.debug("container %s was already removed", container.short_id)
        except (docker.errors.DockerException, requests.RequestException) as err:
            log.warning("could not remove container %s (remove it with `docker rm -f %s`): %s",
                        container.short_id, container.short_id, first_line(err, named=False))
