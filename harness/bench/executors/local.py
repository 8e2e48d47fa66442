"""One process per cell on this machine, one cell at a time."""

from __future__ import annotations

import os
import time

from harness.bench.executors.base import (
    BenchInterrupted,
    CellJob,
    OneAtATime,
    cell_command,
    describe_exit,
    fresh_result,
    record_failure,
    start_cell,
    timeout_failure,
    wait_cell,
)


class LocalExecutor(OneAtATime):
    name = "local"

    def run_one(self, job: CellJob) -> tuple[str, str]:
        started = time.time()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a") as log:
            log.write(f"=== cell {job.spec.id} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.flush()
            proc = start_cell(cell_command(job.spec_path, job.result_path), log,
                              env={**os.environ, **job.env, "PYTHONUNBUFFERED": "1"})
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
