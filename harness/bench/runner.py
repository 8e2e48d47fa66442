"""The bench driver: validate, skip what is done, run the rest in isolation. The leaderboard is not its business:
the command that asked for the bench writes it from the results (harness.report.leaderboard)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.bench.config import BenchConfig
from harness.bench.executors import BenchInterrupted, CellJob, Event, Executor, make_executor
from harness.bench.expand import ResolvedBench, hub_needs, resolve, validate
from harness.bench.inputs import HubInputs
from harness.bench.inputs import prepare as prepare_inputs
from harness.errors import PrunebenchError
from harness.files import write_text_atomic
from harness.metrics.registry import METRICS
from harness.outputs import RUN_LOCK
from harness.results import EXPORTS_DIR, InvalidResult, read_result
from methods import get_method

log = logging.getLogger(__name__)


@dataclass
class BenchOutcome:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)


def describe(bench: ResolvedBench) -> list[str]:
    """Every resolved value of the protocol, as printed before the run and kept in bench.json."""
    c = bench.cells[0]
    rows = list(dict.fromkeys(cell.variant for cell in bench.cells))
    preset = f", preset {bench.config.preset}" if bench.config.preset else ""
    lines = [
        f"model {bench.config.model}, profile {bench.profile}{preset}, executor {bench.config.executor}, "
        f"out {bench.out}",
        f"dtype {c.dtype}, device {c.device}, numerics {c.numerics}, tokenizer {c.tokenizer}",
        *([f"device auto runs on the CPU, because {bench.cpu_fallback}"] if bench.cpu_fallback else []),
        f"rows {', '.join(rows)}; sparsities {', '.join(f'{s:.4g}' for s in bench.sparsities)}"
        f"{f' (--num-prune {bench.config.num_prune})' if bench.config.num_prune is not None else ''}; "
        f"seeds {', '.join(sorted({str(cell.seed) for cell in bench.cells}))}; {len(bench.cells)} cells",
        *(metric.describe(getattr(c, name)) for name, metric in METRICS.items()),
        *([f"exports: {', '.join(c.export)} of every cell, into {bench.out / 'cells' / EXPORTS_DIR}"]
          if c.export else []),
    ]
    seen = set()
    for cell in bench.cells:
        if not get_method(cell.method).reference and cell.variant not in seen:
            seen.add(cell.variant)
            cal = cell.calibration
            lines.append(f"{cell.variant}: calibration {cal.source} {cal.samples} x {cal.seq_len} ({cal.construction}, "
                         f"draw {cal.draw}); options {json.dumps(cell.method_options)}")
    return lines + bench.notes


def outcome_lines(event: Event) -> list[str]:
    """What the console says of a finished cell: its status and why it failed, and a repaired cache entry (the
    cell's log has the details; these are what a user must not miss)."""
    try:
        result = read_result(event.job.result_path)
    except InvalidResult as err:
        return [f"cell {event.job.spec.id}: {event.status} ({event.message or err})"]
    why = result.error.message if result.error else event.message
    lines = [f"cell {event.job.spec.id}: {event.status}" + (f": {why.splitlines()[0]}" if why else "")]
    repair = result.pruning.cache_repair if result.pruning else None
    if repair:
        lines.append(f"cell {event.job.spec.id}: its cached pruned model was {repair}; it was pruned again")
    return lines


def plan_jobs(bench: ResolvedBench, force: bool, env: dict[str, str] | None = None,
              run_id: str | None = None) -> tuple[list[CellJob], list[str]]:
    """Jobs for the cells without a current, successful result; the ids of the cells skipped.

    ``force`` runs every cell and has each prune again rather than reuse the pruned-model cache. ``run_id``
    names this run in what its cells leave in the cache (``pruned_by``).
    """
    jobs, skipped = [], []
    cells_dir = bench.out / "cells"
    for spec in bench.cells:
        spec = spec.model_copy(update={"run": run_id, "reprune": force})
        result_path = cells_dir / f"{spec.id}.json"
        if result_path.exists() and not force:
            try:
                existing = read_result(result_path)
                exported = not spec.export or (existing.exports is not None and existing.exports.answered(spec.export))
                if existing.status == "ok" and existing.config_hash == spec.config_hash() and exported:
                    skipped.append(spec.id)
                    continue
            except InvalidResult as err:
                aside = result_path.with_name(f"{result_path.name}.invalid-{time.strftime('%Y%m%d-%H%M%S')}")
                result_path.rename(aside)
                log.warning("%s; moved aside to %s and running the cell again", err, aside.name)
        spec_path = cells_dir / f"{spec.id}.spec.json"
        write_text_atomic(spec_path, spec.model_dump_json(indent=2))
        jobs.append(CellJob(spec, spec_path, result_path, cells_dir / f"{spec.id}.log", bench.config.timeout_s,
                            dict(env or {})))
    return jobs, skipped


def run_bench(config: BenchConfig, force: bool = False, console: Console | None = None) -> BenchOutcome:
    console = console or Console(stderr=True)
    bench = resolve(config)
    validate(bench)
    executor = make_executor(config.executor, config.executor_options)  # a missing engine or image fails here
    inputs = prepare_inputs(config.model, *hub_needs(bench))  # the only hub access of a local bench
    for line in describe(bench):
        console.print(line, highlight=False, soft_wrap=True)
    if inputs.mode != "none":
        console.print(inputs.describe(), highlight=False, soft_wrap=True)
    bench.out.mkdir(parents=True, exist_ok=True)
    with exclusive(bench.out):
        outcome = _run(bench, config, executor, inputs, force, console)
    if outcome.failed:
        console.print(f"{len(outcome.failed)} cells failed: {', '.join(outcome.failed)} (logs beside their results)",
                      highlight=False)
    return outcome


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """The run folder, held by this bench until it ends: a second bench into the same folder (another terminal, a
    second `make bench`) is refused in one line instead of running the same cells beside it."""
    lock = FileLock(out / RUN_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PrunebenchError(f"another bench is running into {out} (it holds {out / RUN_LOCK}): wait for it to "
                              "end, or give this one another --out") from None
    try:
        yield
    finally:
        lock.release()


def _run(bench: ResolvedBench, config: BenchConfig, executor: Executor, inputs: HubInputs, force: bool,
         console: Console) -> BenchOutcome:
    run_id = f"{bench.out.resolve()} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
    write_text_atomic(bench.out / "bench.json", json.dumps(
        {"config": config.model_dump(mode="json"), "profile": bench.profile, "sparsities": bench.sparsities,
         "protocol": describe(bench), "run": run_id}, indent=2))
    jobs, skipped = plan_jobs(bench, force, inputs.cell_env(config.executor), run_id)
    outcome = BenchOutcome(bench.out, skipped=skipped)
    if skipped:
        console.print(f"{len(skipped)} cells already done (re-run with --force to redo): {', '.join(skipped)}",
                      highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal) as bars:
        task = bars.add_task("cells", total=len(jobs))

        def on_event(event: Event) -> None:
            if event.kind == "start":
                bars.update(task, description=f"cell {event.job.spec.id}")
                if not console.is_terminal:
                    console.print(f"cell {event.job.spec.id}: running", highlight=False)
                return
            bars.advance(task)
            (outcome.ran if event.status == "ok" else outcome.failed).append(event.job.spec.id)
            for line in outcome_lines(event):
                console.print(line, highlight=False, soft_wrap=True)

        try:
            executor.run(jobs, on_event)
        except BenchInterrupted:
            outcome.interrupted = True
            console.print("interrupted: finished cells are kept; run the same bench again to resume", highlight=False)
    return outcome
