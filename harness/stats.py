"""Uncertainty for leaderboard numbers and the paired tests that decide which rows differ.

Intervals: a window bootstrap for perplexity (a ratio estimator, so whole windows are resampled), the
Wilson score interval for accuracies, and an independent two-sample bootstrap for speed-ups (a ratio of
medians). Tests: the paired sign-flip test (on per-window losses, and on per-example correctness weighted
to a difference of mean accuracies), Holm's step-down correction, and a ranking that shares a rank
between rows that the paired test does not separate. Pure functions of numpy arrays; every random draw comes from
``numpy.random.default_rng(seed)`` with the caller's seed, so every number is reproducible.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from harness.schema import Interval

EXACT_PERMUTATION_MAX_N = 16  # 2^16 sign vectors x 16 pairs: 1M entries, enumerated at once
_CHUNK_ENTRIES = 1 << 22  # bound on one resampling block (rows x sample size), ~32 MB of int64
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class RankedRow:
    """A row's rank as supported by paired tests; `shared` when another row has the same rank ("1=")."""

    key: str
    rank: int
    shared: bool
    leader: str
    p_value: float | None


# ---------------------------------------------------------------- validation helpers


def _check_level(level: float, name: str = "level") -> float:
    """A probability strictly inside (0, 1): a confidence level or a significance level."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {level}")
    return level


def _check_resamples(resamples: int) -> int:
    resamples = operator.index(resamples)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return resamples


def _finite_1d(values: Sequence[float], name: str, min_len: int = 1) -> np.ndarray:
    """A 1-D float array of finite values with at least `min_len` entries."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} value(s), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains a non-finite value")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same length, got {a.size} and {b.size}")


def _counts(successes: int, n: int, min_n: int) -> tuple[int, int]:
    successes, n = operator.index(successes), operator.index(n)
    if n < min_n:
        raise ValueError(f"n must be >= {min_n}, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n] = [0, {n}], got {successes}")
    return successes, n


# ---------------------------------------------------------------- bootstrap helpers


