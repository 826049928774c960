"""Empirical-Bayes shrinkage of the cells' effects: adaptive shrinkage (Stephens 2017, "ashr").

Most (cell, service) pairs of a day's experiments have no effect at all, and a hard
significance gate prices them at exactly $0 while a real but small effect that misses
significance is priced at $0 too (a savings test's -5% downstream move: the saving comes
out short every time). Shrinkage replaces the gate by a posterior computed from all of
the day's effects at once:

- every effect is measured on the log scale, x = log(1 + delta), with standard error
  s = se / (1 + delta) (ratio effects are symmetric there, and a draw can never go
  below -100%);
- the effects share one prior, a mixture of zero-centred normals on a grid of scales
  with a point mass at 0 (scale 0): g = sum_k pi_k N(0, sigma_k^2). The weights pi are
  fitted by maximum likelihood (EM) over all the day's effects, with ashr's null-biased
  penalty (a Dirichlet weight of 10 on the point mass) so that the fitted prior errs
  towards "no effect" when the data cannot tell;
- each effect's posterior is then a mixture of normals and a point mass, in closed form.
  Its mean is the point estimate; its quantiles give the interval, and joint draws (a
  Gaussian copula over the services' measured correlation) give the cell's interval.

An effect measured with a standard error far below the prior's scales is left as it is
(it is its own evidence); one as noisy as the prior's spread is pulled towards 0 by how
likely "no effect" is given everything the day measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sps

# Dirichlet penalty on the point mass at 0 (ashr's "nullbiased" default).
NULL_PENALTY = 10.0
# Grid of prior scales: from a tenth of the smallest standard error to twice the largest
# effect, a factor sqrt(2) apart (ashr's default grid multiplier).
GRID_MULTIPLIER = np.sqrt(2.0)
MIN_RELATIVE = -0.999  # a cell cannot remove more than all of a service's load


@dataclass(frozen=True)
class Prior:
    """g = sum_k weights[k] N(0, scales[k]^2) on log(1 + delta); scales[0] = 0 (no effect)."""

    scales: np.ndarray
    weights: np.ndarray

    @property
    def null_weight(self) -> float:
        return float(self.weights[0])


def to_log_scale(delta: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, s): log(1 + delta) and its delta-method standard error se / (1 + delta)."""
    one_plus = np.maximum(1.0 + np.asarray(delta, dtype=float), 1.0 + MIN_RELATIVE)
    return np.log(one_plus), np.asarray(se, dtype=float) / one_plus


