"""Two universes -> dollars, per service and per experiment cell, with intervals.

Production as it really is: the last N days of load (requests, or CPU seconds where
usage metrics carry them) already hold every running experiment's treated share. Per
service and hour, with s_c(h) the treated share of cell c (attribution.treated_share)
and d_c its effect on the service's load:

    observed L(h) = B(h) x prod over experiments (1 + sum_c s_c(h) d_c)

so B, the load with everyone in control, is L divided by that factor. Shipping cell c:
- incremental cost (vs not shipping): f(B (1 + d_c)) - f(B)
- bill change (vs the days as they were): f(CF) - f(L), CF = L (1 + d_c) / (1 + sum_c' s_c' d_c'),
  this experiment's share replaced by 100% of the cell, other experiments as they are;
f the service's cost model (today's cost structure), summed over the hours and scaled to
the horizon. Both are monotone in d_c (the deflator moves with it), so each is tabulated
once on a grid of d_c and the delta interval maps to dollars endpoint by endpoint.

Per cell: services move together (the same members drive them), so the interval comes
from joint draws of the deltas with their member-level correlation, each draw priced
through every service's curve. With shrinkage (the default, estimation.shrinkage) the
draws come from each service's posterior and the point is their mean; with the
significance gate, non-significant services contribute 0 to the point estimate but
their whole uncertainty still widens the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from cost_attribution.estimation.models import FittedCostModel

# The horizon every projected total is stated over: report.json's *_30d fields (the
# contract fixes it, so it is a fact here, not a setting).
HORIZON_DAYS = 30.0

Z95 = 1.959963984540054


@dataclass
class ServiceCostCurve:
    """Incremental horizon cost of one service as a function of its delta, tabulated
    once on a grid so thousands of joint draws cost an interpolation each."""

    service: str
    grid: np.ndarray
    cost: np.ndarray

    def __call__(self, delta: np.ndarray | float) -> np.ndarray:
        return np.interp(delta, self.grid, self.cost)


def _correlated_normals(correlation: np.ndarray | None, k: int, draws: int, seed: int) -> np.ndarray:
    """(draws, k) standard normals with the services' correlation (identity where unknown)."""
    corr = np.eye(k) if correlation is None else np.asarray(correlation, dtype=float)
    corr = np.where(np.isfinite(corr), corr, 0.0)
    np.fill_diagonal(corr, 1.0)
    return np.random.default_rng(seed).standard_normal((draws, k)) @ _matrix_root(corr).T


