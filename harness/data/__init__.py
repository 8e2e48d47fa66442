"""Text for evaluation and calibration: the source registry and the token windows cut from it.

``tokenize``, ``eval_windows`` and ``calibration_samples`` import torch, so they load on first use:
listing or validating sources stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.data.offline import enwiki_articles
from harness.data.sources import Corpus, Role, load_corpus, source_names, validate_source

if TYPE_CHECKING:
    from harness.data.tokens import calibration_samples, eval_windows, tokenize

__all__ = [
    "Corpus",
    "Role",
    "calibration_samples",
    "enwiki_articles",
    "eval_windows",
    "load_corpus",
    "source_names",
    "tokenize",
    "validate_source",
]

_TOKEN_FUNCTIONS = frozenset({"tokenize", "eval_windows", "calibration_samples"})


def __getattr__(name: str) -> Any:
    if name in _TOKEN_FUNCTIONS:
        from harness.data import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'harness.data' has no attribute {name!r}")
