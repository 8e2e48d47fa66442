"""Run each cell in a fresh container of a pinned prunebench image, through the Docker engine's API.

The container sees the bench's results directory (read-write, at the same absolute path, so the
spec and result paths need no translation) and the model/data cache (read-write at /cache); its
root filesystem is read-only, /tmp is a tmpfs. GPUs are passed through when the host has them. The
image's id (and repo digest when pushed) goes into each result's environment, and the container's
log streams to the terminal and into the log file beside the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from harness.bench.executors import BenchInterrupted, CellJob, Event, OnEvent, fresh_result, record_failure
from harness.errors import PrunebenchError
from harness.paths import cache_dir

CONTAINER_CACHE = "/cache"
IMAGE_UID = 1000  # the image's non-root user (docker/Dockerfile.*)


def has_gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def default_image() -> str:
    return "prunebench:cuda" if has_gpus() else "prunebench:cpu"


class DockerExecutor:
    name = "docker"

    def __init__(self, image: str | None = None, gpus: bool | None = None, network: str | None = None,
                 echo: bool = True, memory: str | None = None):
        import docker

        try:
            self.client = docker.from_env(timeout=600)
            self.client.ping()
        except Exception as err:  # the SDK raises DockerException subclasses, or OSError from the socket
            raise PrunebenchError(
                "no Docker engine answers (start one, e.g. `sudo docker/ensure-engine.sh`, or use --executor local): "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
        self.image_name = image or default_image()
        try:
            self.image = self.client.images.get(self.image_name)
        except docker.errors.ImageNotFound:
            raise PrunebenchError(f"image '{self.image_name}' not found: build it with `make image` "
                                  f"(docker/build-image.sh cpu|cuda)") from None
        self.gpus = has_gpus() if gpus is None else gpus
        self.network = network
        self.echo = echo
        self.memory = memory

    def image_digest(self) -> str:
        digests = self.image.attrs.get("RepoDigests") or []
        return digests[0] if digests else self.image.id

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        for job in jobs:
            on_event(Event("start", job))
            status, message = self.run_one(job)
            on_event(Event("done", job, status, message))

    def _prepare_mounts(self, job: CellJob) -> dict[str, dict[str, str]]:
        out = job.result_path.parent.resolve()
        cache = cache_dir().resolve()
        if os.getuid() == 0:  # the container runs as uid 1000: let it write where results and caches go
            for path in (out, cache):
                for root, dirs, files in os.walk(path):
                    for name in [*dirs, *files]:
                        os.lchown(os.path.join(root, name), IMAGE_UID, IMAGE_UID)
                os.chown(path, IMAGE_UID, IMAGE_UID)
        return {str(out): {"bind": str(out), "mode": "rw"}, str(cache): {"bind": CONTAINER_CACHE, "mode": "rw"}}

    def _container_args(self, job: CellJob) -> dict[str, Any]:
        import docker

        env = {
            "PRUNEBENCH_CACHE": CONTAINER_CACHE,
            "HF_HOME": f"{CONTAINER_CACHE}/huggingface",
            "PRUNEBENCH_IMAGE": self.image_name,
            "PRUNEBENCH_IMAGE_DIGEST": self.image_digest(),
            "PYTHONUNBUFFERED": "1",
        }
        # PRUNEBENCH_METHODS: methods added by name (methods.registry); their modules must be in the image.
        for passthrough in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "PRUNEBENCH_METHODS"):
            if passthrough in os.environ:
                env[passthrough] = os.environ[passthrough]
        args: dict[str, Any] = {
            "image": self.image.id,
            "entrypoint": ["python", "-m", "harness.bench.cell"],
            "command": ["--spec", str(job.spec_path.resolve()), "--result", str(job.result_path.resolve())],
            "environment": env,
            "volumes": self._prepare_mounts(job),
            "user": f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else f"{IMAGE_UID}:{IMAGE_UID}",
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
            args["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return args

    def run_one(self, job: CellJob) -> tuple[str, str]:
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        container = self.client.containers.run(**self._container_args(job))
        streamer = threading.Thread(target=self._stream_logs, args=(container, job), daemon=True)
        streamer.start()
        try:
            state = container.wait(timeout=job.timeout_s) if job.timeout_s else container.wait()
        except KeyboardInterrupt:
            self._remove(container)
            raise BenchInterrupted from None
        except Exception:  # requests' ReadTimeout: the cell outlived its limit
            self._remove(container)
            record_failure(job, started, "timeout", f"the cell exceeded its time limit of {job.timeout_s:g} s")
            return "failed", "timeout"
        streamer.join(timeout=10)
        container.reload()
        oom = container.attrs.get("State", {}).get("OOMKilled", False)
        code = state.get("StatusCode", -1)
        self._remove(container)
        status = fresh_result(job, started)
        if status is not None:
            return status, ""
        if oom:
            record_failure(job, started, "killed", "the container was killed for running out of memory")
        else:
            record_failure(job, started, "exit", f"the container exited with code {code} without writing a result")
        return "failed", "no result"

    def _stream_logs(self, container: Any, job: CellJob) -> None:
        with open(job.log_path, "ab") as log:
            log.write(f"=== cell {job.spec.id} in container {container.short_id} of {self.image_name}\n".encode())
            for chunk in container.logs(stream=True, follow=True):
                log.write(chunk)
                log.flush()
                if self.echo:  # the container's own output, streamed to the terminal as it comes
                    for line in chunk.decode(errors="replace").splitlines():
                        sys.stderr.write(f"[{job.spec.id}] {line}\n")
                    sys.stderr.flush()

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except Exception:  # already gone
            pass

