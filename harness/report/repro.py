"""Re-run recorded cells with their recorded configuration and compare, metric by metric.

Decisions and parameter counts must be identical; each metric's values must agree within the metric's
tolerance (``Metric.tolerance``; perplexity's is relative, downstream accuracy's absolute), which the user
may replace and a method may widen; timings are reported, never judged (they belong to a machine, not to a
method). Pruning is always redone, never taken from the cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.bench.config import CellSpec
from harness.bench.executors import CellJob, Event, make_executor
from harness.errors import PrunebenchError
from harness.files import write_text_atomic
from harness.metrics.base import Check
from harness.metrics.registry import METRICS
from harness.results import CellResult, InvalidResult, read_result
from methods import get_method


def tolerances(given: list[str]) -> dict[str, float]:
    """Each judged metric's tolerance: its own, or the user's ``NAME=VALUE`` (checked before anything runs)."""
    out = {name: m.tolerance for name, m in METRICS.items() if m.tolerance is not None}
    for item in given:
        name, sep, value = item.partition("=")
        if name not in out:
            judged = ", ".join(f"{n} ({METRICS[n].tolerance_kind}, default {t:g})" for n, t in out.items())
            raise PrunebenchError(f"--tolerance {item!r}: give METRIC=VALUE for one of the metrics repro judges: "
                                  f"{judged}")
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = float("nan")  # refused below, as a negative or missing value is
        if not (sep and out[name] >= 0):
            raise PrunebenchError(f"--tolerance {item!r}: the value must be a number >= 0")
    return out


def compare(old: CellResult, new: CellResult, limits: Mapping[str, float]) -> list[Check]:
    """``limits``: each metric's tolerance, as :func:`tolerances` resolves them; the cell's method may widen one."""
    checks = [Check("status", old.status, new.status, "", "equal", new.status == old.status == "ok")]
    if new.status != "ok" or old.status != "ok":
        if new.error:
            checks.append(Check("error", "", new.error.message, "", "", False))
        return checks
    if old.pruning or new.pruning:
        # Every decision the record holds must come out the same; what newer code adds to its decisions (a
        # descriptive key such as the numerics used) the record cannot judge, and is only named.
        before = old.pruning.decisions if old.pruning else {}
        after = new.pruning.decisions if new.pruning else {}
        differ = sorted(k for k in before if before[k] != after.get(k))
        added = sorted(set(after) - set(before))
        checks.append(Check("decisions", "recorded", f"DIFFERENT: {', '.join(differ)}" if differ else "identical",
                            f"newly reported: {', '.join(added)}" if added else "", "identical", not differ
                            and bool(old.pruning) == bool(new.pruning)))
    if old.parameters and new.parameters:
        for field in ("total_after", "blocks_after", "achieved_sparsity"):
            a, b = getattr(old.parameters, field), getattr(new.parameters, field)
            checks.append(Check(f"parameters.{field}", a, b, f"{b - a:+g}", "identical", a == b))
    widened = get_method(old.cell.method).repro_tolerances
    for name, metric in METRICS.items():
        recorded, again = old.metric(name), new.metric(name)
        if recorded is None:
            continue
        if again is None:
            checks.append(Check(name, "recorded", None, "", "present", False))
            continue
        tolerance = limits.get(name)
        if tolerance is not None and name in widened:
            tolerance = max(tolerance, widened[name])
        checks += metric.compare(recorded, again, tolerance)
    if old.pruning and new.pruning:
        checks.append(Check("pruning.seconds", round(old.pruning.seconds, 3), round(new.pruning.seconds, 3),
                            f"{new.pruning.seconds / max(old.pruning.seconds, 1e-9):.2f}x", "reported", None))
    return checks


def rerun(results: list[tuple[Path, CellResult]], executor: str, executor_options: dict[str, Any], workdir: Path,
          on_event=None) -> list[tuple[Path, CellResult, CellResult]]:
    """Run each recorded cell again into ``workdir`` (pruning redone) and pair old with new."""
    jobs = []
    for path, old in results:
        # Every setting as it ran (a record lacks none: harness.results filled those added since at their earlier
        # values); pruning redone, exports left out: the numbers are what is reproduced.
        spec = CellSpec.from_record({**old.config, "cache_pruned": False, "export": []}, where=str(path))
        spec_path = workdir / f"{spec.id}.spec.json"
        write_text_atomic(spec_path, spec.model_dump_json(indent=2))
        jobs.append(CellJob(spec, spec_path, workdir / f"{spec.id}.json", workdir / f"{spec.id}.log", None))
    make_executor(executor, executor_options).run(jobs, on_event or (lambda e: None))
    return [(path, old, read_result(job.result_path)) for (path, old), job in zip(results, jobs, strict=True)]


def measured_on(result: CellResult) -> str:
    return str((result.environment.get("runtime") or {}).get("device", "cpu")).split(":")[0]


def load(paths: list[Path], only_device: str | None = None) -> list[tuple[Path, CellResult]]:
    out = []
    for path in paths:
        if not path.exists():
            raise PrunebenchError(f"result file '{path}' does not exist")
        try:
            result = read_result(path)
        except InvalidResult as err:
            raise PrunebenchError(str(err)) from None
        if result.status != "ok":
            raise PrunebenchError(f"{path} records a failed cell: nothing to reproduce")
        if only_device is None or measured_on(result) == only_device:
            out.append((path, result))
    ids = [r.cell.id for _, r in out]
    if len(set(ids)) != len(ids):
        raise PrunebenchError("two of the result files are the same cell; give each cell once")
    return out


def devices(paths: list[Path]) -> str:
    """What the given results were measured on, e.g. 'cpu (19)'; for the message when a filter keeps none."""
    counts: dict[str, int] = {}
    for path in paths:
        try:
            device = measured_on(read_result(path))
        except InvalidResult:
            device = "unreadable"
        counts[device] = counts.get(device, 0) + 1
    return ", ".join(f"{d} ({n})" for d, n in sorted(counts.items()))


def workdir_for(out: Path | None) -> Path:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        return out
    return Path(tempfile.mkdtemp(prefix="prunebench-repro-"))


def event_printer(console) -> Any:
    def show(event: Event) -> None:
        if event.kind == "start":
            console.print(f"re-running {event.job.spec.id}", highlight=False)

    return show
