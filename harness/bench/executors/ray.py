"""Run each cell as a Ray task: on an existing Ray cluster (``address``), or on a local Ray instance.

Each task reserves the cell's resources (CPUs, GPUs, host memory), runs the cell exactly as the local
executor does (``python -m harness.bench.cell`` in a subprocess on the worker, the spec shipped as
data) and returns the result JSON and the log text; the driver writes both atomically into the
results directory as cells finish, so no shared filesystem is needed. Tasks are never retried: a
killed task or a lost node is recorded as a failed cell, like a crash under the local executor.

The module imports nothing heavy at the top: Ray workers import it to run ``run_cell_task`` and
should not load torch for a function that only starts a subprocess.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.bench.executors.base import (
    HUB_ENV,
    BenchInterrupted,
    CellJob,
    Event,
    Failure,
    OnEvent,
    cell_command,
    describe_exit,
    parse_options,
    record_failure,
    start_cell,
    timeout_failure,
    wait_cell,
)
from harness.errors import PrunebenchError, first_line

if TYPE_CHECKING:
    from harness.bench.config import CellSpec

log = logging.getLogger("prunebench.ray")

GIB = 2**30
INSTALL_HINT = "install with pip install 'prunebench[ray]'"
# Host memory of a cell beyond its weights: Python, torch, transformers, lm-eval, datasets, the text.
BASE_MEMORY_BYTES = 2 * GIB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The local instance ships only result JSONs and logs through its object store: keep it small.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
CANCEL_GRACE_S = 10.0


class RayOptions(BaseModel):
    """``executor_options`` of the ray executor (a bench file's ``executor_options``, or CLI flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None  # None: start a local Ray instance
    cpus_per_cell: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_cell: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    memory_per_cell_gb: Annotated[float, Field(gt=0)] | None = None  # GiB; None: estimated from the model
    num_cpus: Annotated[int, Field(ge=1)] | None = None  # local instance only; None: the machine's
    num_gpus: Annotated[int, Field(ge=0)] | None = None  # local instance only; None: the machine's
    env: dict[str, str] = Field(default_factory=dict)  # extra environment of every cell
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (Ray's own working_dir, pip, env_vars)
    autoscaling: bool = False  # the cluster grows on demand: submit cells no current node can hold


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PrunebenchError(f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------- resources


@dataclass(frozen=True)
class CellResources:
    cpus: float
    gpus: float
    memory_bytes: int

    def ray_options(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus, "memory": self.memory_bytes}

    def threads(self) -> int:
        return max(1, int(self.cpus))

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU, {self.memory_bytes / GIB:.1f} GiB"

    def fits(self, node: dict[str, float]) -> bool:
        return (node.get("CPU", 0) >= self.cpus and node.get("GPU", 0) >= self.gpus
                and node.get("memory", 0) >= self.memory_bytes)


def estimate_memory_bytes(parameters: int, dtype: str, on_gpu: bool) -> int:
    """Host memory a cell needs: a fixed base plus a multiple of the dense weights' size.

    On a GPU the weights only pass through host memory while loading (1x); on a CPU the dense
    weights, the pruned model and the calibration activations all live there (3x). ``auto`` is the
    cell's own rule: bf16 on CUDA, float32 on the CPU.
    """
    per_parameter = DTYPE_BYTES.get(dtype) or (2 if on_gpu else 4)
    return int(BASE_MEMORY_BYTES + (1 if on_gpu else 3) * parameters * per_parameter)


def model_parameters(model: str, trust_remote_code: bool) -> int:
    """The dense parameter count from the model's config alone (no weights are loaded)."""
    from harness.models import checked_config, resolve_model
    from harness.pruning import skeleton_adapter

    ref = resolve_model(model)
    return skeleton_adapter(ref, checked_config(ref, trust_remote_code), trust_remote_code).total_parameters()


def wants_gpu(device: str, cluster_gpus: float) -> bool:
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def cell_resources(spec: CellSpec, options: RayOptions, cluster_gpus: float, parameters: int | None) -> CellResources:
    if options.gpus_per_cell == "auto":
        gpus = 1.0 if wants_gpu(spec.device, cluster_gpus) else 0.0
    else:
        gpus = float(options.gpus_per_cell)
    if options.memory_per_cell_gb is not None:
        memory = int(options.memory_per_cell_gb * GIB)
    else:
        memory = estimate_memory_bytes(parameters or 0, spec.dtype, on_gpu=gpus > 0)
    return CellResources(options.cpus_per_cell, gpus, memory)


# ---------------------------------------------------------------- on the worker


def _accept_gentle_cancel() -> None:
    """Ray's gentle cancel is ``_thread.interrupt_main()``, a no-op where SIGINT is ignored, as it is in
    the workers of a cluster started by ``ray start ... &`` in a batch script (SLURM): let it through."""
    if threading.current_thread() is threading.main_thread() and not callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _node() -> dict[str, str]:
    import ray

    return {"hostname": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id()}


def _announce(progress: Any, cell_id: str, node: dict[str, str]) -> None:
    """Tell the driver the cell left the queue; progress is best effort and never fails the cell."""
    try:
        progress.put_nowait((cell_id, node))
    except Exception as err:  # the progress queue is gone (driver exiting): the cell still runs
        log.warning("could not report the start of %s: %s", cell_id, err)


def run_cell_task(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of a Ray task: one cell in a subprocess; its result JSON and log come back as data.

    The cell process dies with its Ray worker (base.start_cell) and is stopped with the task: a gentle
    cancel raises KeyboardInterrupt in ``wait_cell``, which stops the cell before raising it on."""
    cell_id = payload["cell_id"]
    _accept_gentle_cancel()
    node = _node()
    _announce(payload["progress"], cell_id, node)
    with tempfile.TemporaryDirectory(prefix=f"prunebench-{cell_id}-") as tmp:
        spec, result, log_path = (Path(tmp) / f"{cell_id}{suffix}" for suffix in (".spec.json", ".json", ".log"))
        spec.write_text(payload["spec"])
        cwd = payload["cwd"] if os.path.isdir(payload["cwd"]) else tmp  # relative model paths, as on the driver
        started = time.time()
        with open(log_path, "w") as out:
            proc = start_cell(cell_command(spec, result), out, env={**os.environ, **payload["env"]}, cwd=cwd)
            timed_out = wait_cell(proc, payload["timeout_s"])
        return {
            "result": result.read_text() if result.exists() and not timed_out else None,
            "log": log_path.read_text(errors="replace"),
            "returncode": proc.returncode, "timed_out": timed_out, "seconds": time.time() - started, "node": node,
        }


# ---------------------------------------------------------------- on the driver


@dataclass
class _Pending:
    job: CellJob
    resources: CellResources
    submitted: float
    started: float | None = None
    node: dict[str, str] = field(default_factory=dict)


class _Progress:
    """Counts across the cluster, reported through the runner's events and one log line per change."""

    def __init__(self, total: int, on_event: OnEvent):
        self.total, self.on_event = total, on_event
        self.running: set[str] = set()
        self.done = self.failed = 0

    def started(self, item: _Pending, node: dict[str, str]) -> None:
        if item.started is not None:
            return
        item.started, item.node = time.time(), node or item.node
        self.running.add(item.job.spec.id)
        self.on_event(Event("start", item.job, message=f"on {node.get('hostname', '?')}" if node else ""))
        log.info("cell %s started%s; %s", item.job.spec.id, f" on {node['hostname']}" if node else "", self.summary())

    def finished(self, item: _Pending, status: str, message: str) -> None:
        self.started(item, item.node)  # a task that died before reporting its start still started
        self.running.discard(item.job.spec.id)
        self.done += 1
        self.failed += status != "ok"
        self.on_event(Event("done", item.job, status, message))
        log.info("ray: %s", self.summary())

    def summary(self) -> str:
        queued = self.total - self.done - len(self.running)
        return f"{self.done}/{self.total} done ({self.failed} failed), {len(self.running)} running, {queued} queued"


def describe_ray_error(err: Exception) -> Failure:
    """Why a task returned no answer."""
    from ray import exceptions as rex

    if isinstance(err, rex.OutOfMemoryError):
        return Failure("killed", "Ray's memory monitor killed the cell's worker: "
                                 "the node ran out of memory (raise memory_per_cell_gb)")
    if isinstance(err, rex.WorkerCrashedError):
        return Failure("killed", "the Ray worker running the cell died (killed, or out of memory)")
    if isinstance(err, (rex.NodeDiedError, rex.ObjectLostError, rex.LocalRayletDiedError)):
        return Failure("killed", "the Ray node running the cell was lost")
    if isinstance(err, rex.TaskCancelledError):
        return Failure("killed", "the Ray task was cancelled")
    if isinstance(err, rex.RayTaskError):  # the task body raised on the worker (e.g. prunebench missing there)
        cause = err.cause if isinstance(err.cause, BaseException) else err
        return Failure("exception", f"{type(cause).__name__} in the Ray task: {first_line(cause, named=False)}"[:500])
    return Failure("exception", first_line(err)[:500])


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody answers at (Ray itself retries such an address for minutes)."""
    if address in ("auto", "local") or "://" in address:
        return  # Ray resolves these itself, and fails quickly
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PrunebenchError(f"Ray address '{address}' is not HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise PrunebenchError(f"no Ray cluster answers at {address} ({err.strerror or err}); "
                              "start one with `ray start --head`, or leave out --ray-address for a local one") from None


@contextmanager
def ray_core_stderr() -> Iterator[list[str]]:
    """Ray's C++ core writes every failed connection attempt straight to fd 2; keep those lines out of
    the terminal while connecting and hand them over (the last one says why, e.g. a missing token)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines())


def connect_error(address: str | None, err: Exception, core_log: list[str]) -> str:
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    first = first_line(err, named=False)
    if any("InvalidAuthToken" in line or "Unauthenticated" in line for line in core_log):
        return (f"cannot connect to {where}: it refused this machine's Ray authentication token (none, or another); "
                "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token, "
                "or run on the head node with --ray-address auto")
    reasons = [line.split("] ", 1)[-1] for line in core_log if "] " in line]
    return f"cannot connect to {where}: {first}" + (f" ({reasons[-1][:300]})" if reasons else "")


class RayExecutor:
    """Every pending cell at once as a Ray task; Ray runs as many as the cluster's resources hold."""

    name = "ray"

    def __init__(self, **options: Any):
        self.options = parse_options(RayOptions, options, "ray")
        self.ray = import_ray()
        self.owns_connection = False
        self._connect()

    # -- connection

    def _connect(self) -> None:
        if self.ray.is_initialized():  # a caller's own Ray session: use it, leave it running
            return
        opts = self.options
        common = {"log_to_driver": False, "runtime_env": opts.runtime_env}
        core_log: list[str] = []
        try:
            if opts.address:
                if opts.num_cpus is not None or opts.num_gpus is not None:
                    raise PrunebenchError("ray executor options num_cpus/num_gpus size a local instance; "
                                          "a cluster's size is set by `ray start`")
                check_reachable(opts.address)
                with ray_core_stderr() as core_log:
                    self.ray.init(address=opts.address, logging_level=logging.WARNING, **common)
            else:  # sized to the machine unless told otherwise; quiet, no dashboard
                self.ray.init(address="local", num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=False,
                              object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.ERROR, **common)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
            raise PrunebenchError(connect_error(opts.address, err, core_log)) from None
        self.owns_connection = True
        res = self.ray.cluster_resources()
        log.info("ray: %s with %d node(s), %g CPUs, %g GPUs, %.1f GiB memory",
                 f"cluster at {opts.address}" if opts.address else "local instance", len(self._alive_nodes()),
                 res.get("CPU", 0), res.get("GPU", 0), res.get("memory", 0) / GIB)

    def close(self) -> None:
        """Disconnect; a local instance stops with it (its workers, and so their cells, die)."""
        if self.owns_connection:
            self.ray.shutdown()
            self.owns_connection = False

    def _alive_nodes(self) -> list[dict[str, float]]:
        return [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]

    # -- the run

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        try:
            if not self.ray.is_initialized():  # a second run on the same executor
                self._connect()
            if jobs:
                self._run(jobs, on_event)
        finally:
            self.close()

    def _resources(self, jobs: list[CellJob]) -> dict[str, CellResources]:
        for job in jobs:
            if job.spec.device.startswith("cuda:") and job.spec.device != "cuda:0":
                raise PrunebenchError(f"device {job.spec.device}: under Ray each cell sees only the GPU Ray gave it "
                                      "(as cuda:0); use --device cuda or auto")
        cluster_gpus = self.ray.cluster_resources().get("GPU", 0)
        params: dict[tuple[str, bool], int] = {}
        if self.options.memory_per_cell_gb is None:
            for job in jobs:
                key = (job.spec.model, job.spec.trust_remote_code)
                if key not in params:
                    params[key] = model_parameters(*key)
        return {job.spec.id: cell_resources(job.spec, self.options, cluster_gpus,
                                            params.get((job.spec.model, job.spec.trust_remote_code)))
                for job in jobs}

    def _payload(self, job: CellJob, resources: CellResources, progress: Any) -> dict[str, Any]:
        env = {k: os.environ[k] for k in HUB_ENV if k in os.environ}  # secrets (HF_TOKEN) stay with each node
        # The cell's torch threads are the CPUs it reserved, whatever the node's size: cells on a node do
        # not oversubscribe it, and the same cell computes the same way on any node.
        env.update(OMP_NUM_THREADS=str(resources.threads()), MKL_NUM_THREADS=str(resources.threads()),
                   PYTHONUNBUFFERED="1")
        if resources.gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a cell stays off GPUs it did not reserve
        env.update(self.options.env)
        return {"cell_id": job.spec.id, "spec": job.spec_path.read_text(), "timeout_s": job.timeout_s,
                "env": env, "cwd": os.getcwd(), "progress": progress}

    def _run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        from ray.util.queue import Queue

        resources = self._resources(jobs)
        progress = _Progress(len(jobs), on_event)
        nodes = self._alive_nodes()
        first = next(iter(resources.values()))
        log.info("ray: each cell asks for %s (%d cells)", first.describe(), len(jobs))
        starts = Queue(actor_options={"num_cpus": 0})  # tasks report here when they leave Ray's queue
        task = self.ray.remote(max_retries=0)(run_cell_task)  # a killed task is reported, never silently re-run
        pending: dict[Any, _Pending] = {}
        by_id: dict[str, _Pending] = {}
        try:
            for job in jobs:
                item = by_id[job.spec.id] = _Pending(job, resources[job.spec.id], time.time())
                if not self.options.autoscaling and not any(item.resources.fits(n) for n in nodes):
                    self._unschedulable(item, progress, nodes)
                    continue
                ref = task.options(**item.resources.ray_options(), name=f"prunebench:{job.spec.id}").remote(
                    self._payload(job, item.resources, starts))
                pending[ref] = item
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
                self._drain_starts(starts, by_id, progress)
                for ref in ready:
                    self._finish(ref, pending.pop(ref), progress)
        except KeyboardInterrupt:
            self._cancel(list(pending))
            raise BenchInterrupted from None
        finally:
            starts.shutdown(force=True)  # the queue's actor would outlive the run in a caller's own session

    def _drain_starts(self, starts: Any, by_id: dict[str, _Pending], progress: _Progress) -> None:
        try:
            reports = starts.get_nowait_batch(starts.qsize())
        except Exception as err:  # progress only; the results still come through the task refs
            log.debug("ray: no start reports (%s)", err)
            return
        for cell_id, node in reports:
            if cell_id in by_id:
                progress.started(by_id[cell_id], node)

    def _finish(self, ref: Any, item: _Pending, progress: _Progress) -> None:
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            failure = describe_ray_error(err)
            self._append_log(item, "", f"=== the Ray task died: {failure.message}\n")
            self._record_failure(item, item.started or item.submitted, failure)
            progress.finished(item, "failed", failure.message)
            return
        item.node = answer["node"]
        started = time.time() - answer["seconds"]
        self._append_log(item, answer["log"])
        status, message = self._write_answer(item, answer, started)
        progress.finished(item, status, message)

    def _write_answer(self, item: _Pending, answer: dict[str, Any], started: float) -> tuple[str, str]:
        """The cell's own result when it wrote one, else a failed one saying how the cell ended."""
        from harness.results import CellResult, write_result

        job, where = item.job, f"on {item.node.get('hostname', '?')}"
        if answer["timed_out"]:
            self._record_failure(item, started, timeout_failure(job.timeout_s))
            return "failed", "timeout"
        if answer["result"] is None:
            failure = describe_exit(answer["returncode"])
            self._record_failure(item, started, failure)
            return "failed", f"{failure.message} {where}"
        try:
            result = CellResult.model_validate_json(answer["result"])
        except ValidationError as err:
            message = f"the cell wrote a result that does not match the schema: {first_line(err, named=False)}"
            self._record_failure(item, started, Failure("exception", message))
            return "failed", message
        result.environment["ray"] = self._provenance(item)
        write_result(job.result_path, result)
        if result.status == "ok" or result.error is None:
            return result.status, where
        return result.status, f"{result.error.kind} {where}: {result.error.message[:200]}"

    def _provenance(self, item: _Pending) -> dict[str, Any]:
        r = item.resources
        return {"version": self.ray.__version__, "address": self.options.address or "local", **item.node,
                "resources": {"cpus": r.cpus, "gpus": r.gpus, "memory_bytes": r.memory_bytes}}

    def _record_failure(self, item: _Pending, started: float, failure: Failure) -> None:
        """The failed result, with where the cell ran (the schema leaves the environment open)."""
        record_failure(item.job, started, failure, environment={"ray": self._provenance(item)})

    def _append_log(self, item: _Pending, text: str, note: str = "") -> None:
        """The cell's log beside its result, after those of earlier runs (as the local executor keeps them)."""
        from harness.files import write_text_atomic

        path = item.job.log_path
        try:
            earlier = path.read_text(errors="replace")
        except OSError:
            earlier = ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.started or item.submitted))
        host = item.node.get("hostname")
        header = f"=== cell {item.job.spec.id} started {when} as a Ray task{f' on {host}' if host else ''}\n"
        write_text_atomic(path, earlier + header + text + note)

    def _unschedulable(self, item: _Pending, progress: _Progress, nodes: list[dict[str, float]]) -> None:
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("memory", 0)), default={})
        message = (f"no node of the cluster can hold the cell ({item.resources.describe()}; the largest has "
                   f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU, "
                   f"{largest.get('memory', 0) / GIB:.1f} GiB): "
                   "set cpus_per_cell, gpus_per_cell or memory_per_cell_gb, or autoscaling: true")
        self._append_log(item, "", f"=== not submitted: {message}\n")
        self._record_failure(item, time.time(), Failure("invalid", message))
        progress.finished(item, "failed", message)

    def _cancel(self, refs: list[Any]) -> None:
        """Ctrl-C: stop every outstanding task, gently first (the task stops its cell), then by force."""
        for force in (False, True):
            for ref in refs:
                try:
                    self.ray.cancel(ref, force=force)
                except Exception as err:  # already finished, or its worker is gone
                    log.debug("ray: cancel: %s", err)
            if not force:
                _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
                if not refs:
                    return
