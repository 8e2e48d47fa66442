"""The metric protocol: what one measurement of a bench cell is, from its config to its leaderboard columns.

A metric is one module: a frozen config (with the defaults of each protocol profile), a typed result,
how it runs on a model, how its result shows in the leaderboard and CSV, and how ``repro`` compares two
results. ``harness.metrics.registry`` lists the metrics; the cell, the bench configuration, the result
schema, the leaderboard and ``repro`` iterate over that list and never name a metric themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from harness.schema import Interval, Scalar
from methods.arch import ModelAdapter
from methods.base import Numerics


class MetricConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


@dataclass
class MeasureContext:
    """What a metric measures on: the model in memory (dense or pruned) and what comes with it."""

    model: torch.nn.Module
    adapter: ModelAdapter
    tokenizer: Any
    seed: int
    is_dense_cell: bool  # the cell's own model is the dense one (nothing was pruned)
    # Where the dense model came from (name, kind, dtype, device: the prune report's model record); an
    # export names the model by it and reads an embedded model's own files (its tokenizer) through it.
    source: dict[str, str] = field(default_factory=dict)
    # How scores are computed (methods.base.Numerics) and what tokenizes corpus text (None: ``tokenizer``).
    numerics: Numerics = "exact"
    corpus_tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.corpus_tokenizer is None:
            self.corpus_tokenizer = self.tokenizer


@dataclass(frozen=True)
class Check:
    """One line of a ``repro`` comparison; ``ok`` None means reported, not judged."""

    metric: str
    recorded: Any
    new: Any
    difference: str
    tolerance: str
    ok: bool | None


@dataclass(frozen=True)
class HubNeeds:
    """What a metric reads from the Hugging Face hub with a config: the bench's driver fetches it once, before its
    cells, which then read it offline (harness.bench.inputs)."""

    corpora: tuple[str, ...] = ()  # text sources (harness.data.sources), read for evaluation
    tasks: tuple[str, ...] = ()  # lm-eval tasks whose datasets come from the hub


@dataclass(frozen=True)
class Panel:
    """A panel of the leaderboard's plot: a metric's value against achieved sparsity, one line per row."""

    value: Callable[[Any], tuple[float, float, float] | None]  # the metric's result -> (value, low, high)
    ylabel: str
    title: str  # after "<model>: "
    log: bool = False
    title_size: float | None = None


C = TypeVar("C", bound=MetricConfig)
R = TypeVar("R")


class Metric(Generic[C, R]):
    """Base of every metric. ``name`` is the key of its config in a bench/cell and of its result."""

    name: ClassVar[str]
    config_type: ClassVar[type[MetricConfig]]
    result_type: ClassVar[Any]  # a pydantic-compatible type: a model, or e.g. dict[str, Model]
    column_order: ClassVar[int] = 100  # where its columns stand in a leaderboard, lowest first
    # Off unless asked for, in every profile (its config's default has ``enabled`` false): an extra's config is no
    # part of a cell's hash while it is off, and a record made before it existed reads as having it off.
    extra: ClassVar[bool] = False
    short_name: ClassVar[str] = ""  # its rank column's label (``# PPL``); empty: the metric's name
    # How far ``prunebench repro`` lets a re-run's value differ from the record (``compare``), and in what sense
    # ("relative", "absolute"); None: the metric's values are reported, never judged (timings). A user's
    # ``--tolerance NAME=VALUE`` replaces it, and a method may widen it (methods.base.Method.repro_tolerances).
    tolerance: ClassVar[float | None] = None
    tolerance_kind: ClassVar[str] = ""
    # The leaderboard's note under each table, in the metric's words (empty: it has nothing to say there). A
    # ranking metric says what it orders rows by when it ranks first, what its rank is by, and what its paired
    # test compares; a metric with intervals says how they are made; ``note`` is anything else.
    order_by: ClassVar[str] = ""
    rank_by: ClassVar[str] = ""
    paired_on: ClassVar[str] = ""
    interval_note: ClassVar[str] = ""
    note: ClassVar[str] = ""
    # Settings of its config added after results were first recorded, each with the value that measures what the
    # metric measured before the setting existed (harness.hashing: filled into older records, left out of hashes).
    earlier_settings: ClassVar[dict[str, Any]] = {}

    def default_config(self, profile: str) -> C:
        raise NotImplementedError

    def with_overrides(self, base: C, overrides: dict[str, Any]) -> dict[str, Any]:
        """The settings a bench's overrides make of the profile's config (validated by the caller): the fields
        given replace the profile's. A metric whose settings depend on each other says here what else follows."""
        return {**base.model_dump(), **overrides}

    def validate(self, config: C) -> None:
        """Refuse bad input in one line before any model loads."""

    def hub_needs(self, config: C) -> HubNeeds:
        """What the metric reads from the hub with ``config`` (nothing, unless a metric says otherwise)."""
        return HubNeeds()

    def evaluation_texts(self, config: C) -> tuple[str, ...]:
        """The text sources (harness.data.sources) the metric evaluates on with ``config``: what training on the
        model (recovery) must keep clear of. None, unless a metric says otherwise."""
        return ()

    def positions(self, config: C) -> int:
        """The longest sequence (in tokens) the metric runs the model on: a bench refuses one beyond the model's
        positions before it starts (0: no fixed length)."""
        return 0

    def describe(self, config: C) -> str:
        """One line of the protocol, printed before a bench runs."""
        return f"{self.name}: {'on' if config.enabled else 'off'}"

    def before_pruning(self, config: C, ctx: MeasureContext) -> Any:
        """What must be measured on the dense model, in the cell's process, before it is pruned."""
        return None

    def measure(self, config: C, ctx: MeasureContext, before: Any) -> R:
        raise NotImplementedError

    def protocol_lines(self, result: R) -> list[str]:
        """Markdown lines of the leaderboard's protocol header."""
        return []

    def csv(self, result: R) -> dict[str, Scalar]:
        return {}

    # ---- leaderboard: a row is one method at one sparsity, with one result per seed

    def headers(self, sample: R) -> list[str]:
        """Column headers of this metric, given one result of the table."""
        return []

    def cells(self, seeds: list[R], dense: list[R] | None) -> list[str]:
        """This row's cells under ``headers``; ``dense`` is the dense model's row where there is one."""
        return []

    def data_identity(self, result: R) -> dict[str, Any]:
        """What identifies the data a result was measured on, where results on other data must not share a
        leaderboard table although their settings are equal (perplexity: each text's identity and length)."""
        return {}

    def panel(self, sample: R) -> Panel | None:
        """Its panel of the leaderboard's plot, set up from one result (none: the metric is not plotted)."""
        return None

    def rank_basis(self, sample: R) -> str | None:
        """What rows are ranked by when this metric ranks them (None: it does not)."""
        return None

    def rank_value(self, seeds: list[R]) -> float | None:
        """The row's point estimate, lower is better (None: not ranked)."""
        return None

    def paired_p(self, a: list[R], b: list[R]) -> float | None:
        """Two-sided p-value of the paired test of two rows (None: they cannot be paired)."""
        return None

    def compare(self, old: R, new: R, tolerance: float | None) -> list[Check]:
        """A re-run's values against the record's, judged by ``tolerance`` (this metric's, resolved by repro)."""
        return []

    def inconsistency(self, result: R) -> str | None:
        """How a stored result disagrees with its own raw material (a summary edited by hand); None if it agrees.

        Every summary a result shows (a value, its interval) is recomputed from what it keeps (windows,
        per-example outcomes, timing samples) when a result file is read; a file that fails is left out."""
        return None


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean over seeds, and their standard deviation where there are several."""
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def estimate(value: float, interval: Interval | None, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """``value [low, high]`` as printed in a leaderboard cell."""
    text = f"{value * scale:.{digits}f}{unit}"
    if interval is None:
        return text
    return f"{text} [{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"


def over_seeds(values: list[float], intervals: list[Interval | None], digits: int = 2, scale: float = 1.0,
               unit: str = "") -> str:
    """One seed: the value with its interval; several: mean ± standard deviation over the seeds."""
    if len(values) == 1:
        return estimate(values[0], intervals[0], digits, scale, unit)
    mean, sd = mean_spread(values)
    return f"{mean * scale:.{digits}f}{unit} ± {(sd or 0.0) * scale:.{digits}f} ({len(values)} seeds)"
