"""llama.cpp on the CPU, through llama-cpp-python: load a GGUF, score windows, decode greedily, time both phases.

A thin layer: ``llama_cpp.Llama`` loads the model and creates the context; batches, decoding, logits and
performance counters go through llama.cpp's C API, so that nothing in between (llama-cpp-python's
sampler, its token cache, its logits copies) changes what is computed or timed. Every setting that
changes a number is fixed and recorded (:class:`EngineSettings`): one thread count for single tokens and
for batches, a context sized to what is run, one batch per call (a prompt is one graph, as it is one
forward in PyTorch), no memory mapping (the weights are read at load, so no timed call pays for page
faults), flash attention off, llama-cpp-python's own output off, and llama.cpp's load errors kept and
raised as one line.

Scoring mirrors prunebench's perplexity (``harness.metrics.perplexity.window_scores``): each window in
a fresh KV cache, logits of every position, BOS prepended as context only when asked, and the next-token
NLL from a float64 log-softmax of the engine's float32 logits.

Timings come from llama.cpp's own counters (``llama_perf_context``), not from a clock around the Python
calls. llama.cpp times each ``llama_decode`` from its start to the synchronisation of its outputs and
files a one-token batch under "eval" and a longer one under "prompt eval". So a decode rate is n single
steps over their own time, without subtracting a prompt-only run from a prompt-plus-steps run (the
difference of two noisy wall times, which is what the PyTorch latency metric must do), and without the
wrapper's per-step work (ctypes calls, the argmax over the vocabulary), which is Python's, not the engine's.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from harness.errors import PrunebenchError, first_line
from harness.schema import Strict

log = logging.getLogger(__name__)

VERSION = "0.3.36"  # the llama-cpp-python that requirements-engine.lock pins (and the GGUF export targets)
# enum ggml_log_level of the vendored ggml.h (llama-cpp-python's own logger still assumes an older order).
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
LOGITS_CHUNK = 256  # positions per float64 log-softmax: 256 x a 152k vocabulary is 311 MB


class EngineUnavailable(PrunebenchError):
    """llama-cpp-python is not installed here, or does not load."""


class EngineError(PrunebenchError):
    """llama.cpp refused a file or failed a call."""


def load_llama_cpp() -> ModuleType:
    """The ``llama_cpp`` module, or one line saying how to install it."""
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as err:  # not installed, a dependency missing, its library broken
        raise EngineUnavailable(
            f"llama.cpp is not available ({first_line(err)}): "
            f"install it with `make install-engine` (or pip install llama-cpp-python=={VERSION})") from err
    return llama_cpp


def system_info() -> str:
    """llama.cpp's own line about the build: instruction sets compiled in, backends, OpenMP."""
    return load_llama_cpp().llama_print_system_info().decode(errors="replace").strip()


def package_version() -> str:
    return str(load_llama_cpp().__version__)


class EngineSettings(Strict):
    """What a loaded engine runs with: every setting that changes its numbers."""

    engine: str = "llama.cpp (llama-cpp-python), CPU"
    threads: int  # for single tokens and for batches alike
    n_ctx: int  # the context as llama.cpp created it (it may round the asked size up)
    n_batch: int  # tokens one call can take: a window or prompt is one batch, one graph
    mmap: bool = False
    flash_attention: bool = False
    kv_cache: str = "f16 (llama.cpp's default)"


@contextmanager
def _llama_log(lib: ModuleType) -> Iterator[list[str]]:
    """Collect llama.cpp's error lines (and their continuations) while inside; the previous logger after.

    llama-cpp-python with verbose off sends llama.cpp's output to /dev/null while it loads, so a file
    it refuses would surface only as "Failed to load model"; the reason is in these lines.
    """
    errors: list[str] = []
    last_level = [0]

    @lib.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        level = last_level[0] if level == GGML_LOG_LEVEL_CONT else level
        last_level[0] = level
        if level == GGML_LOG_LEVEL_ERROR:
            errors.append(text.decode(errors="replace"))

    previous, previous_data = lib.llama_log_callback(), ctypes.c_void_p()
    lib.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
    lib.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield errors
    finally:
        lib.llama_log_set(previous, previous_data)


def _one_line(messages: list[str]) -> str:
    lines = [line.strip() for line in "".join(messages).splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines))  # in order, each once


