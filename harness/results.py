"""The result of one bench cell: a schema-checked JSON file, written atomically, read defensively.

Every number is stored with the protocol that produced it, and every file carries the full resolved
configuration, its hash and the environment, so a result can be compared, reproduced or rejected on
its own. A file that does not parse or does not match the schema is reported by path and left alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, JsonValue, ValidationError, create_model

from harness.env import provenance_problem
from harness.export.base import ExportReport
from harness.files import write_text_atomic
from harness.hashing import complete
from harness.manifest import MANIFEST, RUN_RECORD, manifest_problem
from harness.metrics.registry import METRICS, metric_fields
from harness.pruning_report import PruningReport
from harness.recovery.config import RecoveryReport
from harness.schema import Strict
from methods.errors import invalid

log = logging.getLogger(__name__)

# 3: results carry the source digest of the code that ran (environment.prunebench.source_sha256), the run that
# pruned a cached model and a repaired cache entry; a version-2 file is read as version 3 (``upgrade``).
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)
# A cell's exports (bench ``export``) go into this folder beside its result; a model directory's JSON files
# (config.json, tokenizer.json) are not results, so scans skip it.
EXPORTS_DIR = "exports"


class Cell(Strict):
    """What a cell is: one model x method x sparsity x seed."""

    id: str
    model: str
    method: str
    variant: str  # the leaderboard row: the method's name, or an ablation's
    sparsity: float
    seed: int

    @property
    def reference(self) -> bool:
        """The unpruned reference row (a method whose ``reference`` is set: the dense model). Pruning targets are
        strictly between 0 and 1, so the one cell at sparsity 0 is it."""
        return self.sparsity == 0.0


class Parameters(Strict):
    total_before: int
    total_after: int
    blocks_before: int
    blocks_after: int
    achieved_sparsity: float


# How a failed cell ended. engine: the container engine refused or lost it; image-missing: its image is gone.
ErrorKind = Literal["exception", "timeout", "killed", "exit", "invalid", "interrupted", "engine", "image-missing"]


class ErrorInfo(Strict):
    kind: ErrorKind
    message: str
    log_tail: str = ""
    exit_code: int | None = None  # the process's or container's exit status, 128 + N for signal N


class Exports(Strict):
    """The exports a cell was asked for, by format: written, or refused (why, in one line).

    A refusal is the format's answer for this model (hf for 2SSP, gguf for SliceGPT), not a failure of the cell.
    """

    written: dict[str, ExportReport] = Field(default_factory=dict)
    refused: dict[str, str] = Field(default_factory=dict)

    def answered(self, formats: list[str]) -> bool:
        return all(f in self.written or f in self.refused for f in formats)


class _CellResult(Strict):
    """A cell's result; each registered metric adds a field of its own name (None: not measured), below."""

    schema_version: Literal[3] = SCHEMA_VERSION
    status: Literal["ok", "failed"]
    cell: Cell
    config: dict[str, JsonValue]  # the full resolved cell configuration (a CellSpec, as JSON)
    config_hash: str
    started_at: str
    finished_at: str
    wall_seconds: float
    parameters: Parameters | None = None
    pruning: PruningReport | None = None
    recovery: RecoveryReport | None = None  # the bench setting recovery: the LoRA healing after pruning
    memory: dict[str, int | None] = Field(default_factory=dict)
    environment: dict[str, JsonValue] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    exports: Exports | None = None  # None: none asked for (and every result written before exports existed)

    def metric(self, name: str) -> Any:
        return getattr(self, name)

    @property
    def git(self) -> dict[str, Any] | None:
        return (self.environment.get("prunebench") or {}).get("git")  # type: ignore[union-attr]


CellResult = create_model(
    "CellResult", __base__=_CellResult, __module__=__name__,
    **{name: (METRICS[name].result_type | None, None) for name in metric_fields(_CellResult.model_fields, "a result")},
)


class InvalidResult(Exception):
    """A result file that cannot be used; the message names the file."""


def write_result(path: Path, result: CellResult) -> None:
    CellResult.model_validate(result.model_dump())  # the schema is checked on the way out too
    write_text_atomic(path, result.model_dump_json(indent=2))


def upgrade(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A result of any readable schema version as the current one: the settings added after it was recorded are
    given their earlier values (harness.hashing), so that it says what it ran, never what today's defaults are."""
    config, filled, unknown = complete(data.get("config") or {})
    if unknown:
        raise InvalidResult(f"{path}: made before the settings {', '.join(sorted(unknown))} existed, which declare "
                            "no earlier value: what it ran is unknown (run its cell again)")
    if filled:
        log.debug("%s: settings added since it was recorded read at their earlier values: %s", path, filled)
    return {**data, "config": config, "schema_version": SCHEMA_VERSION}


def inconsistency(result: CellResult) -> str | None:
    """How a result disagrees with itself: a summary value that its raw material does not give (an edited file)."""
    p = result.parameters
    if p is not None:
        achieved = (p.blocks_before - p.blocks_after) / p.blocks_before if p.blocks_before > 0 else None
        if achieved is None or abs(p.achieved_sparsity - achieved) > 1e-12:
            return "parameters.achieved_sparsity does not follow from the block parameter counts"
        if result.pruning is not None and not result.pruning.from_cache and (
                result.pruning.parameters_after.get("blocks") != p.blocks_after):
            return "pruning.parameters_after does not match parameters.blocks_after"
    problem = provenance_problem(result.environment)
    if problem:
        return problem
    for name, metric in METRICS.items():
        value = result.metric(name)
        problem = metric.inconsistency(value) if value is not None else None
        if problem:
            return f"{name}: {problem}"
    return None


def read_result(path: Path) -> CellResult:
    """A result file, upgraded to the current schema and checked against its own raw material."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidResult(f"{path}: not readable JSON ({err})") from err
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS:
        raise InvalidResult(f"{path}: result schema version {version}, this prunebench reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))} (made by another prunebench version: run its "
                            "cell again)")
    try:
        result = CellResult.model_validate(upgrade(data, path))
    except ValidationError as err:
        where, message = invalid(err)
        raise InvalidResult(f"{path}: does not match the result schema ({where}: {message})") from err
    problem = inconsistency(result)
    if problem:
        raise InvalidResult(f"{path}: {problem} (edited by hand?)")
    return result


def scan_results(directory: Path) -> tuple[list[tuple[Path, CellResult]], list[str]]:
    """All valid results under ``directory`` (recursively), and one message per invalid file."""
    valid, problems = [], []
    for path in sorted(Path(directory).rglob("*.json")):
        if path.name.startswith(".") or path.name.endswith(".spec.json") or path.name in (RUN_RECORD, MANIFEST):
            continue
        if EXPORTS_DIR in path.relative_to(directory).parts[:-1]:
            continue
        try:
            published = manifest_problem(path)
            if published:
                raise InvalidResult(f"{path}: {published}")
            valid.append((path, read_result(path)))
        except InvalidResult as err:
            problems.append(str(err))
    return valid, problems
