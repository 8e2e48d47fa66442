"""What every executor shares: the job and its events, how a cell is started, stopped and waited for,
and the failed result written for a cell that could not write its own.

Imports nothing heavy at the top (no torch, no pydantic models): Ray workers import this module,
through ``executors.ray``, only to start a cell process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from harness.errors import PrunebenchError

if TYPE_CHECKING:
    from harness.bench.config import CellSpec
    from harness.results import ErrorKind

log = logging.getLogger("prunebench.executors")

STOP_GRACE_S = 10.0  # SIGTERM, then this long before SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Settings passed on to a cell that runs elsewhere (container, node): how it reaches the hub, and the methods and
# metrics added by name (methods.registry, harness.metrics.registry: the cell must know the methods the driver
# planned with, and read the spec the driver wrote with its metrics).
HUB_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "PRUNEBENCH_METHODS",
           "PRUNEBENCH_METRICS")


Options = TypeVar("Options", bound=BaseModel)


def parse_options(model: type[Options], options: dict[str, Any], executor: str) -> Options:
    """An executor's ``executor_options`` as its typed options: a mistyped key or a bad value is one line that
    names it and the options there are, not a TypeError from a constructor."""
    try:
        return model(**options)
    except ValidationError as err:
        from methods.errors import invalid  # not at the top: the methods package loads torch, an executor must not

        where, message = invalid(err)
        known = ", ".join(model.model_fields)
        raise PrunebenchError(f"{executor} executor option '{where or 'executor_options'}': {message} "
                              f"(options: {known})") from None


class BenchInterrupted(Exception):
    """The user stopped the bench; finished cells are kept."""


@dataclass
class CellJob:
    spec: CellSpec
    spec_path: Path
    result_path: Path
    log_path: Path
    timeout_s: float | None
    env: dict[str, str] = field(default_factory=dict)  # added to the cell's environment (harness.bench.inputs)


@dataclass
class Event:
    kind: str  # "start" | "done"
    job: CellJob
    status: str | None = None  # "ok" | "failed" on "done"
    message: str = ""


OnEvent = Callable[[Event], None]


class Executor(Protocol):
    name: str

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None: ...


class OneAtATime:
    """Run jobs in order, one at a time (timings are not disturbed by a neighbour); ``run_one`` runs each."""

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        for job in jobs:
            on_event(Event("start", job))
            status, message = self.run_one(job)
            on_event(Event("done", job, status, message))

    def run_one(self, job: CellJob) -> tuple[str, str]:
        raise NotImplementedError


# ---------------------------------------------------------------- how a cell ended


@dataclass(frozen=True)
class Failure:
    """Why a cell left no result of its own: the error kind of the result schema, a message, and the exit
    status where the process or container ended by itself or by a signal (as a shell reports it: 128 + N
    for signal N)."""

    kind: ErrorKind
    message: str
    exit_code: int | None = None


def timeout_failure(timeout_s: float | None) -> Failure:
    limit = f"{timeout_s:g} s" if timeout_s is not None else "none set"
    return Failure("timeout", f"the cell exceeded its time limit of {limit}")


def describe_exit(returncode: int) -> Failure:
    """A cell process that ended without a result: killed by a signal (``returncode`` < 0), or exited."""
    if returncode < 0:
        sig = signal.Signals(-returncode)
        hint = " (likely out of memory)" if sig == signal.SIGKILL else ""
        return Failure("killed", f"the cell process was killed by {sig.name}{hint}", 128 - returncode)
    return Failure("exit", f"the cell process exited with code {returncode} without writing a result", returncode)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""  # no log yet (the cell never started): the failure's message says why


def record_failure(job: CellJob, started: float, failure: Failure, environment: dict[str, Any] | None = None) -> None:
    """Write the failed result of a cell that died without writing one itself; ``environment`` adds to the
    recorded environment (where the cell ran)."""
    from harness.bench.cell import failed, now
    from harness.results import write_result

    result = failed(job.spec, now(), time.time() - started, failure.kind, failure.message, log_tail(job.log_path),
                    exit_code=failure.exit_code)
    result.environment.update(environment or {})
    write_result(job.result_path, result)


def fresh_result(job: CellJob, since: float) -> str | None:
    """Status of the result the cell wrote during this run, if it wrote one."""
    from harness.results import InvalidResult, read_result

    try:
        if job.result_path.stat().st_mtime < since - 1:
            return None
        return read_result(job.result_path).status
    except (OSError, InvalidResult):
        return None  # no result, or an unreadable one: the caller records how the cell ended


# ---------------------------------------------------------------- the cell process


def cell_args(spec_path: Path, result_path: Path) -> list[str]:
    """The arguments of ``harness.bench.cell``'s main for one cell."""
    return ["--spec", str(spec_path), "--result", str(result_path)]


def cell_command(spec_path: Path, result_path: Path, python: str = sys.executable) -> list[str]:
    """The command line of one cell (``python`` is the interpreter: a container's own, or this one)."""
    return [python, "-m", "harness.bench.cell", *cell_args(spec_path, result_path)]


@cache
def libc_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (where logging is safe), or None where there is none."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError) as err:
        log.warning("cells will not die with the bench if it is killed: no prctl in libc (%s)", err)
        return None


def die_with_parent(prctl: Callable[..., int] | None) -> Callable[[], None]:
    """The child's preexec: its own session (a Ctrl-C aimed at the bench or at Ray leaves it alone; the
    executor stops it) and SIGKILL when its parent dies, so no orphan cell outlives a killed bench or Ray
    worker. Between fork and exec only async-signal-safe calls: a failure is written to the cell's log."""

    def preexec() -> None:
        os.setsid()
        if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            os.write(2, f"=== warning: PR_SET_PDEATHSIG failed (errno {ctypes.get_errno()}): this cell "
                        "would outlive a killed parent\n".encode())

    return preexec


def start_cell(command: list[str], out: IO[Any], env: dict[str, str], cwd: str | None = None) -> subprocess.Popen:
    """Start a cell process writing stdout and stderr into ``out``."""
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            preexec_fn=die_with_parent(libc_prctl()))


def stop(proc: subprocess.Popen) -> None:
    """Stop the cell and everything it started (its process group): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(STOP_GRACE_S)
            return
        except ProcessLookupError:
            return  # already gone
        except subprocess.TimeoutExpired:
            continue  # it ignored SIGTERM
    log.warning("cell process %d did not stop on SIGKILL within %g s", proc.pid, STOP_GRACE_S)


def wait_cell(proc: subprocess.Popen, timeout_s: float | None) -> bool:
    """Wait for the cell; True when it ran out of time (and was stopped). Anything raised while waiting
    (Ctrl-C, Ray's gentle cancel) stops the cell and is raised again. Waits in slices of a second at most:
    Ray's gentle cancel raises KeyboardInterrupt only between Python bytecodes, never inside one long wait."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                stop(proc)
                return True
            try:
                proc.wait(timeout=1.0 if left is None else min(1.0, left))
                return False
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        stop(proc)
        raise
