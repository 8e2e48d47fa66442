"""Executors run cells in isolation: a process each (local), a container each (docker), a task each (ray).

An executor gets the pending cells and an event callback; it must leave, for every cell it ran, a
result file: the one the cell wrote, or a failed one written here when the cell could not (crash,
signal, out of memory, time limit). Ctrl-C stops the running cell and raises ``BenchInterrupted``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.bench.config import CellSpec
from harness.results import InvalidResult, read_result, write_result


class BenchInterrupted(Exception):
    """The user stopped the bench; finished cells are kept."""


@dataclass
class CellJob:
    spec: CellSpec
    spec_path: Path
    result_path: Path
    log_path: Path
    timeout_s: float | None


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


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def record_failure(job: CellJob, started: float, kind: str, message: str) -> None:
    """The result of a cell that died without writing one itself."""
    from harness.bench.cell import failed, now

    result = failed(job.spec, now(), time.time() - started, kind, message, log_tail(job.log_path))
    write_result(job.result_path, result)


def fresh_result(job: CellJob, since: float) -> str | None:
    """Status of the result the cell wrote during this run, if it wrote one."""
    try:
        if job.result_path.stat().st_mtime < since - 1:
            return None
        return read_result(job.result_path).status
    except (OSError, InvalidResult):
        return None


def describe_exit(returncode: int) -> tuple[str, str]:
    if returncode < 0:
        sig = signal.Signals(-returncode)
        hint = " (likely out of memory)" if sig == signal.SIGKILL else ""
        return "killed", f"the cell process was killed by {sig.name}{hint}"
    return "exit", f"the cell process exited with code {returncode} without writing a result"


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the bench process dies, so no orphan cell outlives a killed bench."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def cell_command(job: CellJob) -> list[str]:
    return [sys.executable, "-m", "harness.bench.cell", "--spec", str(job.spec_path), "--result", str(job.result_path)]


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


class LocalExecutor:
    """One process per cell, one cell at a time (timings are not disturbed by a neighbour)."""

    name = "local"

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        for job in jobs:
            on_event(Event("start", job))
            status, message = self.run_one(job)
            on_event(Event("done", job, status, message))

    def run_one(self, job: CellJob) -> tuple[str, str]:
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a") as log:
            log.write(f"=== cell {job.spec.id} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.flush()
            proc = subprocess.Popen(cell_command(job), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                proc.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                _stop(proc)
                record_failure(job, started, "timeout", f"the cell exceeded its time limit of {job.timeout_s:g} s")
                return "failed", "timeout"
            except KeyboardInterrupt:
                _stop(proc)
                raise BenchInterrupted from None
        status = fresh_result(job, started)
        if status is not None:
            return status, ""
        kind, message = describe_exit(proc.returncode)
        record_failure(job, started, kind, message)
        return "failed", message


def make_executor(name: str, options: dict) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "docker":
        from harness.bench.docker_executor import DockerExecutor

        return DockerExecutor(**options)
    if name == "ray":
        from harness.bench.ray_executor import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor '{name}'")