def gate_draws(deltas: np.ndarray, half_widths: np.ndarray, significant: np.ndarray,
               correlation: np.ndarray | None, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Joint draws of the services' deltas for the significance gate: centred on the delta
    where significant and on 0 elsewhere, with the spread of the reported interval
    (half_widths: always-valid or fixed) and the services' correlation."""
    sd = np.asarray(half_widths, dtype=float) / Z95
    sd = np.where(np.isfinite(sd), sd, 0.0)
    centre = np.where(significant, deltas, 0.0)
    return centre + _correlated_normals(correlation, len(deltas), draws, seed) * sd


def posterior_draws(tables: list[tuple[np.ndarray, np.ndarray]], correlation: np.ndarray | None,
                    draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Joint draws from each service's posterior (estimation.shrinkage), tied together by
    the services' measured correlation through a Gaussian copula: a correlated normal
    draw per service, mapped through its own posterior quantile function. tables: per
    service (cumulative probabilities, deltas)."""
    uniforms = special.ndtr(_correlated_normals(correlation, len(tables), draws, seed))
    return np.column_stack([np.interp(uniforms[:, j], cdf, deltas) for j, (cdf, deltas) in enumerate(tables)])


def price_draws(curves: list[ServiceCostCurve], sampled: np.ndarray, point: float | None = None,
                level: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high) of the sum of the services' curves over joint draws; point
    defaults to the mean over the draws (the posterior mean of the dollars)."""
    totals = np.zeros(len(sampled))
    for j, curve in enumerate(curves):
        totals += curve(sampled[:, j])
    point = float(totals.mean()) if point is None else point
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(totals, [tail, 1.0 - tail])
    return point, float(min(low, point)), float(max(high, point))


def joint_intervals(
    families: list[list[ServiceCostCurve]],
    deltas: np.ndarray,
    half_widths: np.ndarray,
    significant: np.ndarray,
    correlation: np.ndarray | None,
    draws: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> list[tuple[float, float, float]]:
    """(point, low, high) per family of per-service curves (e.g. incremental cost and
    bill change) under the significance gate, all priced on the same joint draws
    (gate_draws); the point prices the significant deltas, 0 elsewhere."""
    if len(deltas) == 0:
        return [(0.0, 0.0, 0.0) for _ in families]
    sampled = gate_draws(deltas, half_widths, significant, correlation, draws, seed)
    centre = np.where(significant, deltas, 0.0)
    return [
        price_draws(curves, sampled, point=sum(float(curve(c)) for curve, c in zip(curves, centre)), level=level)
        for curves in families
    ]


@dataclass(frozen=True)
class LoadShares:
    """What the running experiments did to one service's observed load, hour by hour.

    own: 1 + sum over the cell's sibling cells (same experiment, not control) of
         share x their delta; share: the cell's own treated share; others: the product
         of (1 + sum_c share_c d_c) over every other experiment touching the service."""

    own: np.ndarray
    share: np.ndarray
    others: np.ndarray


def cell_curves(
    model: FittedCostModel, load: np.ndarray, shares: LoadShares, scale: float, lo: float, hi: float,
    exact: tuple[float, ...] = (), points: int = 161,
) -> tuple[ServiceCostCurve, ServiceCostCurve]:
    """(incremental cost, bill change) of one service as functions of the cell's delta d:
    sum over hours of f(B (1 + d)) - f(B) and f(L (1 + d) / own(d)) - f(L), where
    own(d) = own + share x d and B = L / (own(d) x others), times `scale`. The deltas in
    `exact` (point and interval ends) are grid points, so they are priced exactly."""
    lo = max(lo, -0.999)  # a cell cannot remove more than all of a service's load
    hi = max(hi, lo + 1e-9)
    grid = np.linspace(lo, hi, points)
    extra = [d for d in (0.0, *exact) if lo < d < hi]  # zero: a null delta prices to exactly $0
    grid = np.unique(np.append(grid, extra))
    load = np.asarray(load, dtype=float)
    observed = float(model.predict(load).sum())
    # Every delta of the grid at once (a row per delta, a column per hour): three model calls
    # instead of three per grid point (a run priced ~27,000 calls, most of cost_projections'
    # time on a small world). Each row sums as the one-delta vector did.
    d = grid[:, None]
    own = shares.own + shares.share * d
    baseline = load / (own * shares.others)
    incremental = (model.predict(baseline * (1.0 + d)).sum(axis=1) - model.predict(baseline).sum(axis=1)) * scale
    bill = (model.predict(load * (1.0 + d) / own).sum(axis=1) - observed) * scale
    # Guard the interpolation against tiny non-monotone wiggles of a fitted model.
    return (
        ServiceCostCurve(model.service, grid, np.maximum.accumulate(incremental)),
        ServiceCostCurve(model.service, grid, np.maximum.accumulate(bill)),
    )


def _matrix_root(cov: np.ndarray) -> np.ndarray:
    """L with L L' = cov. Cholesky first: it moves continuously with the matrix, so a
    rerun whose sums differ in the last bit gives the same draws (an eigenvector basis
    can flip or rotate). An estimated covariance that is not positive definite falls
    back to the eigen-decomposition with negative eigenvalues clipped."""
    jitter = 1e-12 * max(float(np.max(np.diag(cov))), 1e-300)
    try:
        return np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov)
        return vectors * np.sqrt(np.clip(values, 0.0, None))