def _index_blocks(rng: np.random.Generator, size: int, resamples: int) -> Iterator[np.ndarray]:
    """Bootstrap index matrices (rows of `size` draws with replacement), `resamples` rows in all, in blocks
    small enough that a large sample never allocates resamples x size at once."""
    rows = max(1, _CHUNK_ENTRIES // size)
    for start in range(0, resamples, rows):
        yield rng.integers(0, size, size=(min(rows, resamples - start), size))


def _bootstrap_medians(rng: np.random.Generator, sample: np.ndarray, resamples: int) -> np.ndarray:
    """Medians of `resamples` bootstrap resamples of one sample."""
    blocks = _index_blocks(rng, sample.size, resamples)
    return np.concatenate([np.median(sample[idx], axis=1) for idx in blocks])


def _percentile_interval(statistics: np.ndarray, level: float, method: str) -> Interval:
    """The central `level` percentile interval of bootstrap replicates of a statistic."""
    low, high = np.quantile(statistics, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(low=float(low), high=float(high), level=level, method=method)


# ---------------------------------------------------------------- intervals


def perplexity_interval(window_nll: Sequence[float], window_targets: Sequence[int], level: float = 0.95,
                        resamples: int = 2000, seed: int = 0) -> Interval:
    """CI of the corpus perplexity exp(sum nll / sum targets) by a percentile bootstrap over windows.

    `window_nll[i]` is the total negative log-likelihood (nats) of window i and `window_targets[i]` the number
    of tokens it predicts. Tokens within a window are dependent, so whole windows are resampled, and the
    ratio estimator (not a mean of per-window perplexities) is recomputed for every resample. A single window
    gives no information about spread, so fewer than 2 windows is an error rather than a degenerate interval.
    """
    level, resamples = _check_level(level), _check_resamples(resamples)
    nll = _finite_1d(window_nll, "window_nll", min_len=2)
    targets = np.asarray(window_targets)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError("window_targets must be a one-dimensional sequence of integers")
    _same_length(nll, targets, "window_nll and window_targets")
    if np.any(targets < 1):
        raise ValueError("every window must predict at least one target token")
    if np.any(nll < 0):
        raise ValueError("window_nll must be non-negative (total negative log-likelihood per window)")
    targets = targets.astype(np.float64)
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([np.exp(nll[idx].sum(axis=1) / targets[idx].sum(axis=1))
                                 for idx in _index_blocks(rng, nll.size, resamples)])
    method = f"bootstrap-percentile over windows ({resamples} resamples, seed {seed})"
    return _percentile_interval(replicates, level, method)


def proportion_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion successes/n.

    It inverts the score test of H0 p = p0, so unlike the Wald interval it stays inside [0, 1] and keeps
    close to nominal coverage at small n and for proportions near 0 or 1.
    """
    level = _check_level(level)
    successes, n = _counts(successes, n, min_n=1)
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    p, z2 = successes / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0/n (n/n) the lower (upper) end is exactly 0 (1); set it so rounding does not leave 3e-17.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return Interval(low=low, high=high, level=level, method="Wilson score")


def proportion_stderr(successes: int, n: int) -> float:
    """Sample standard error of a mean of 0/1 outcomes, sqrt(p(1-p)/(n-1)).

    This is what lm-evaluation-harness reports as acc_stderr (sample variance with n-1, divided by n), so
    numbers computed here match its tables. Needs n >= 2.
    """
    successes, n = _counts(successes, n, min_n=2)
    p = successes / n
    return math.sqrt(p * (1 - p) / (n - 1))


def ratio_interval(numerator_samples: Sequence[float], denominator_samples: Sequence[float],
                   level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """CI of median(numerator) / median(denominator) for two independent samples of repeats.

    Meant for speed-ups: repeated timings of the dense model and of the pruned one are not paired, so each
    sample is bootstrapped on its own and the percentile interval of the ratio of the resampled medians is
    returned. Each sample needs at least 2 values; the denominator's must be positive (timings, throughputs)
    so that every resampled median is a valid divisor.
    """
    level, resamples = _check_level(level), _check_resamples(resamples)
    num = _finite_1d(numerator_samples, "numerator_samples", min_len=2)
    den = _finite_1d(denominator_samples, "denominator_samples", min_len=2)
    if np.any(den <= 0):
        raise ValueError("denominator_samples must be positive")
    rng = np.random.default_rng(seed)
    num_medians = _bootstrap_medians(rng, num, resamples)
    den_medians = _bootstrap_medians(rng, den, resamples)
    method = (f"bootstrap-percentile ratio of medians, independent samples "
              f"({resamples} resamples, seed {seed})")
    return _percentile_interval(num_medians / den_medians, level, method)


# ---------------------------------------------------------------- paired tests


def _sign_matrix(n: int) -> np.ndarray:
    """All 2^n vectors of +-1 signs, one per row (row k holds the bits of k)."""
    bits = (np.arange(1 << n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)) & 1
    return (2 * bits - 1).astype(np.float64)


def paired_permutation_test(a: Sequence[float], b: Sequence[float], resamples: int = 20000,
                            seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test.

    H0: within each pair the two values are exchangeable, so each difference d_i = a_i - b_i is as likely to
    have either sign. Statistic T = sum d_i; p = P(|T*| >= |T_obs|) over sign vectors. For n <= 16 all 2^n
    sign vectors are enumerated (exact p); otherwise `resamples` random sign vectors are drawn and
    p = (count + 1) / (resamples + 1), which is a valid p-value (never 0). A resampled statistic counts as
    extreme when |T*| >= |T_obs| - 1e-12 * sum|d_i|, so float rounding of a sum never breaks an exact tie.
    All differences zero gives p = 1.0.
    """
    resamples = _check_resamples(resamples)
    x, y = _finite_1d(a, "a"), _finite_1d(b, "b")
    _same_length(x, y, "a and b")
    d = x - y
    scale = float(np.abs(d).sum())
    if scale == 0.0:
        return 1.0
    threshold = abs(float(d.sum())) - _TIE_RTOL * scale
    if d.size <= EXACT_PERMUTATION_MAX_N:
        extreme = np.count_nonzero(np.abs(_sign_matrix(d.size) @ d) >= threshold)
        return float(extreme) / float(1 << d.size)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // d.size)
    extreme = 0
    for start in range(0, resamples, rows):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(rows, resamples - start), d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return (extreme + 1) / (resamples + 1)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm-Bonferroni step-down: which hypotheses are rejected, in the input order.

    Sorted ascending, the k-th smallest p (k = 0, 1, ...) is rejected while p_(k) <= alpha / (m - k); the
    first that fails stops the procedure and it and all larger ones are kept. Controls the family-wise error
    rate at alpha under any dependence between the tests.
    """
    alpha = _check_level(alpha, "alpha")
    p = _finite_1d(p_values, "p_values")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p_values must be in [0, 1]")
    m = p.size
    rejected = [False] * m
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - k):
            break
        rejected[int(i)] = True
    return rejected


def rank_by_paired_tests(order: Sequence[str], p_value: Callable[[str, str], float],
                         alpha: float = 0.05) -> list[RankedRow]:
    """Ranks that a paired test supports, by step-down grouping.

    `order` lists the rows best first by point estimate; p_value(leader, other) is a paired test's two-sided
    p-value. The best remaining row leads a group and is compared with every other remaining row (Holm over
    those comparisons, at alpha). Rows not separated from the leader join its group and share its rank,
    1 + the number of rows already ranked (so a tie of two ranks "1=, 1=, 3"). The separated rows remain and
    the step repeats. Returns one RankedRow per key, in the input order.
    """
    alpha = _check_level(alpha, "alpha")
    keys = list(order)
    if not keys:
        raise ValueError("order is empty")
    if len(set(keys)) != len(keys):
        raise ValueError("order contains a duplicate key")
    rows: dict[str, RankedRow] = {}
    remaining = keys
    while remaining:
        leader, others = remaining[0], remaining[1:]
        p = [float(p_value(leader, other)) for other in others]
        separated = holm(p, alpha) if others else []
        group = [(other, pv) for other, pv, sep in zip(others, p, separated, strict=True) if not sep]
        rank, shared = len(rows) + 1, bool(group)
        rows[leader] = RankedRow(key=leader, rank=rank, shared=shared, leader=leader, p_value=None)
        for other, pv in group:
            rows[other] = RankedRow(key=other, rank=rank, shared=True, leader=leader, p_value=pv)
        remaining = [other for other, sep in zip(others, separated, strict=True) if sep]
    return [rows[key] for key in keys]
