"""One process per cell on this machine, one cell at a time.

On a machine without an NVIDIA driver each cell is forked from a server that has already imported what a cell
needs (``executors.forkserver``: ~5 s less per cell); elsewhere, or if the server fails, a fresh process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import IO, Any

from pydantic import BaseModel, ConfigDict

from harness.bench.executors.base import (
    BenchInterrupted,
    CellJob,
    OneAtATime,
    OnEvent,
    cell_args,
    cell_command,
    describe_exit,
    fresh_result,
    parse_options,
    record_failure,
    start_cell,
    timeout_failure,
    wait_cell,
)
from harness.bench.executors.forkserver import ForkServer, ServerGone, forking_allowed

log = logging.getLogger("prunebench.executors")


class LocalOptions(BaseModel):
    """``executor_options`` of the local executor (a bench file's ``executor_options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fork: bool = True  # fork cells from a server that has imported what they need, where no NVIDIA driver is loaded


class LocalExecutor(OneAtATime):
    name = "local"

    def __init__(self, **options: Any) -> None:
        opts = parse_options(LocalOptions, options, self.name)
        self._fork = opts.fork and forking_allowed()
        self._server: ForkServer | None = None

    def run(self, jobs: list[CellJob], on_event: OnEvent) -> None:
        try:
            super().run(jobs, on_event)
        finally:
            self._stop_server()

    def run_one(self, job: CellJob) -> tuple[str, str]:
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a") as cell_log:
            cell_log.write(f"=== cell {job.spec.id} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            cell_log.flush()
            proc = self._start(job, cell_log, {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"})
            try:
                timed_out = wait_cell(proc, job.timeout_s)
            except KeyboardInterrupt:  # wait_cell stopped the cell
                raise BenchInterrupted from None
        if timed_out:
            record_failure(job, started, timeout_failure(job.timeout_s))
            return "failed", "timeout"
        status = fresh_result(job, started)
        if status is not None:
            return status, ""
        failure = describe_exit(proc.returncode)
        record_failure(job, started, failure)
        return "failed", failure.message

    def _start(self, job: CellJob, cell_log: IO[Any], env: dict[str, str]) -> Any:
        """The cell's process: forked from the server for ``env`` (started, or replaced for another environment),
        or, where forking is not allowed or the server failed, a fresh one."""
        if self._fork:
            try:
                if self._server is not None and self._server.env != env:
                    self._stop_server()
                self._server = self._server or ForkServer(env)
                return self._server.spawn(cell_args(job.spec_path, job.result_path), job.log_path)
            except (ServerGone, subprocess.TimeoutExpired, OSError) as err:
                log.warning("%s: cells start as fresh processes from here on", err)
                self._fork = False
                self._stop_server()
        return start_cell(cell_command(job.spec_path, job.result_path), cell_log, env=env)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