def _grid(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    smallest = max(float(np.min(s)) / 10.0, 1e-6)
    spread = np.maximum(x**2 - s**2, 0.0)
    largest = max(2.0 * float(np.sqrt(spread.max())) if spread.size else 0.0, 8.0 * smallest)
    steps = int(np.ceil(np.log(largest / smallest) / np.log(GRID_MULTIPLIER))) + 1
    return np.concatenate([[0.0], smallest * GRID_MULTIPLIER ** np.arange(steps)])


def _log_likelihoods(x: np.ndarray, s: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """log N(x_i; 0, sigma_k^2 + s_i^2), shape (effects, components)."""
    total_sd = np.sqrt(scales[None, :] ** 2 + s[:, None] ** 2)
    return sps.norm.logpdf(x[:, None], scale=total_sd)


def fit_prior(x: np.ndarray, s: np.ndarray, iterations: int = 1000, tolerance: float = 1e-6) -> Prior:
    """Mixture weights by penalised maximum likelihood (EM); x, s on the log scale."""
    x, s = np.asarray(x, dtype=float), np.asarray(s, dtype=float)
    scales = _grid(x, s)
    log_lik = _log_likelihoods(x, s, scales)
    penalty = np.ones(len(scales))
    penalty[0] = NULL_PENALTY
    weights = np.full(len(scales), 1.0 / len(scales))
    weights[0] = 0.5
    weights[1:] = 0.5 / (len(scales) - 1)
    # In the linear scale, each row divided by its largest likelihood: the EM step is then
    # two matrix products (logsumexp per iteration was most of a day's projection time).
    row_max = log_lik.max(axis=1)
    likelihood = np.exp(log_lik - row_max[:, None])
    previous = -np.inf
    for _ in range(iterations):
        mixture = likelihood @ weights
        counts = weights * (likelihood.T @ (1.0 / mixture)) + penalty - 1.0
        objective = float(np.sum(np.log(mixture) + row_max) + np.sum((penalty - 1.0) * np.log(np.maximum(weights, 1e-300))))
        weights = counts / counts.sum()
        if objective - previous < tolerance:
            break
        previous = objective
    return Prior(scales, weights)


def _component_cdf(x, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P(X <= x) for each mixture component N(m, v^2) (a step at m where v is 0), broadcast."""
    return np.where(v > 0, special.ndtr((x - m) / np.where(v > 0, v, 1.0)), (x >= m).astype(float))


@dataclass(frozen=True)
class Posterior:
    """Per effect, a mixture: component k has weight w[i, k], mean m[i, k], sd v[i, k]
    (component 0 is the point mass at 0), on log(1 + delta)."""

    w: np.ndarray
    m: np.ndarray
    v: np.ndarray

    def mean(self) -> np.ndarray:
        """Posterior mean of delta: E[exp(X)] - 1 (log-normal mean of each component)."""
        return np.sum(self.w * np.exp(self.m + self.v**2 / 2.0), axis=1) - 1.0

    def medians(self) -> np.ndarray:
        """Every effect's posterior median of delta at once (bisection on the log scale);
        exactly 0 wherever the point mass at 0 holds the middle of the distribution."""
        low = np.min(self.m - 10.0 * self.v, axis=1) - 1e-9
        high = np.max(self.m + 10.0 * self.v, axis=1) + 1e-9
        for _ in range(60):
            middle = (low + high) / 2.0
            under = np.sum(self.w * _component_cdf(middle[:, None], self.m, self.v), axis=1) < 0.5
            low, high = np.where(under, middle, low), np.where(under, high, middle)
        continuous = self.v > 0
        below_zero = np.sum(np.where(continuous, self.w * _component_cdf(0.0, self.m, self.v), 0.0), axis=1)
        at_zero = (below_zero <= 0.5) & (below_zero + self.point_mass() >= 0.5)
        return np.where(at_zero, 0.0, np.expm1((low + high) / 2.0))

    def null_probability(self) -> np.ndarray:
        return self.w[:, 0]

    def cdf(self, i: int, points: np.ndarray) -> np.ndarray:
        """P(delta <= points) for effect i."""
        x = np.log(np.maximum(1.0 + np.asarray(points, dtype=float), 1.0 + MIN_RELATIVE))
        return _component_cdf(x[:, None], self.m[i][None, :], self.v[i][None, :]) @ self.w[i]

    def quantile_table(self, i: int, points: int = 801) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, deltas) tabulating effect i's inverse CDF, for np.interp. The
        point mass at 0 is a vertical step: every probability inside it maps to exactly 0."""
        spread = np.sqrt(np.sum(self.w[i] * (self.v[i] ** 2 + self.m[i] ** 2)))
        centre = float(np.sum(self.w[i] * self.m[i]))
        span = max(8.0 * spread, 1e-6)
        x = np.linspace(centre - span, centre + span, points)
        x = np.concatenate([x[x < 0], [0.0], x[x > 0]])
        deltas = np.expm1(x)
        cdf = self.cdf(i, deltas)
        at_zero = int(np.searchsorted(x, 0.0))
        below = cdf[at_zero] - self.point_mass()[i]
        return np.insert(cdf, at_zero, below), np.insert(deltas, at_zero, 0.0)

    def point_mass(self) -> np.ndarray:
        """Per effect, the probability of exactly no change (0 where it was smeared: see widened)."""
        return np.where(self.v[:, 0] > 0, 0.0, self.w[:, 0])

    def sd(self) -> np.ndarray:
        """Per effect, the posterior standard deviation of log(1 + delta)."""
        mean = np.sum(self.w * self.m, axis=1)
        return np.sqrt(np.maximum(np.sum(self.w * (self.v**2 + self.m**2), axis=1) - mean**2, 0.0))

    def widened(self, sd: np.ndarray) -> Posterior:
        """Each effect plus independent normal noise of standard deviation sd (log scale): a
        point mass with sd > 0 becomes a normal."""
        return Posterior(self.w, self.m, np.sqrt(self.v**2 + np.asarray(sd, dtype=float)[:, None] ** 2))

    def quantiles(self, i: int, probabilities: np.ndarray) -> np.ndarray:
        cdf, deltas = self.quantile_table(i)
        return np.interp(probabilities, cdf, deltas)


def posterior(prior: Prior, x: np.ndarray, s: np.ndarray) -> Posterior:
    """Closed-form posterior of each effect under the fitted prior (x, s on the log scale)."""
    x, s = np.asarray(x, dtype=float), np.asarray(s, dtype=float)
    log_joint = _log_likelihoods(x, s, prior.scales) + np.log(np.maximum(prior.weights, 1e-300))[None, :]
    w = np.exp(log_joint - special.logsumexp(log_joint, axis=1)[:, None])
    prior_var = prior.scales[None, :] ** 2
    shrink = prior_var / (prior_var + s[:, None] ** 2)
    m = shrink * x[:, None]
    v = np.sqrt(shrink * s[:, None] ** 2)
    return Posterior(w, m, v)


def shrink(delta: np.ndarray, se: np.ndarray, centre: np.ndarray | None = None) -> tuple[Prior, Posterior]:
    """Fit the day's prior on every effect and return it with every effect's posterior.

    centre (optional, one per effect): the change each effect is shrunk towards instead of
    none. The prior and posterior are then of the change beyond it, log(1 + delta) -
    log(1 + centre): a posterior delta d stands for (1 + centre)(1 + d) - 1."""
    x, s = to_log_scale(delta, se)
    if centre is not None:
        x = x - np.log1p(np.asarray(centre, dtype=float))
    prior = fit_prior(x, s)
    return prior, posterior(prior, x, s)
