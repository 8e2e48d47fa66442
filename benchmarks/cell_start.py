"""What the local executor's fork server saves per cell: the same cells forked from it and started as fresh
interpreters (harness.bench.executors.forkserver).

The cell is the dense default model under a tiny protocol (perplexity on 2 windows of 64 tokens, no other metric),
so that what a cell costs beyond its work dominates. Each round runs a bench of --cells such cells with each kind of
start, one after the other, so that machine load hits both alike. A cell's time is the executor's, from its start to
its result. The server imports once per bench, in its first cell's time, as in a real bench: the report gives that
first cell apart, then the median of the others, their difference and ratio.

    python benchmarks/cell_start.py [--rounds 3] [--cells 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def bench_times(fork: bool, cells: int, folder: Path) -> list[float]:
    """Seconds per cell of a bench of ``cells`` identical tiny dense cells, forked or fresh."""
    from harness.bench.config import BenchConfig
    from harness.bench.executors import CellJob, Event
    from harness.bench.executors.local import LocalExecutor
    from harness.bench.expand import resolve

    off = {"enabled": False}
    config = BenchConfig(model="smollm2-135m", profile="cpu-quick", methods=["dense"], out=folder / "out",
                         perplexity={"datasets": ["enwiki-sample"], "seq_len": 64, "max_windows": 2},
                         downstream=off, latency=off, qualitative=off)
    spec = resolve(config).cells[0]
    jobs = []
    for i in range(cells):
        stem = folder / f"{'forked' if fork else 'fresh'}-{i}"
        job = CellJob(spec, stem.with_suffix(".spec.json"), stem.with_suffix(".json"), stem.with_suffix(".log"), None)
        job.spec_path.write_text(spec.model_dump_json())
        jobs.append(job)
    started: dict[str, float] = {}
    seconds: list[float] = []

    def on_event(event: Event) -> None:
        key = str(event.job.result_path)
        if event.kind == "start":
            started[key] = time.perf_counter()
            return
        if event.status != "ok":
            raise SystemExit(f"a cell failed: {event.message} (log: {event.job.log_path})")
        seconds.append(time.perf_counter() - started[key])

    LocalExecutor(fork=fork).run(jobs, on_event)
    return seconds


def main() -> int:
    from harness.bench.executors.forkserver import forking_allowed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", type=int, default=4, help="cells per bench (>= 2)")
    args = ap.parse_args()
    if args.cells < 2 or args.rounds < 1:
        raise SystemExit("--cells must be at least 2 and --rounds at least 1")
    if not forking_allowed():
        raise SystemExit("an NVIDIA driver is loaded here: the local executor does not fork cells on this machine")
    times: dict[bool, list[list[float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for fork in (True, False):
                folder = Path(tmp) / f"round{r}-{fork}"
                folder.mkdir()
                times[fork].append(bench_times(fork, args.cells, folder))
    first = {fork: statistics.median(run[0] for run in runs) for fork, runs in times.items()}
    rest = {fork: statistics.median(t for run in runs for t in run[1:]) for fork, runs in times.items()}
    print(f"{args.rounds} rounds of a bench of {args.cells} tiny dense cells (perplexity on 2 x 64 tokens), "
          "seconds per cell from start to result (median):")
    print(f"  first cell:  forked {first[True]:.2f} s, fresh {first[False]:.2f} s (the server imports in it)")
    print(f"  later cells: forked {rest[True]:.2f} s, fresh {rest[False]:.2f} s: {rest[False] - rest[True]:.2f} s "
          f"less a cell, {rest[False] / rest[True]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
