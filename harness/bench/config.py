"""Bench configuration: profiles, the YAML file, and the expansion into cells.

A bench is model x methods x sparsities x seeds under one protocol profile. ``paper`` is the protocol
of docs/protocol.md; ``cpu-quick`` is a shortened one that a 2-core laptop finishes in minutes. Every
resolved value is printed and recorded in each result, and each cell carries two hashes: the
configuration hash (everything that affects its numbers) and the pruning hash (only what affects the
pruned model, so that a metric added later reuses the cached pruned model).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from harness import __version__
from harness.data.tokens import Calibration
from harness.errors import PrunebenchError, first_line
from harness.hashing import EXTRAS, NOT_HASHED, canonical_hash, complete, config_hash
from harness.metrics.registry import METRICS, metric_fields
from harness.models import TokenizerKind
from harness.profiles import calibration_source
from harness.recovery.config import RecoveryConfig
from methods.base import Numerics
from methods.errors import invalid


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def profile_defaults(profile: str) -> dict[str, Any]:
    """The protocol each profile stands for: its calibration source and every metric's config.

    ``paper`` is the protocol of docs/protocol.md. ``cpu-quick`` is sized so that `make bench` (7 rows x 3
    sparsities on SmolLM2-135M) stays under half an hour on 2 CPU cores while the paired tests of its
    leaderboard still separate the methods; each metric's module says how.
    """
    return {"calibration_source": calibration_source(profile),
            **{name: metric.default_config(profile) for name, metric in METRICS.items()}}


class Row(_Config):
    """A named row of the leaderboard: a method with its own options or calibration (ablations)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    method: str
    options: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None
    sparsities: list[float] | None = None  # None: the bench's
    seeds: list[int] | None = None


