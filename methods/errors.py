"""Errors of the algorithms: bad options or infeasible targets, reported by the CLI as one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MethodError(ValueError):
    """A method cannot run with these inputs (infeasible sparsity, bad option, unsupported model)."""


class UnsupportedArchitecture(MethodError):
    """The method cannot work on this model family at all, whatever the sparsity or options.

    A bench that got the method from a group (``all``) leaves it out for this model with a note; a method
    named explicitly is refused.
    """


def invalid(err: ValidationError) -> tuple[str, str]:
    """pydantic's first complaint as ``(where, message)``: the dotted location (empty for the model as a whole)
    and the message without pydantic's "Value error, " prefix. Every caller words its own one line around it."""
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"].removeprefix("Value error, ")
