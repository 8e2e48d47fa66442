"""Perplexity with the paper's protocol (docs/protocol.md, "Perplexity"), with a confidence interval.

Join the documents with "\\n\\n", tokenize once without special tokens, cut non-overlapping windows of
``seq_len`` tokens (the remainder is dropped), batch 1, sum the next-token cross entropy over every
window, divide by the number of predicted tokens, exp. Models that need BOS (Gemma) get it prepended to
every window as context only, so the same tokens are scored with or without it.

Each window's summed NLL is kept in the result: it gives the interval (a bootstrap over windows) and
lets the leaderboard compare two models window by window (a paired test), since every method is
scored on the same windows.

``numerics`` (docs/reference-harness.md): ``exact`` (default) scores float32 logits and sums in float64;
``reference`` computes as the 2SSP authors' harness, in the model's dtype: one cross entropy per window
over logits left in that dtype, the running mean of window losses and its exp in that dtype too
(methods.nll.ReferenceMean). The reported value is then that number; each window's NLL is its rounded
mean loss times its tokens, which is what the interval and the paired tests use.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from harness.data.sources import Corpus
from harness.data.tokens import eval_windows, tokenize
from harness.errors import PrunebenchError
from harness.metrics.base import (
    Check,
    HubNeeds,
    MeasureContext,
    Metric,
    MetricConfig,
    Panel,
    mean_spread,
    over_seeds,
)
from harness.models import tokenizer_kind
from harness.schema import Interval, Scalar, Strict, as_scalars
from harness.stats import paired_permutation_test, perplexity_interval
from methods.arch import ModelAdapter
from methods.base import Numerics
from methods.nll import ReferenceMean, reference_window_loss, summed_nll

BosPolicy = Literal["auto", "always", "never"]
BOOTSTRAP_RESAMPLES = 2000


class PerplexityConfig(MetricConfig):
    datasets: list[str]
    seq_len: int = Field(2048, ge=2)
    max_windows: int | None = Field(None, ge=1)
    bos: BosPolicy = "auto"


REDUCTION = {
    "exact": "exp(sum of token NLL / targets); float32 logits, float64 sums",
    "reference": "the authors' loop: per-window mean cross entropy of logits in the model dtype, running "
                 "token-weighted mean and exp in that dtype",
}


class PerplexityProtocol(Strict):
    """How a perplexity was measured; ``data`` describes the text (source-specific, scalars only)."""

    source: str
    role: str
    data: dict[str, Scalar]
    join: str = "\n\n"
    tokenized: str = "once, without special tokens"
    corpus_tokens: int
    seq_len: int
    stride: int
    windows: int
    max_windows: int | None
    batch_size: int = 1
    bos: str
    targets: int
    reduction: str = "exp(sum of token NLL / targets)"
    numerics: Numerics = "exact"
    tokenizer: str = "fast"
    interval: str
    dtype: str | None = None  # of the logits the reference numerics round in (None: recorded before it was kept)

    def text_id(self) -> str:
        """What identifies the scored text: a revision or a content digest."""
        return str(self.data.get("revision") or self.data.get("text_sha256") or self.data.get("sha256") or "")


class PerplexityScore(Strict):
    value: float
    interval: Interval
    seconds: float
    window_nll: list[float]  # summed NLL of each window, in order
    window_targets: list[int]  # tokens scored in each window
    protocol: PerplexityProtocol

    def window_mean_nll(self) -> list[float]:
        return [n / t for n, t in zip(self.window_nll, self.window_targets, strict=True)]


def use_bos(adapter: ModelAdapter, tokenizer: Any, policy: BosPolicy) -> bool:
    if policy not in ("auto", "always", "never"):
        raise PrunebenchError(f"unknown BOS policy '{policy}'; choose auto, always or never")
    wanted = adapter.needs_bos if policy == "auto" else policy == "always"
    if wanted and tokenizer.bos_token_id is None:
        raise PrunebenchError("BOS asked for, but the tokenizer has no BOS token")
    return wanted


@torch.inference_mode()
def window_scores(
    adapter: ModelAdapter,
    windows: torch.Tensor,
    bos_id: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
    numerics: Numerics = "exact",
) -> tuple[list[float], list[int], float]:
    """Summed next-token NLL of each window [n, seq_len] (batch 1 each), the tokens scored in each, and the
    perplexity over all of them as ``numerics`` computes it.

    With ``bos_id``, BOS is prepended to each window as context and the same tokens are scored.
    """
    device = adapter.embedding().weight.device
    prefix = torch.tensor([[bos_id]]) if bos_id is not None else None
    first = 0 if prefix is None else 1
    nll, targets = [], []
    running = ReferenceMean()
    for n, window in enumerate(windows, 1):
        ids = window[None] if prefix is None else torch.cat([prefix, window[None]], dim=1)
        ids = ids.to(device)
        hidden = adapter.model.model(input_ids=ids, use_cache=False).last_hidden_state
        if numerics == "reference":
            loss, t = reference_window_loss(adapter, hidden, ids, first), ids.shape[1] - 1 - first
            running.add(loss, t)
            s = float(loss) * t
        else:
            s, t = summed_nll(adapter, hidden, ids, first=first)
        nll.append(float(s))
        targets.append(int(t))
        if on_window:
            on_window(n, len(windows))
    value = running.perplexity() if numerics == "reference" else math.exp(math.fsum(nll) / sum(targets))
    return nll, targets, value


def score_windows(adapter: ModelAdapter, windows: torch.Tensor, bos_id: int | None = None,
                  on_window: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Summed NLL over all windows and the number of scored tokens (exact numerics)."""
    nll, targets, _ = window_scores(adapter, windows, bos_id, on_window)
    return math.fsum(nll), sum(targets)