class _BenchConfig(_Config):
    """What a user asks for (YAML file and CLI flags); ``resolve`` fills in the profile.

    Each registered metric adds a field of its own name and config type (None = the profile's), below.
    """

    model: str = "smollm2-135m"
    methods: list[str] = Field(default_factory=lambda: ["all"])
    sparsities: list[float] = Field(default_factory=lambda: [0.25, 0.375, 0.5])
    num_prune: int | None = Field(
        None, description="target as whole-block equivalents N/L; -1 every step, -2 the paper's three")
    seeds: list[int] = Field(default_factory=lambda: [0])
    # Named rows beside ``methods`` (a method with its own options or calibration). ``variants`` is the
    # key's former name, still read; a method's ``variant`` option (reference|paper) is another thing.
    rows: list[Row] = Field(default_factory=list, validation_alias=AliasChoices("rows", "variants"))
    preset: str | None = None
    profile: Literal["auto", "paper", "cpu-quick"] = "auto"
    out: Path | None = None
    executor: Literal["local", "docker", "ray"] = "local"
    dtype: str = "auto"
    device: str = "auto"
    # How scores are computed, in the searches and in perplexity (methods.base.Numerics), and which tokenizer
    # tokenizes corpus text (harness.models.TokenizerKind): prunebench's own, or as the authors' harness.
    numerics: Numerics = "exact"
    tokenizer: TokenizerKind = "fast"
    trust_remote_code: bool = False
    timeout_s: float | None = Field(None, gt=0, description="per cell")
    cache_pruned: bool = True
    calibration: Calibration = Field(default_factory=Calibration)
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    executor_options: dict[str, Any] = Field(default_factory=dict)
    # Also write each cell's model in these formats (harness.export), into cells/exports/ beside its result.
    export: list[str] = Field(default_factory=list)
    # Recovery fine-tuning after pruning (harness.recovery): overrides of the profile's settings; None = off,
    # a mapping (even empty) = on unless it says ``enabled: false``.
    recovery: dict[str, JsonValue] | None = None

    @field_validator("export")
    @classmethod
    def _known_formats(cls, values: list[str]) -> list[str]:
        from harness.export import resolve_format

        for fmt in values:
            try:
                resolve_format(fmt)
            except PrunebenchError as err:  # a ValueError is what pydantic reports as a bad setting
                raise ValueError(str(err)) from None
        return list(dict.fromkeys(values))

    @model_validator(mode="after")
    def _exports_stay(self):
        if self.export and self.executor == "ray":
            raise ValueError("the ray executor keeps only a cell's result and log (no shared filesystem), so "
                             "exports would be lost: export with the local or docker executor")
        return self

    @field_validator("sparsities")
    @classmethod
    def _in_unit_interval(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("no sparsity given")
        for s in values:
            if not 0.0 < s < 1.0:
                raise ValueError(f"sparsity {s} is not strictly between 0 and 1")
        return values

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if not values:
            raise ValueError("no seed given")
        if any(s < 0 for s in values):
            raise ValueError(f"seeds are non-negative integers, got {min(values)}")
        return values

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("an empty method name")
        return values

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("the model is empty: give an embedded name, a hub id or a model directory")
        return value

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("out is empty: give a folder (use '.' to mean the current one)")
        return value


# A metric's settings in a bench are overrides of the profile's: ``perplexity: {max_windows: 10}`` keeps the
# profile's datasets and window length. ``metric_config`` merges and checks them.
BenchConfig = create_model(
    "BenchConfig", __base__=_BenchConfig, __module__=__name__,
    **{name: (dict[str, JsonValue] | None, None) for name in metric_fields(_BenchConfig.model_fields, "a bench")},
)


def metric_config(name: str, profile: str, overrides: dict[str, Any] | None) -> Any:
    """The profile's config of metric ``name`` with a bench's overrides on top; a bad key or value is one line."""
    metric = METRICS[name]
    try:
        return metric.config_type.model_validate(metric.with_overrides(metric.default_config(profile), overrides or {}))
    except ValidationError as err:
        where, message = invalid(err)
        raise PrunebenchError(f"bench setting '{'.'.join(p for p in (name, where) if p)}': {message}") from None


def load_bench_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise PrunebenchError(f"cannot read bench file {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise PrunebenchError(f"bench file {path} is not valid YAML: {first_line(err, named=False)}") from err
    if not isinstance(data, dict):
        raise PrunebenchError(f"bench file {path} must hold a mapping of settings")
    return data


def make_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> BenchConfig:
    """The bench file, then the CLI flags that were given on top of it."""
    merged = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return BenchConfig(**merged)
    except ValidationError as err:
        where, message = invalid(err)
        raise PrunebenchError(f"bench setting '{where or 'bench'}': {message}") from None


def model_slug(model: str) -> str:
    name = Path(model).name if Path(model).expanduser().exists() else model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-") or "model"


class _CellSpec(_Config):
    """Everything one cell needs, fully resolved; what its result records as ``config``.

    Each registered metric adds a field of its own name holding its resolved config, below.
    """

    id: str
    model: str
    method: str
    variant: str
    sparsity: float
    seed: int
    profile: str
    method_options: dict[str, Any]
    calibration: Calibration
    dtype: str
    device: str
    numerics: Numerics = "exact"
    tokenizer: TokenizerKind = "fast"
    trust_remote_code: bool
    cache_pruned: bool
    prunebench_version: str = __version__
    # How to run, not what to compute (bench --force): prune again even if the cache holds the model.
    # Left out of both hashes, so a forced run's result is the same configuration as any other.
    reprune: bool = False
    # Formats to export the cell's model in, after its measurements: they change no number, so they are left
    # out of both hashes too (a cell whose result lacks an asked export runs again, see runner.plan_jobs).
    export: list[str] = Field(default_factory=list)

    # The bench run that made the cell (its folder and start), named by a pruned model it leaves in the cache.
    # Like ``reprune`` and ``export``: how and where it ran, left out of both hashes.
    run: str | None = None
    # The recovery after pruning, resolved; None = none (the dense cell never has one).
    recovery: RecoveryConfig | None = None
    # The method's plan for this cell (``PruningMethod.plan``), made by the driver on the model's skeleton when it
    # checked the bench; the cell carries it out instead of planning again. It follows from the settings above, so
    # it is in neither hash; None (a record made before it, or a spec made by hand): the cell plans.
    plan: dict[str, Any] | None = None

    def config_hash(self) -> str:
        return config_hash(self.model_dump(mode="json"))

    @classmethod
    def from_record(cls, config: dict[str, Any], where: str = "the record") -> Any:
        """The spec a result recorded, every setting as it ran: a setting added after the record is given its
        earlier value (harness.hashing), never today's default; one without an earlier value is refused."""
        full, _, unknown = complete(config)
        unknown += [name for name in cls.model_fields if name not in full and name not in NOT_HASHED]
        if unknown:
            raise PrunebenchError(f"{where} was made before the settings {', '.join(sorted(unknown))} existed and "
                                  "they declare no earlier value, so what it ran cannot be re-run")
        try:
            return cls(**full)
        except ValidationError as err:
            field, message = invalid(err)
            raise PrunebenchError(f"{where}: its configuration is not a cell's ({field}: {message})") from None

    def prune_key(self, model_identity: str, fingerprint: dict[str, str], *, dtype: str, device: str) -> str:
        """Only what determines the pruned weights: a later metric change reuses the pruned model.

        ``fingerprint`` is the code and library versions that prune (harness.prune_cache.code_fingerprint):
        a change to a method's code gives a new key, so the cache never serves what older code pruned.
        ``dtype`` and ``device`` are what the cell's settings resolved to where it runs (``auto`` is the GPU's
        precision on one machine and float32 on the CPU of another; harness.devices.device_identity names the
        processor): a CPU run and a GPU run, or a host and a container sharing the cache, never serve each other.
        """
        return canonical_hash({
            "model": model_identity, "method": self.method, "code": fingerprint,
            "sparsity": self.sparsity, "seed": self.seed, "options": self.method_options,
            "calibration": self.calibration.model_dump(mode="json"), "dtype": dtype, "device": device,
            "numerics": self.numerics, "tokenizer": self.tokenizer,
        })


def _spec_field(name: str, metric: Any) -> tuple[Any, Any]:
    return (metric.config_type, metric.config_type() if name in EXTRAS else ...)


CellSpec = create_model(
    "CellSpec", __base__=_CellSpec, __module__=__name__,
    **{name: _spec_field(name, METRICS[name]) for name in metric_fields(_CellSpec.model_fields, "a cell's spec")},
)


RECOVERED_SUFFIX = "-recovered"


def cell_id(variant: str, sparsity: float, seed: int, recovered: bool = False, *, reference: bool = False) -> str:
    """A cell's name in its run folder; the recovered model of a pruned cell is its own cell beside it, and the
    reference row's one cell is named by its row alone."""
    if reference:
        return variant
    return f"{variant}-s{sparsity:g}-seed{seed}{RECOVERED_SUFFIX if recovered else ''}"
