"""What every pruning method shares: typed options, calibration needs, stage timing, progress reporting.

A method is a pure algorithm over a :class:`~methods.arch.ModelAdapter`: it receives calibration
token ids already built by the harness, edits the model through the adapter, and returns its
decisions as JSON-serialisable data. It never loads data, models or files itself.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from methods.arch import ModelAdapter
from methods.errors import MethodError, invalid


class MethodOptions(BaseModel):
    """Options of one method; unknown keys are an error, values are validated by pydantic."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CalibrationNeeds:
    """How much calibration text a method asks for under one protocol."""

    samples: int
    seq_len: int


# The protocols a method sizes itself for: ``full`` is the amount of the papers and the reference harness
# (docs/protocol.md), ``quick`` a shortened run that a CPU finishes in minutes. A method declares both and
# never names a profile: each of the harness's profiles runs one of these (harness.profiles.METHOD_PROTOCOL),
# so a profile is added or renamed there without editing any method.
ProtocolName = Literal["full", "quick"]
PROTOCOLS: tuple[ProtocolName, ...] = ("full", "quick")

# How scores are computed (docs/reference-harness.md): ``exact`` is prunebench's own (float32 logits and
# norms, float64 sums); ``reference`` computes as the 2SSP authors' harness does, in the model's dtype
# (half precision on a GPU), so that its ties and roundings, and hence its decisions, are reproduced.
Numerics = Literal["exact", "reference"]
NUMERICS: tuple[Numerics, ...] = ("exact", "reference")


class Progress(Protocol):
    """``with progress("what", total) as advance: ... advance(1)``: the harness draws bars, tests pass nothing."""

    def __call__(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]: ...


def no_progress(description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n=1: None)


@dataclass
class StageTimer:
    """Wall time per named stage, synchronising CUDA so that queued kernels are counted where they run."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stages: dict[str, float] = field(default_factory=dict)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start


@dataclass
class PruneContext:
    """Everything a method's ``prune`` receives besides the model."""

    calibration: torch.Tensor  # [samples, seq_len] token ids
    sparsity: float
    seed: int = 0
    progress: Progress = no_progress
    timer: StageTimer = field(default_factory=StageTimer)
    numerics: Numerics = "exact"
    # Which computation ran where machines may take different ones with the same decisions (a search's run-time
    # checked shortcuts, methods.search): stage -> path. Written by the method, recorded in the pruning report.
    paths: dict[str, str] = field(default_factory=dict)
    # The method's plan for this model and sparsity, made by the harness on a weightless skeleton before any weight
    # loaded (``PruningMethod.plan``); None in a context made by hand (``PruningMethod.planned`` then makes it).
    plan: dict[str, Any] | None = None


class PruningMethod(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # Calibration the method asks for under each protocol (every one of PROTOCOLS; a bench may override).
    calibration: ClassVar[dict[str, CalibrationNeeds]] = {
        "full": CalibrationNeeds(32, 2048),
        "quick": CalibrationNeeds(8, 128),
    }

    # The reference row (the dense model): a bench measures it once, at sparsity 0 and seed 0, and compares every
    # other row with it; it is not pruned, recovered or ranked. Everything else about it is an ordinary method's.
    reference: ClassVar[bool] = False
    # Option values per protocol (e.g. a smaller search for ``quick``); the user's options win.
    protocol_options: ClassVar[dict[str, dict[str, Any]]] = {}
    # How far a re-run's value of a metric may honestly drift on another machine, where float rounding differs,
    # by metric name (``{"perplexity": 1e-2}``; in the metric's own sense, see harness.metrics.base.Metric.tolerance);
    # a metric not named keeps its tolerance. A method whose decisions amplify rounding says so here, and why.
    repro_tolerances: ClassVar[Mapping[str, float]] = MappingProxyType({})
    # Options added after results were first recorded, each with its earlier value: the value that computes what
    # the method computed before the option existed. A result recorded without the option reads as having that
    # value, and at that value the option is left out of a cell's configuration hash (harness.hashing), so that
    # adding an option neither changes what an old result claims to have run nor stops a bench resuming it.
    earlier_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A declaration keyed by anything but the protocols (a profile's name, a typo) would be silently
        # ignored by the harness: refuse it when the method's class is defined.
        super().__init_subclass__(**kwargs)
        if set(cls.calibration) != set(PROTOCOLS) or not set(cls.protocol_options) <= set(PROTOCOLS):
            raise TypeError(f"{cls.__qualname__}: calibration must name exactly the protocols {PROTOCOLS} and "
                            f"protocol_options only those; got {sorted(cls.calibration)} and "
                            f"{sorted(cls.protocol_options)}")

    def calibration_needs(self, protocol: str, model_type: str, construction: str = "joined") -> CalibrationNeeds:
        """The calibration this method asks for under ``protocol`` for a model of ``model_type`` built by
        ``construction`` (the harness's ``Calibration``); a method whose amount depends on either overrides it."""
        return self.calibration[protocol]

    def options(self, values: dict[str, Any] | None = None, protocol: str | None = None) -> MethodOptions:
        """The options from ``values`` over the defaults of ``protocol`` (None: the class defaults alone)."""
        from pydantic import ValidationError

        if protocol is not None and protocol not in PROTOCOLS:
            raise MethodError(f"{self.name}: unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
        merged = {**self.protocol_options.get(protocol or "", {}), **(values or {})}
        try:
            return self.Options(**merged)
        except ValidationError as err:
            where, message = invalid(err)
            raise MethodError(f"{self.name}: option '{where or 'options'}': {message}") from err

    @abstractmethod
    def plan(self, adapter: ModelAdapter, sparsity: float, options: MethodOptions) -> dict[str, Any]:
        """Check feasibility before any heavy work; ``adapter`` may wrap a weightless (meta) skeleton.

        Returns the planned quantities (e.g. how many modules to remove); raises MethodError if infeasible.
        """

    @abstractmethod
    def prune(self, adapter: ModelAdapter, options: MethodOptions, ctx: PruneContext) -> dict[str, Any]:
        """Prune in place through the adapter; return the decisions (JSON-serialisable)."""

    def planned(self, adapter: ModelAdapter, options: MethodOptions, ctx: PruneContext) -> dict[str, Any]:
        """The plan ``prune`` carries out: the harness's (``ctx.plan``, made once, before the weights loaded), or for a
        context made by hand, this adapter's. A plan depends on the model's shapes alone, so both are the same."""
        return ctx.plan if ctx.plan is not None else self.plan(adapter, ctx.sparsity, options)


def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, int | float) and 0.0 < sparsity < 1.0) or math.isnan(sparsity):
        raise MethodError(f"sparsity must be strictly between 0 and 1, got {sparsity}")


def blocks_for(sparsity: float, num_layers: int) -> int:
    """Whole-block methods remove ceil(s * L) blocks (docs/methods.md); a tiny epsilon absorbs float noise."""
    check_sparsity(sparsity)
    n = math.ceil(sparsity * num_layers - 1e-9)
    if n >= num_layers:
        raise MethodError(f"sparsity {sparsity} would remove all {num_layers} blocks")
    return n


def module_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