def perplexity(
    adapter: ModelAdapter,
    tokenizer: Any,
    corpus: Corpus,
    seq_len: int = 2048,
    max_windows: int | None = None,
    bos: BosPolicy = "auto",
    on_window: Callable[[int, int], None] | None = None,
    seed: int = 0,
    numerics: Numerics = "exact",
) -> PerplexityScore:
    """Perplexity of ``adapter.model`` on ``corpus`` with its interval; ``on_window(done, total)`` reports progress."""
    with_bos = use_bos(adapter, tokenizer, bos)
    tokens = tokenize(tokenizer, corpus)
    windows = eval_windows(tokens, seq_len, max_windows)
    start = time.perf_counter()
    nll, targets, value = window_scores(adapter, windows, tokenizer.bos_token_id if with_bos else None, on_window,
                                        numerics)
    seconds = time.perf_counter() - start
    interval = _interval(nll, targets, seed)
    protocol = PerplexityProtocol(
        source=corpus.source, role=corpus.role, data=as_scalars(corpus.protocol, set(PerplexityProtocol.model_fields)),
        corpus_tokens=int(tokens.numel()),
        seq_len=seq_len, stride=seq_len, windows=len(windows), max_windows=max_windows,
        bos="prepended to every window, context only" if with_bos else "none", targets=sum(targets),
        reduction=REDUCTION[numerics], numerics=numerics, tokenizer=tokenizer_kind(tokenizer),
        interval=interval.method, dtype=str(adapter.lm_head().weight.dtype).removeprefix("torch."),
    )
    return PerplexityScore(value=value, interval=interval, seconds=seconds, window_nll=nll, window_targets=targets,
                           protocol=protocol)


def _interval(nll: list[float], targets: list[int], seed: int) -> Interval:
    if len(nll) < 2:  # one window has no spread to resample: say so instead of a zero-width interval
        value = math.exp(nll[0] / targets[0])
        return Interval(low=value, high=value, level=0.95, method="none (a single window has no spread)")
    return perplexity_interval(nll, targets, level=0.95, resamples=BOOTSTRAP_RESAMPLES, seed=seed)


# A value recorded with the reference numerics but no dtype can be checked only this closely against its windows:
# half-precision rounding of the window losses, their running mean and exp moves it by ~1.5 % on the default model.
UNKNOWN_DTYPE_RTOL = 0.05


def recomputed_value(score: PerplexityScore) -> float | None:
    """The perplexity its windows give, computed as its protocol says (None: not recomputable exactly)."""
    p = score.protocol
    if p.numerics == "exact":
        return math.exp(math.fsum(score.window_nll) / sum(score.window_targets))
    dtype = getattr(torch, p.dtype or "", None)
    if not isinstance(dtype, torch.dtype):
        return None
    running = ReferenceMean()
    for nll, targets in zip(score.window_nll, score.window_targets, strict=True):
        running.add(torch.tensor(nll / targets, dtype=dtype), targets)
    return running.perplexity()


