"""Empirical-Bayes shrinkage of the cells' effects (estimation/shrinkage.py), checked by
simulation: a day of many (cell, service) effects, most of them null, measured with
known noise, drawn again and again."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from cost_attribution.attribution.stats_inference import benjamini_hochberg
from cost_attribution.estimation import projection, shrinkage

# A day like the demo's: a few real effects (ramps, a new dependency, a savings test and
# its small downstream move) among many services the cells do not touch.
TRUTH = np.concatenate([[0.40, 0.40, 7.5, 15.0, 0.80, -0.30, -0.047, 0.33, 0.50, 0.40], np.zeros(70)])
SE = np.where(TRUTH > 1, 2.0, 0.04)


def _draws(replicates: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield TRUTH + SE * rng.standard_normal(len(TRUTH))


def test_posterior_intervals_cover_at_their_level_on_average_and_beat_the_gate():
    covered, err_shrunk, err_gate = [], [], []
    for estimate in _draws(80):
        _, post = shrinkage.shrink(estimate, SE)
        bounds = np.array([post.quantiles(i, np.array([0.025, 0.975])) for i in range(len(TRUTH))])
        covered.append((bounds[:, 0] <= TRUTH) & (TRUTH <= bounds[:, 1]))
        err_shrunk.append(post.mean() - TRUTH)
        q = benjamini_hochberg(2 * norm.sf(np.abs(estimate / SE)))
        err_gate.append(np.where(q < 0.05, estimate, 0.0) - TRUTH)
    coverage = np.mean(covered)
    assert 0.93 <= coverage <= 0.995, coverage  # average coverage over the day's effects
    assert np.mean(np.array(covered)[:, :10]) >= 0.85  # real effects too, not only the nulls
    rmse = lambda e: float(np.sqrt(np.mean(np.square(e))))  # noqa: E731
    assert rmse(err_shrunk) < rmse(err_gate)
    # The null services stay near 0: a quarter of their measurement noise or less.
    assert rmse(np.array(err_shrunk)[:, 10:]) < 0.01


def test_a_precise_effect_is_left_as_measured_and_a_null_one_goes_to_zero():
    estimate = TRUTH.copy()
    estimate[10] = 0.01  # a null service measured a quarter se off 0
    prior, post = shrinkage.shrink(estimate, SE)
    mean = post.mean()
    assert prior.null_weight > 0.6
    assert abs(mean[0] - 0.40) < 0.01 and abs(mean[3] - 15.0) < 1.0
    assert abs(mean[10]) < 0.002 and post.null_probability()[10] > 0.8
    cdf, deltas = post.quantile_table(10)
    assert np.interp(0.5, cdf, deltas) == 0.0  # the point mass maps to exactly no effect


def test_posterior_draws_keep_the_services_correlation():
    estimate, se = np.array([0.4, 0.5]), np.array([0.02, 0.02])
    _, post = shrinkage.shrink(np.concatenate([estimate, np.zeros(20)]), np.full(22, 0.02))
    tables = [post.quantile_table(i) for i in range(2)]
    sampled = projection.posterior_draws(tables, np.array([[1.0, 0.9], [0.9, 1.0]]), draws=20_000)
    assert abs(np.corrcoef(sampled.T)[0, 1] - 0.9) < 0.03
    assert np.allclose(sampled.mean(axis=0), post.mean()[:2], atol=0.002)


def test_a_noisy_large_effect_is_not_overstated_on_the_linear_scale():
    """A +750% effect measured at +-200 points: the posterior mean is unbiased for 1 + delta
    (the scale the estimator is unbiased on), not 3-5% off as on a log scale."""
    rng = np.random.default_rng(7)
    truth = np.concatenate([[7.5, 15.0], np.zeros(30)])
    se = np.concatenate([[2.0, 4.0], np.full(30, 0.04)])
    means = np.array([shrinkage.shrink(truth + se * rng.standard_normal(len(truth)), se)[1].mean()[:2]
                      for _ in range(150)])
    relative_bias = (1 + means).mean(axis=0) / (1 + truth[:2]) - 1
    assert np.all(np.abs(relative_bias) < 0.02), relative_bias


def test_vectorised_medians_match_the_quantile_tables():
    rng = np.random.default_rng(3)
    delta = np.concatenate([rng.normal(0, 0.03, 40), [0.5, -0.3, 2.0, 0.06]])
    se = np.concatenate([np.full(40, 0.03), [0.05, 0.02, 0.4, 0.03]])
    _, post = shrinkage.shrink(delta, se)
    medians = post.medians()
    tables = np.array([post.quantiles(i, np.array([0.5]))[0] for i in range(len(delta))])
    assert np.allclose(medians, tables, atol=2e-4)
    assert np.array_equal(medians == 0.0, tables == 0.0)  # the point mass: exactly no change
