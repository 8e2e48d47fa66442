"""harness.stats against values worked out by hand here: Wilson and lm-eval's stderr from their formulas, the
exact McNemar and sign-flip p-values from binomial coefficients or brute-force enumeration in exact
fractions, bootstrap intervals whose replicates can only take a few known values, Holm and the ranking on
small hand examples; plus the properties a leaderboard relies on (identical rows never separated, large
differences always separated, reproducible for a seed) and errors on bad input."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from pydantic import ValidationError

from harness import stats
from harness.schema import Interval
from harness.stats import (
    RankedRow,
    holm,
    paired_permutation_test,
    perplexity_interval,
    proportion_interval,
    proportion_stderr,
    rank_by_paired_tests,
    ratio_interval,
)

Z95 = 1.959963984540054  # Phi^-1(0.975)


def normal_two_sided(z: float) -> float:
    """2 (1 - Phi(|z|)) via erfc, the large-n reference for the permutation test."""
    return math.erfc(abs(z) / math.sqrt(2))


def brute_force_sign_flip(d: list[Fraction]) -> Fraction:
    """Exact sign-flip p by itertools over every sign vector, in exact arithmetic (ties are real ties)."""
    observed = abs(sum(d))
    hits = sum(1 for signs in itertools.product((1, -1), repeat=len(d))
               if abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed)
    return Fraction(hits, 2 ** len(d))


# ---------------------------------------------------------------- perplexity_interval


def test_perplexity_interval_two_windows_is_the_range_of_per_window_perplexities():
    # Two windows: a resample is (1,1), (1,2), (2,1) or (2,2), each with probability 1/4 > 2.5%, so the 2.5%
    # and 97.5% quantiles of 2000 replicates are exactly the one-window perplexities exp(nll_i / targets_i).
    nll, targets = [20.0, 90.0], [10, 30]
    ci = perplexity_interval(nll, targets, level=0.95, resamples=2000, seed=0)
    assert ci.low == pytest.approx(math.exp(20.0 / 10), rel=1e-12)
    assert ci.high == pytest.approx(math.exp(90.0 / 30), rel=1e-12)
    assert ci.level == 0.95 and "2000 resamples" in ci.method and "seed 0" in ci.method


def test_perplexity_interval_contains_point_estimate_and_shrinks_with_more_windows():
    rng = np.random.default_rng(1)
    targets = rng.integers(200, 256, size=12)
    nll = targets * rng.normal(3.0, 0.3, size=12)  # per-token loss ~3 nats with window-to-window spread
    point = math.exp(nll.sum() / targets.sum())
    few = perplexity_interval(nll, targets, seed=0)
    many = perplexity_interval(np.tile(nll, 9), np.tile(targets, 9), seed=0)  # same spread, 9x the windows
    for ci in (few, many):
        assert ci.low < point < ci.high
    # The standard error of a ratio estimator scales as 1/sqrt(windows): about 3x narrower here.
    ratio = (few.high - few.low) / (many.high - many.low)
    assert 2.4 < ratio < 3.6


def test_perplexity_interval_is_reproducible_for_a_seed():
    nll, targets = [30.0, 28.0, 35.0, 31.0, 40.0], [10, 10, 11, 10, 12]
    first = perplexity_interval(nll, targets, seed=7)
    assert perplexity_interval(nll, targets, seed=7) == first
    assert perplexity_interval(nll, targets, seed=8) != first


def test_perplexity_interval_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        perplexity_interval([10.0], [5])  # one window: no honest interval
    with pytest.raises(ValueError, match="at least 2"):
        perplexity_interval([], [])
    with pytest.raises(ValueError, match="same length"):
        perplexity_interval([1.0, 2.0, 3.0], [1, 2])
    with pytest.raises(ValueError, match="level"):
        perplexity_interval([1.0, 2.0], [1, 2], level=1.0)
    with pytest.raises(ValueError, match="level"):
        perplexity_interval([1.0, 2.0], [1, 2], level=0.0)
    with pytest.raises(ValueError, match="at least one target"):
        perplexity_interval([1.0, 2.0], [1, 0])
    with pytest.raises(ValueError, match="integers"):
        perplexity_interval([1.0, 2.0], [1.5, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        perplexity_interval([1.0, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        perplexity_interval([-1.0, 2.0], [1, 2])
    with pytest.raises(ValueError, match="resamples"):
        perplexity_interval([1.0, 2.0], [1, 2], resamples=0)


# ---------------------------------------------------------------- proportions


def test_wilson_interval_for_7_of_20_from_its_formula():
    n, p, z2 = 20, 7 / 20, Z95 ** 2
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n ** 2))
    ci = proportion_interval(7, 20)
    assert ci.low == pytest.approx(center - half, rel=1e-12)
    assert ci.high == pytest.approx(center + half, rel=1e-12)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.1812, 0.5671)  # the tabulated Wilson interval
    assert ci.level == 0.95 and ci.method == "Wilson score"


def test_wilson_interval_at_the_boundaries_and_other_levels():
    # 0/n: low = 0 and high = z^2 / (n + z^2); n/n mirrors it.
    n, z2 = 10, Z95 ** 2
    zero, full = proportion_interval(0, n), proportion_interval(n, n)
    assert zero.low == 0.0 and zero.high == pytest.approx(z2 / (n + z2), rel=1e-12)
    assert full.high == 1.0 and full.low == pytest.approx(n / (n + z2), rel=1e-12)
    narrow, wide = proportion_interval(7, 20, level=0.5), proportion_interval(7, 20, level=0.99)
    assert wide.low < narrow.low < 0.35 < narrow.high < wide.high


def test_proportion_stderr_matches_lm_eval_sample_stderr():
    # lm-eval: sample stdev (n-1) of the 0/1 outcomes divided by sqrt(n).
    outcomes = [1] * 7 + [0] * 13
    assert proportion_stderr(7, 20) == pytest.approx(np.std(outcomes, ddof=1) / math.sqrt(20), rel=1e-12)
    assert proportion_stderr(7, 20) == pytest.approx(math.sqrt(0.35 * 0.65 / 19), rel=1e-12)
    assert proportion_stderr(0, 5) == 0.0


def test_proportion_bad_input():
    with pytest.raises(ValueError, match="n must be >= 1"):
        proportion_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        proportion_interval(21, 20)
    with pytest.raises(ValueError, match="successes"):
        proportion_interval(-1, 20)
    with pytest.raises(ValueError, match="level"):
        proportion_interval(7, 20, level=1.5)
    with pytest.raises(ValueError, match="n must be >= 2"):
        proportion_stderr(1, 1)


# ---------------------------------------------------------------- ratio_interval


def test_ratio_interval_hand_example():
    # Numerator constant 3; the denominator's resampled median is 1, 1.5 or 2 (probabilities 1/4, 1/2, 1/4),
    # so the ratio of medians is 3, 2 or 1.5 and the 95% percentile interval is [1.5, 3].
    ci = ratio_interval([3.0, 3.0, 3.0], [1.0, 2.0], resamples=2000, seed=0)
    assert (ci.low, ci.high) == (pytest.approx(1.5), pytest.approx(3.0))
    assert "ratio of medians" in ci.method


def test_ratio_interval_of_identical_samples_contains_one():
    timings = [10.2, 9.8, 10.5, 10.1, 9.9, 10.0, 10.3]
    ci = ratio_interval(timings, timings, seed=3)
    assert ci.low < 1.0 < ci.high
    constant = ratio_interval([5.0, 5.0], [5.0, 5.0])
    assert constant.low == constant.high == 1.0
    assert ratio_interval(timings, timings, seed=3) == ci  # reproducible for a seed


def test_ratio_interval_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        ratio_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        ratio_interval([1.0, 2.0], [])
    with pytest.raises(ValueError, match="positive"):
        ratio_interval([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="level"):
        ratio_interval([1.0, 2.0], [1.0, 2.0], level=-0.1)


# ---------------------------------------------------------------- paired_permutation_test


def test_sign_flip_identical_pair_is_never_separated():
    a = [3.1, 2.7, 4.0, 3.3]
    assert paired_permutation_test(a, a) == 1.0
    big = list(np.linspace(1.0, 2.0, 40))  # Monte Carlo branch too
    assert paired_permutation_test(big, big) == 1.0


def test_sign_flip_large_known_difference_is_exact():
    # 12 windows, each a_i = b_i + 1: only the all-plus and all-minus sign vectors reach |T| = 12.
    b = list(np.linspace(2.0, 4.0, 12))
    a = [x + 1.0 for x in b]
    assert paired_permutation_test(a, b) == 2 / 4096


def test_sign_flip_matches_brute_force_enumeration():
    a = [1.5, 0.25, 2.0, -0.5, 1.0, 0.75]
    b = [1.0, 0.5, 1.0, 0.0, 0.25, 1.0]
    d = [Fraction(x) - Fraction(y) for x, y in zip(a, b, strict=True)]  # exact: all dyadic
    assert paired_permutation_test(a, b) == float(brute_force_sign_flip(d))
    assert paired_permutation_test(b, a) == float(brute_force_sign_flip(d))  # two-sided: symmetric


def test_sign_flip_float_rounding_does_not_break_a_tie():
    # d = (0.1, 0.2, -0.1): T_obs = 0.2, and flipping the first and last also gives exactly 0.2; with the
    # two sums at +-0.4, 6 of 8 sign vectors are as extreme. In floats 0.1 + 0.2 - 0.1 and -0.1 + 0.2 + 0.1
    # round differently; the relative tolerance keeps them tied.
    d = [0.1, 0.2, -0.1]
    exact = brute_force_sign_flip([Fraction(str(x)) for x in d])
    assert exact == Fraction(6, 8)
    assert paired_permutation_test(d, [0.0] * 3) == 0.75
    # (0.1, 0.1, 0.1, 0.4): only +-all reach |T| = 0.7, but numpy's sum and the matrix product of the
    # all-plus signs round 0.7 differently, so without a tolerance the observed vector could miss itself.
    assert paired_permutation_test([0.1, 0.1, 0.1, 0.4], [0.0] * 4) == 2 / 16
    # T_obs = 0 exactly (floats: 5.6e-17): every sign vector is as extreme.
    assert paired_permutation_test([0.1, 0.2, -0.3], [0.0, 0.0, 0.0]) == 1.0


def test_sign_flip_monte_carlo_close_to_large_n_expectation():
    # n = 30 > 16: Monte Carlo. With d_i = +-1 (19 plus, 11 minus), T* = 2K - 30 with K ~ Bin(30, 1/2), so the
    # exact p = P(K >= 19) + P(K <= 11).
    d = [1.0] * 19 + [-1.0] * 11
    exact = 2 * sum(math.comb(30, k) for k in range(12)) / 2 ** 30
    p = paired_permutation_test(d, [0.0] * 30, resamples=20000, seed=0)
    mc_se = math.sqrt(exact * (1 - exact) / 20000)
    assert 0.0 < p <= 1.0
    assert abs(p - exact) < 4 * mc_se
    # Continuous differences: T* has mean 0 and variance sum d_i^2, so p ~ 2 (1 - Phi(T / sqrt(sum d^2))).
    d = 0.4 + np.sin(np.arange(30))  # a fixed, irregular vector
    expected = normal_two_sided(d.sum() / math.sqrt((d ** 2).sum()))
    p = paired_permutation_test(d, np.zeros(30), resamples=20000, seed=0)
    assert 0.0 < p <= 1.0
    assert p == pytest.approx(expected, abs=0.01)
    assert paired_permutation_test(d, np.zeros(30), seed=0) == p  # reproducible for a seed


def test_sign_flip_monte_carlo_p_is_never_zero():
    b = list(np.linspace(0.0, 1.0, 30))
    a = [x + 1.0 for x in b]
    assert paired_permutation_test(a, b, resamples=999, seed=0) == 1 / 1000  # (0 + 1) / (999 + 1)


def test_sign_flip_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        paired_permutation_test([], [])
    with pytest.raises(ValueError, match="same length"):
        paired_permutation_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_permutation_test([1.0, float("inf")], [1.0, 2.0])
    with pytest.raises(ValueError, match="resamples"):
        paired_permutation_test([1.0], [2.0], resamples=0)


# ---------------------------------------------------------------- holm


def test_holm_hand_example():
    # Sorted: 0.005 <= 0.05/4 reject; 0.01 <= 0.05/3 reject; 0.03 > 0.05/2 stop: 0.03 and 0.04 kept.
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # Step-down stops at the first failure: 0.04 <= 0.05 alone but is not rejected after 0.03 fails.
    assert holm([0.04, 0.001, 0.03]) == [False, True, False]
    assert holm([0.04], alpha=0.05) == [True]
    assert holm([0.02, 0.02]) == [True, True]  # 0.02 <= 0.025, then 0.02 <= 0.05
    assert holm([0.03, 0.03]) == [False, False]
    assert holm([1.0, 1.0, 1.0]) == [False, False, False]


def test_holm_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        holm([])
    with pytest.raises(ValueError, match="alpha"):
        holm([0.01], alpha=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.01, 1.5])
    with pytest.raises(ValueError, match="non-finite"):
        holm([float("nan")])


# ---------------------------------------------------------------- rank_by_paired_tests


def table(p: dict[tuple[str, str], float]):
    """A p_value callable from a symmetric table; it records the comparisons it was asked for."""
    calls: list[tuple[str, str]] = []

    def p_value(x: str, y: str) -> float:
        calls.append((x, y))
        return p[(x, y)] if (x, y) in p else p[(y, x)]

    return p_value, calls


def test_rank_all_equal_rows_share_rank_one():
    rows = rank_by_paired_tests(["a", "b", "c"], lambda x, y: 1.0)
    assert [(r.rank, r.shared, r.leader) for r in rows] == [(1, True, "a")] * 3
    assert [r.p_value for r in rows] == [None, 1.0, 1.0]


def test_rank_three_separated_rows():
    p_value, calls = table({("a", "b"): 1e-6, ("a", "c"): 1e-9, ("b", "c"): 1e-5})
    rows = rank_by_paired_tests(["a", "b", "c"], p_value)
    assert rows == [RankedRow("a", 1, False, "a", None), RankedRow("b", 2, False, "b", None),
                    RankedRow("c", 3, False, "c", None)]
    assert calls == [("a", "b"), ("a", "c"), ("b", "c")]  # (leader, other)


def test_rank_tie_group_then_separated_row():
    p_value, _ = table({("a", "b"): 0.5, ("a", "c"): 0.001, ("b", "c"): 0.001})
    rows = rank_by_paired_tests(["a", "b", "c"], p_value)
    assert rows == [RankedRow("a", 1, True, "a", None), RankedRow("b", 1, True, "a", 0.5),
                    RankedRow("c", 3, False, "c", None)]


def test_rank_leader_rank_counts_rows_already_ranked():
    # a separated from all; b and c tie; d separated from b: 1, 2=, 2=, 4.
    p_value, _ = table({("a", "b"): 1e-4, ("a", "c"): 1e-4, ("a", "d"): 1e-4,
                        ("b", "c"): 0.3, ("b", "d"): 0.001})
    rows = rank_by_paired_tests(["a", "b", "c", "d"], p_value)
    assert [(r.key, r.rank, r.shared, r.leader) for r in rows] == [
        ("a", 1, False, "a"), ("b", 2, True, "b"), ("c", 2, True, "b"), ("d", 4, False, "d")]


def test_rank_uses_holm_over_the_leaders_comparisons():
    # Each 0.03 < 0.05 alone, but Holm over two comparisons needs the smallest <= 0.025: nothing separated.
    p_value, _ = table({("a", "b"): 0.03, ("a", "c"): 0.03, ("b", "c"): 0.03})
    assert [r.rank for r in rank_by_paired_tests(["a", "b", "c"], p_value)] == [1, 1, 1]
    assert [r.rank for r in rank_by_paired_tests(["a", "b", "c"], p_value, alpha=0.1)] == [1, 2, 3]


def test_rank_with_the_paired_tests_end_to_end():
    losses = np.linspace(2.0, 3.0, 12)
    rows = {"dense": losses, "same": losses.copy(), "worse": losses + 1.0}
    ranked = rank_by_paired_tests(["dense", "same", "worse"],
                                  lambda x, y: paired_permutation_test(rows[x], rows[y]))
    assert [(r.key, r.rank, r.shared) for r in ranked] == [("dense", 1, True), ("same", 1, True),
                                                            ("worse", 3, False)]
    assert ranked[1].p_value == 1.0


def test_rank_bad_input():
    with pytest.raises(ValueError, match="empty"):
        rank_by_paired_tests([], lambda x, y: 1.0)
    with pytest.raises(ValueError, match="duplicate"):
        rank_by_paired_tests(["a", "a"], lambda x, y: 1.0)
    with pytest.raises(ValueError, match="alpha"):
        rank_by_paired_tests(["a", "b"], lambda x, y: 1.0, alpha=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rank_by_paired_tests(["a", "b"], lambda x, y: 2.0)
    assert rank_by_paired_tests(["only"], lambda x, y: 1.0) == [RankedRow("only", 1, False, "only", None)]


def test_blocked_resampling_gives_the_same_hand_values(monkeypatch):
    # Resampling runs in blocks so a large sample never allocates resamples x size at once; tiny blocks
    # (many per call) must give the same hand-checked values.
    monkeypatch.setattr(stats, "_CHUNK_ENTRIES", 7)
    ci = perplexity_interval([20.0, 90.0], [10, 30], resamples=2000, seed=0)
    assert (ci.low, ci.high) == (pytest.approx(math.exp(2.0)), pytest.approx(math.exp(3.0)))
    ci = ratio_interval([3.0, 3.0, 3.0], [1.0, 2.0], resamples=2000, seed=0)
    assert (ci.low, ci.high) == (pytest.approx(1.5), pytest.approx(3.0))
    b = list(np.linspace(0.0, 1.0, 30))
    assert paired_permutation_test([x + 1.0 for x in b], b, resamples=999, seed=0) == 1 / 1000
    d = [1.0] * 19 + [-1.0] * 11
    exact = 2 * sum(math.comb(30, k) for k in range(12)) / 2 ** 30
    assert paired_permutation_test(d, [0.0] * 30, resamples=5000) == pytest.approx(exact, abs=0.03)


def test_interval_is_a_frozen_value():
    ci = Interval(low=0.1, high=0.2, level=0.95, method="Wilson score")
    with pytest.raises(ValidationError, match="frozen"):
        ci.low = 0.0  # type: ignore[misc]