def inconsistency(score: PerplexityScore) -> str | None:
    """How a score disagrees with its own windows: its value, its scored tokens or its interval."""
    if len(score.window_nll) != len(score.window_targets) or len(score.window_nll) != score.protocol.windows:
        return f"{len(score.window_nll)} window NLLs for {score.protocol.windows} windows"
    if sum(score.window_targets) != score.protocol.targets:
        return f"windows score {sum(score.window_targets)} tokens, the protocol says {score.protocol.targets}"
    expected = recomputed_value(score)
    if expected is None:  # reference numerics of an unknown dtype: as close as its rounding allows
        plain = math.exp(math.fsum(score.window_nll) / sum(score.window_targets))
        if abs(score.value - plain) > UNKNOWN_DTYPE_RTOL * plain:
            return f"value {score.value:.6g} is not what its windows give (about {plain:.6g})"
    elif not math.isclose(score.value, expected, rel_tol=1e-9):
        return f"value {score.value:.6g} is not what its windows give ({expected:.6g})"
    resampled = re.fullmatch(r"bootstrap-percentile over windows \((\d+) resamples, seed (-?\d+)\)",
                             score.interval.method)
    if resampled:
        again = perplexity_interval(score.window_nll, score.window_targets, level=score.interval.level,
                                    resamples=int(resampled[1]), seed=int(resampled[2]))
        if not (math.isclose(again.low, score.interval.low, rel_tol=1e-9)
                and math.isclose(again.high, score.interval.high, rel_tol=1e-9)):
            return (f"interval [{score.interval.low:.6g}, {score.interval.high:.6g}] is not what its windows give "
                    f"([{again.low:.6g}, {again.high:.6g}])")
    return None


def windows_comparable(a: PerplexityScore, b: PerplexityScore) -> bool:
    """Two scores were computed on the same windows of the same text, in the same way, so they can be paired."""
    pa, pb = a.protocol, b.protocol
    return ((pa.text_id(), pa.seq_len, pa.bos, pa.numerics, pa.tokenizer, a.window_targets)
            == (pb.text_id(), pb.seq_len, pb.bos, pb.numerics, pb.tokenizer, b.window_targets))


def paired_p_value(a: list[PerplexityScore], b: list[PerplexityScore]) -> float | None:
    """Sign-flip test on the per-window mean NLL of two rows (each row's seeds averaged per window)."""
    if not a or not b or not all(windows_comparable(a[0], s) for s in a[1:] + b):
        return None
    return paired_permutation_test(_seed_mean(a), _seed_mean(b))


def _seed_mean(scores: list[PerplexityScore]) -> list[float]:
    per_window = [s.window_mean_nll() for s in scores]
    return [math.fsum(values) / len(values) for values in zip(*per_window, strict=True)]


Scores = dict[str, PerplexityScore]


