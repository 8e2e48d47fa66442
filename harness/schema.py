"""The typed building blocks every record shares: the strict base model, the scalar of a protocol description,
and the confidence interval. Its own module, below everything that writes a record (statistics, pruning,
metrics, the engine), so that none of them imports another to reach them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Scalar = str | int | float | bool | None


def as_scalars(mapping: dict[str, Any], leave_out: set[str] | frozenset[str] = frozenset()) -> dict[str, Scalar]:
    """A protocol description with scalar values only (anything else is written as its text)."""
    return {k: v if isinstance(v, str | int | float | bool) or v is None else str(v)
            for k, v in mapping.items() if k not in leave_out}


class Strict(BaseModel):
    """Results and configs reject unknown keys: a misspelt field is an error, not a silent default, and a
    record written by newer code is refused, not misread."""

    model_config = ConfigDict(extra="forbid")


class Interval(Strict):
    """A confidence interval [low, high] at ``level``, and how it was obtained. A value: it never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float
    level: float
    method: str
