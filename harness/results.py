"""The result of one bench cell: a schema-checked JSON file, written atomically, read defensively.

Every number is stored with the protocol that produced it, and every file carries the full resolved
configuration, its hash and the environment, so a result can be compared, reproduced or rejected on
its own. A file that does not parse or does not match the schema is reported by path and left alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Cell(_Strict):
    """What a cell is: one model x method x sparsity x seed."""

    id: str
    model: str
    method: str
    variant: str  # the leaderboard row: the method's name, or an ablation's
    sparsity: float
    seed: int


class PerplexityScore(_Strict):
    value: float
    seconds: float
    protocol: dict[str, Any]


class Timing(_Strict):
    median: float
    p25: float
    p75: float
    min: float
    max: float
    repeats: int


class LatencyScore(_Strict):
    prefill_ms: Timing
    decode_tokens_per_s: Timing
    dense_prefill_ms: Timing | None = None  # the dense model, same process, same protocol
    dense_decode_tokens_per_s: Timing | None = None
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    protocol: dict[str, Any]


class PruningReport(_Strict):
    seconds: float
    stages: dict[str, float]
    decisions: dict[str, Any]
    plan: dict[str, Any]
    options: dict[str, Any]
    calibration: dict[str, Any]
    from_cache: bool = False  # the pruned model came from the cache: timings are those of the original run
    cache_key: str | None = None
    # The run that pruned it (cell, finished_at, git, hardware): the original one when from_cache
    pruned_by: dict[str, Any] | None = None


class Parameters(_Strict):
    total_before: int
    total_after: int
    blocks_before: int
    blocks_after: int
    achieved_sparsity: float


class ErrorInfo(_Strict):
    kind: Literal["exception", "timeout", "killed", "exit", "invalid", "interrupted"]
    message: str
    log_tail: str = ""


class CellResult(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    status: Literal["ok", "failed"]
    cell: Cell
    config: dict[str, Any]  # the full resolved cell configuration
    config_hash: str
    started_at: str
    finished_at: str
    wall_seconds: float
    parameters: Parameters | None = None
    pruning: PruningReport | None = None
    memory: dict[str, int | None] = Field(default_factory=dict)
    perplexity: dict[str, PerplexityScore] = Field(default_factory=dict)
    downstream: dict[str, Any] | None = None
    latency: LatencyScore | None = None
    samples: list[dict[str, str]] | None = None  # qualitative generations
    environment: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class InvalidResult(Exception):
    """A result file that cannot be used; the message names the file."""


def write_text_atomic(path: Path, payload: str) -> None:
    """Write via a temporary file in the same directory and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(path: Path, result: CellResult) -> None:
    CellResult.model_validate(result.model_dump())  # the schema is checked on the way out too
    write_text_atomic(path, result.model_dump_json(indent=2))


def read_result(path: Path) -> CellResult:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidResult(f"{path}: not readable JSON ({err})") from err
    try:
        return CellResult.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidResult(f"{path}: does not match the result schema ({where}: {first['msg']})") from err


def scan_results(directory: Path) -> tuple[list[tuple[Path, CellResult]], list[str]]:
    """All valid results under ``directory`` (recursively), and one message per invalid file."""
    valid, problems = [], []
    for path in sorted(Path(directory).rglob("*.json")):
        if path.name.startswith(".") or path.name.endswith(".spec.json") or path.name == "bench.json":
            continue
        try:
            valid.append((path, read_result(path)))
        except InvalidResult as err:
            problems.append(str(err))
    return valid, problems