class PerplexityMetric(Metric[PerplexityConfig, Scores]):
    name = "perplexity"
    column_order = 0
    short_name = "PPL"
    tolerance, tolerance_kind = 1e-3, "relative"  # on each dataset's perplexity (docs/uncertainty.md)
    order_by = "perplexity on the first dataset"
    rank_by = "perplexity"
    paired_on = "the same perplexity windows (sign-flip permutation test on the per-window mean NLL)"
    interval_note = "perplexity by bootstrap over windows"
    config_type = PerplexityConfig
    result_type = Scores

    def default_config(self, profile: str) -> PerplexityConfig:
        if profile == "paper":
            return PerplexityConfig(datasets=["wikitext2", "c4", "fineweb-edu"], seq_len=2048)
        # cpu-quick: 256-token windows of the offline Wikipedia evaluation articles; enough of them
        # that the paired test separates the methods of the default leaderboard (see docs/protocol.md).
        return PerplexityConfig(datasets=["enwiki-sample"], seq_len=256, max_windows=40)

    def validate(self, config: PerplexityConfig) -> None:
        from harness.data.sources import validate_source

        if config.enabled and not config.datasets:
            raise PrunebenchError("perplexity is enabled but names no dataset")
        for dataset in config.datasets:
            validate_source(dataset)

    def hub_needs(self, config: PerplexityConfig) -> HubNeeds:
        from harness.data.sources import hub_source

        return HubNeeds(corpora=tuple(d for d in config.datasets if hub_source(d))) if config.enabled else HubNeeds()

    def evaluation_texts(self, config: PerplexityConfig) -> tuple[str, ...]:
        return tuple(config.datasets) if config.enabled else ()

    def positions(self, config: PerplexityConfig) -> int:
        return config.seq_len + (config.bos == "always")  # a window, and a BOS asked for before it

    def describe(self, config: PerplexityConfig) -> str:
        if not config.enabled:
            return "perplexity: off"
        return (f"perplexity: {', '.join(config.datasets)}, windows of {config.seq_len} tokens, "
                f"max windows {config.max_windows or 'all'}, BOS {config.bos}; 95 % interval by bootstrap over windows")

    def measure(self, config: PerplexityConfig, ctx: MeasureContext, before: Any) -> Scores:
        import logging

        from harness.data.sources import load_corpus

        log = logging.getLogger(__name__)
        scores: Scores = {}
        for dataset in config.datasets:
            log.info("perplexity on %s", dataset)
            score = perplexity(ctx.adapter, ctx.corpus_tokenizer, load_corpus(dataset, "evaluation"), config.seq_len,
                               config.max_windows, config.bos, seed=ctx.seed, numerics=ctx.numerics)
            log.info("perplexity on %s: %.4f [%.4f, %.4f]", dataset, score.value, score.interval.low,
                     score.interval.high)
            scores[dataset] = score
        return scores

    def protocol_lines(self, result: Scores) -> list[str]:
        return [f"- perplexity `{name}` ({p.protocol.role} part, {p.protocol.text_id()[:12]}): {p.protocol.windows} "
                f"windows x {p.protocol.seq_len} tokens, {p.protocol.targets} scored tokens of "
                f"{p.protocol.corpus_tokens} ({p.protocol.tokenizer} tokenizer), BOS {p.protocol.bos}, numerics "
                f"{p.protocol.numerics}; interval: {p.interval.method}" for name, p in result.items()]

    def csv(self, result: Scores) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for name, p in result.items():
            out.update({f"ppl_{name}": p.value, f"ppl_{name}_low": p.interval.low, f"ppl_{name}_high": p.interval.high,
                        f"ppl_{name}_tokens": p.protocol.targets})
        return out

    def headers(self, sample: Scores) -> list[str]:
        return [f"PPL {name} [95 % CI]" for name in sample]

    def cells(self, seeds: list[Scores], dense: list[Scores] | None) -> list[str]:
        names = list(seeds[0])
        return [over_seeds([s[n].value for s in seeds if n in s], [s[n].interval for s in seeds if n in s])
                if all(n in s for s in seeds) else "-" for n in names]

    def data_identity(self, result: Scores) -> dict[str, Any]:
        return {name: (p.protocol.text_id(), p.protocol.targets) for name, p in result.items()}

    def panel(self, sample: Scores) -> Panel | None:
        if not sample:
            return None
        dataset = next(iter(sample))

        def value(scores: Scores) -> tuple[float, float, float] | None:
            p = scores.get(dataset)
            return (p.value, p.interval.low, p.interval.high) if p else None

        return Panel(value, f"perplexity ({dataset}, log scale)", "perplexity vs sparsity (95 % intervals)", log=True)

    def rank_basis(self, sample: Scores) -> str | None:
        return f"perplexity on {next(iter(sample))}" if sample else None

    def rank_value(self, seeds: list[Scores]) -> float | None:
        name = next(iter(seeds[0]), None)
        values = [s[name].value for s in seeds if name in s]
        return mean_spread(values)[0] if name and len(values) == len(seeds) else None

    def paired_p(self, a: list[Scores], b: list[Scores]) -> float | None:
        name = next(iter(a[0]), None)
        if name is None or not all(name in s for s in a + b):
            return None
        return paired_p_value([s[name] for s in a], [s[name] for s in b])

    def inconsistency(self, result: Scores) -> str | None:
        for name, score in result.items():
            problem = inconsistency(score)
            if problem:
                return f"{name}: {problem}"
        return None

    def compare(self, old: Scores, new: Scores, tolerance: float | None) -> list[Check]:
        checks = []
        for name, score in old.items():
            if name not in new:
                checks.append(Check(f"perplexity.{name}", score.value, None, "", "present", False))
                continue
            a, b = score.value, new[name].value
            rel = abs(b - a) / abs(a) if a else abs(b - a)
            checks.append(Check(f"perplexity.{name}", a, b, f"{rel:.2e} rel", f"<= {tolerance:g} rel",
                                rel <= tolerance))
        return checks
