"""The text a recovery trains on: the calibration part of a source, never the evaluation text.

A registered source's calibration part is disjoint from its evaluation part by its split (harness.data.offline,
harness.data.sources); a user's file serves the same text in either role, and another source may quote the
evaluation text. So the training text is also compared with every evaluation text of the run, paragraph by
paragraph: one shared paragraph refuses the recovery in one line, before any model loads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from harness.data.sources import Corpus, load_corpus, validate_source
from harness.data.tokens import tokenize
from harness.errors import DataUnavailable, PrunebenchError
from harness.schema import as_scalars

# Paragraphs shorter than this are headings or boilerplate that two unrelated texts may share.
MIN_PARAGRAPH_WORDS = 8
_SPACE = re.compile(r"\s+")


def resolve_source(data: str, profile_source: str) -> str:
    """The source a recovery trains on: ``auto`` is the profile's calibration source."""
    source = profile_source if data == "auto" else data
    validate_source(source)
    return source


def _paragraphs(text: str) -> Iterator[tuple[str, str]]:
    """(digest, paragraph) of each line long enough to identify its text, whitespace normalised."""
    for line in text.split("\n"):
        para = _SPACE.sub(" ", line).strip()
        if len(para.split(" ")) >= MIN_PARAGRAPH_WORDS:
            yield hashlib.sha1(para.encode()).hexdigest(), para


def check_disjoint(training: Corpus, evaluation: Iterable[Corpus]) -> int:
    """Refuse training text that shares a paragraph with an evaluation text; the paragraphs compared."""
    train = dict(_paragraphs(training.text))
    for corpus in evaluation:
        shared = [para for digest, para in _paragraphs(corpus.text) if digest in train]
        if shared:
            raise PrunebenchError(
                f"recovery data {training.source!r} shares {len(shared)} paragraph(s) with the evaluation text of "
                f"{corpus.source!r} (first: {shared[0][:60]!r}...): recover on text disjoint from the evaluation")
    return len(train)


def training_corpus(source: str, evaluation_sources: Iterable[str]) -> tuple[Corpus, dict[str, Any]]:
    """The calibration part of ``source`` and the record of its disjointness from each evaluation source."""
    corpus = load_corpus(source, "calibration")
    evaluated = sorted(set(evaluation_sources))
    compared = check_disjoint(corpus, (load_corpus(name, "evaluation") for name in evaluated))
    record = {"evaluation_sources": ", ".join(evaluated) or "none",
              "disjointness": f"no paragraph of >= {MIN_PARAGRAPH_WORDS} words shared with an evaluation text "
                              f"({compared} paragraphs compared)"}
    return corpus, record


@dataclass(frozen=True)
class TrainingText:
    """Token chunks to train on, and the protocol that reproduces them."""

    chunks: torch.LongTensor  # [n, seq_len]
    protocol: dict[str, Any]


def training_text(corpus: Corpus, disjointness: dict[str, Any], tokenizer: Any, seq_len: int) -> TrainingText:
    """The corpus tokenized once (joined, no special tokens) and cut into consecutive ``seq_len`` chunks."""
    tokens = tokenize(tokenizer, corpus)
    n = tokens.numel() // seq_len
    if n == 0:
        raise DataUnavailable(f"recovery data {corpus.source!r} has {tokens.numel()} tokens, fewer than one "
                              f"sample of {seq_len}")
    chunks = tokens[: n * seq_len].reshape(n, seq_len)
    protocol = {**as_scalars(corpus.protocol), **disjointness, "seq_len": seq_len, "corpus_tokens": int(tokens.numel()),
                "chunks": n, "order": "consecutive chunks, reshuffled each pass with torch.Generator(seed)"}
    return TrainingText(chunks, protocol)  # type: ignore[arg-type]


def batches(chunks: torch.Tensor, micro_batches: int, micro_batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """``micro_batches`` micro-batches drawn without replacement, a new permutation each pass over the chunks."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(micro_batches):
        batch = []
        while len(batch) < micro_batch_size:
            if not order:
                order = torch.randperm(chunks.shape[0], generator=generator).tolist()
            batch.append(order.pop())
        yield chunks[batch]


def passes(text: TrainingText, steps: int, batch_size: int) -> float:
    """How many times the training text is seen (more than 1 repeats it)."""
    return steps * batch_size / text.chunks.shape[0]


def check_amount(text: TrainingText, micro_batch_size: int) -> None:
    if text.chunks.shape[0] < micro_batch_size:
        raise DataUnavailable(f"the recovery data has {text.chunks.shape[0]} samples of {text.chunks.shape[1]} "
                              f"tokens, fewer than one micro-batch of {micro_batch_size}")
