"""From a corpus to token tensors: evaluation windows and calibration samples (docs/protocol.md)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.data.sources import Corpus
from harness.errors import DataUnavailable, PrunebenchError
from methods.errors import invalid

# How calibration samples are built and what a seed does to them (Calibration).
Construction = Literal["joined", "per-document"]
CONSTRUCTIONS: tuple[Construction, ...] = ("joined", "per-document")
Draw = Literal["fixed", "shuffle", "random-chunks"]
DRAWS: tuple[Draw, ...] = ("fixed", "shuffle", "random-chunks")


class Calibration(BaseModel):
    """Which text calibrates a pruning run, how much, and how samples are built from it (docs/protocol.md,
    "Calibration data"): the one description of it, from a bench file or `prunebench prune`'s flags to the run.

    As asked, ``source`` may be ``auto`` (the profile's source) and ``samples`` / ``seq_len`` None (the method's
    amount for the profile); ``harness.pruning.resolve_calibration`` fills them in, once. ``construction``:
    ``joined`` cuts consecutive chunks of the documents joined with "\\n\\n" and tokenized once; ``per-document``
    builds each sample from documents tokenized one by one (EvoPress's own). ``draw``: what a non-zero seed does to
    the data: ``fixed`` nothing (the reference harness's main runs), ``shuffle`` shuffles the documents first (its
    calibration ablation), ``random-chunks`` draws distinct chunks at random (joined construction only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = "auto"
    samples: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=2)
    construction: Construction = "joined"
    draw: Draw = "fixed"

    @model_validator(mode="after")
    def _draw_fits(self) -> Calibration:
        if self.draw == "random-chunks" and self.construction != "joined":
            raise ValueError("calibration draw 'random-chunks' cuts the joined text: it needs construction 'joined'")
        return self

    @classmethod
    def checked(cls, **values: object) -> Calibration:
        """A Calibration from loose values (command-line flags): a bad one is one line, not a pydantic report."""
        construction, draw = values.get("construction", "joined"), values.get("draw", "fixed")
        if construction not in CONSTRUCTIONS:
            raise PrunebenchError(f"unknown calibration construction '{construction}'; "
                                  f"choose {' or '.join(CONSTRUCTIONS)}")
        if draw not in DRAWS:
            raise PrunebenchError(f"unknown calibration draw '{draw}'; choose {', '.join(DRAWS)}")
        try:
            return cls(**values)
        except ValidationError as err:
            where, message = invalid(err)
            raise PrunebenchError(f"calibration {where}: {message}" if where else message) from None


def tokenize(tokenizer: Any, corpus: Corpus) -> torch.LongTensor:
    """The whole joined text tokenized once, without special tokens (BOS is the caller's decision)."""
    return encode(tokenizer, corpus.text)


def encode(tokenizer: Any, text: str) -> torch.LongTensor:
    """Token ids of ``text`` without special tokens.

    ``verbose=False`` silences the "longer than the model max length" warning: the long sequence is
    cut into windows afterwards, never fed whole.
    """
    encoded = tokenizer(
        text,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return torch.tensor(encoded["input_ids"], dtype=torch.long)  # type: ignore[return-value]


def _check_tokens(tokens: torch.Tensor) -> None:
    if tokens.dim() != 1:
        raise PrunebenchError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise PrunebenchError(f"tokens must be integer ids, got {tokens.dtype}")


def _check_positive(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunebenchError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _chunks(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """All consecutive non-overlapping seq_len chunks, as [n, seq_len]; the remainder is dropped."""
    n = tokens.numel() // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len).to(torch.long)


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.LongTensor:
    """Non-overlapping seq_len windows in text order, the remainder dropped, at most ``max_windows``."""
    _check_tokens(tokens)
    _check_positive("seq_len", seq_len, 2)
    if max_windows is not None:
        _check_positive("max_windows", max_windows, 1)
    windows = _chunks(tokens, seq_len)
    if windows.shape[0] == 0:
        raise DataUnavailable(
            f"the evaluation text has {tokens.numel()} tokens, fewer than one window of {seq_len}"
        )
    if max_windows is not None:
        windows = windows[:max_windows]
    return windows.clone()  # type: ignore[return-value]


def calibration_samples(
    tokens: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0
) -> torch.LongTensor:
    """n_samples consecutive seq_len chunks of the calibration text.

    seed 0 takes the first chunks in order, as the authors' code does; any other seed draws distinct
    chunks without replacement with a torch.Generator seeded by it (the ``random-chunks`` draw), kept in
    drawn order. Too little text is an error, never silently fewer samples.
    """
    _check_tokens(tokens)
    _check_positive("n_samples", n_samples, 1)
    _check_positive("seq_len", seq_len, 2)
    _check_positive("seed", seed, 0)
    chunks = _chunks(tokens, seq_len)
    available = chunks.shape[0]
    if n_samples > available:
        raise DataUnavailable(
            f"the calibration text has {available} chunks of {seq_len} tokens ({tokens.numel()} tokens), "
            f"{n_samples} were asked"
        )
    if seed == 0:
        return chunks[:n_samples].clone()  # type: ignore[return-value]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)[:n_samples]
    return chunks[order].clone()  # type: ignore[return-value]


def shuffled_documents(documents: Sequence[str], seed: int) -> list[str]:
    """The documents in the order the authors' calibration ablation draws for ``seed``.

    Their ``get_calibration`` shuffles the document indices with Python's ``random`` seeded by the run's
    seed (``random.seed(seed)``, then ``random.shuffle``), and only when the seed is not 0; the documents
    are then joined and cut as usual. ``random.Random(seed)`` gives the same permutation.
    """
    order = list(range(len(documents)))
    if seed != 0:
        random.Random(seed).shuffle(order)
    return [documents[i] for i in order]


def per_document_samples(tokenizer: Any, documents: Sequence[str], n_samples: int, seq_len: int,
                         join: str = "\n\n") -> tuple[torch.LongTensor, int]:
    """The EvoPress calibration as the authors (and EvoPress's own code) build it.

    Each document is tokenized on its own and appended to the sample being built; once the sample holds
    at least ``seq_len`` tokens it is cut there (the rest of that document is dropped) and a new sample
    starts; otherwise a separately tokenized ``join`` follows the document. Too few documents for
    ``n_samples`` samples is an error (their loop would silently return fewer). Returns the samples and the
    number of tokens of the documents (and separators) consumed, the corpus size of this construction.
    """
    _check_positive("n_samples", n_samples, 1)
    _check_positive("seq_len", seq_len, 2)
    separator = encode(tokenizer, join)
    samples: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    held = consumed = 0
    for document in documents:
        piece = encode(tokenizer, document)
        current.append(piece)
        held += piece.numel()
        consumed += piece.numel()
        if held >= seq_len:
            samples.append(torch.cat(current)[:seq_len])
            current, held = [], 0
            if len(samples) == n_samples:
                return torch.stack(samples), consumed  # type: ignore[return-value]
        else:
            current.append(separator)
            held += separator.numel()
            consumed += separator.numel()
    raise DataUnavailable(
        f"the calibration documents give only {len(samples)} samples of {seq_len} tokens when built one document at "
        f"a time (the rest of each document past a cut is dropped), {n_samples} were asked"
    )