class LlamaCpp:
    """One GGUF in llama.cpp on the CPU, with a context of ``n_ctx`` tokens; close it (or use ``with``)."""

    def __init__(self, path: str | Path, threads: int, n_ctx: int) -> None:
        if threads < 1 or n_ctx < 2:
            raise PrunebenchError(f"llama.cpp needs threads >= 1 and a context of >= 2 tokens, got {threads}, {n_ctx}")
        self._lib = lib = load_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"no GGUF file at {path}")
        with _llama_log(lib) as errors:
            try:
                self._llm = lib.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                      n_threads_batch=threads, use_mmap=False, use_mlock=False, logits_all=False,
                                      flash_attn=False, n_gpu_layers=0, verbose=False)
            except (ValueError, RuntimeError) as err:  # llama-cpp-python's "failed to load / create context"
                raise EngineError(f"llama.cpp cannot load {path.name}: {_one_line(errors) or err}") from err
        if errors:  # complaints on the way to a model that loaded: shown, not kept from the user
            log.warning("llama.cpp, loading %s: %s", path.name, _one_line(errors))
        self._ctx = self._llm.ctx
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)
        self.capacity = n_ctx
        self.n_vocab = int(self._llm.n_vocab())
        self.settings = EngineSettings(threads=threads, n_ctx=int(self._llm.n_ctx()), n_batch=n_ctx)
        self._pos = 0

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_llm", None) is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the engine's primitives: a fresh KV cache, one batch, its logits

    def reset(self) -> None:
        """An empty KV cache: the next tokens start at position 0."""
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self._pos = 0

    def _decode(self, tokens: Sequence[int], all_logits: bool) -> None:
        """Append ``tokens`` to the sequence in one batch; logits of every position or of the last only."""
        n = len(tokens)
        if not 1 <= n <= self.capacity or self._pos + n > self.settings.n_ctx:
            raise EngineError(f"{n} tokens after {self._pos} do not fit a batch of {self.capacity} "
                              f"and a context of {self.settings.n_ctx}")
        batch = self._batch
        batch.n_tokens = n
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = self._pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits
        batch.logits[n - 1] = True
        code = self._lib.llama_decode(self._ctx, batch)
        if code != 0:
            raise EngineError(f"llama_decode returned {code} for {n} tokens at position {self._pos}")
        self._lib.llama_synchronize(self._ctx)  # ends llama.cpp's timing of this call here, not at the next read
        self._pos += n

    def _logits(self, rows: int) -> np.ndarray:
        """The float32 logits of the last batch's ``rows`` outputs, [rows, vocab] (a view into llama.cpp's buffer)."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(rows, self.n_vocab))

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))

    # ---- what prunebench asks of it

    def window_nll(self, window: Sequence[int], bos_id: int | None = None) -> tuple[float, int]:
        """Summed next-token NLL of one window and the tokens scored (``len(window) - 1``), as window_scores.

        With ``bos_id``, BOS is prepended as context and the same tokens are scored.
        """
        ids = ([int(bos_id)] if bos_id is not None else []) + [int(t) for t in window]
        first, last = (0 if bos_id is None else 1), len(ids) - 1
        if len(window) < 2:
            raise PrunebenchError(f"a window needs at least 2 tokens, got {len(window)}")
        self.reset()
        self._decode(ids, all_logits=True)
        logits, targets = self._logits(len(ids)), np.asarray(ids)
        parts = []
        for start in range(first, last, LOGITS_CHUNK):
            stop = min(start + LOGITS_CHUNK, last)
            z = logits[start:stop].astype(np.float64)
            peak = z.max(axis=1)
            log_norm = peak + np.log(np.exp(z - peak[:, None]).sum(axis=1))
            parts.append(float((log_norm - z[np.arange(stop - start), targets[start + 1:stop + 1]]).sum()))
        return math.fsum(parts), last - first

    def greedy(self, prompt: Sequence[int], n: int) -> list[int]:
        """``n`` tokens after ``prompt`` (fresh KV cache), each the argmax of the logits: no sampling, no early stop."""
        self.reset()
        self._decode([int(t) for t in prompt], all_logits=False)
        out: list[int] = []
        for step in range(n):
            out.append(int(np.argmax(self._last_logits())))  # the first maximum on a tie, as torch.argmax
            if step < n - 1:
                self._decode(out[-1:], all_logits=False)
        return out

    def _perf(self) -> Any:
        return self._lib.llama_perf_context(self._ctx)

    def prefill_seconds(self, tokens: Sequence[int]) -> float:
        """llama.cpp's time for ``tokens`` (>= 2) as one prompt batch in a fresh KV cache, last logits only."""
        if len(tokens) < 2:
            raise PrunebenchError("a prefill needs at least 2 tokens "
                                  "(llama.cpp counts a single token as a decode step)")
        self.reset()
        self._lib.llama_perf_context_reset(self._ctx)
        self._decode([int(t) for t in tokens], all_logits=False)
        perf = self._perf()
        if perf.n_p_eval != len(tokens):
            raise EngineError(f"llama.cpp counted {perf.n_p_eval} prompt tokens for {len(tokens)}")
        return perf.t_p_eval_ms / 1000.0

    def decode_seconds(self, prompt: Sequence[int], n: int) -> float:
        """llama.cpp's time for ``n`` greedy single-token steps after ``prompt`` (fresh KV cache; the prompt untimed).

        Step k feeds the k-th generated token, as the PyTorch latency metric's decode does: n forwards.
        """
        if n < 1:
            raise PrunebenchError(f"decode needs at least 1 token, got {n}")
        self.reset()
        self._decode([int(t) for t in prompt], all_logits=False)
        self._lib.llama_perf_context_reset(self._ctx)
        for _ in range(n):
            self._decode([int(np.argmax(self._last_logits()))], all_logits=False)
        perf = self._perf()
        if perf.n_eval != n:
            raise EngineError(f"llama.cpp counted {perf.n_eval} decode steps for {n}")
        return perf.t_eval_ms / 1000.0
