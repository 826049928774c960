"""Two universes -> dollars, per service and per experiment, with intervals.

Per service: the cost model prices the last N days of hourly production volume as it
was (baseline) and scaled by (1 + delta) (counterfactual); the difference, scaled to
the horizon, is the incremental cost. The cost is monotone in delta, so the delta
interval maps to the dollar interval endpoint by endpoint.

Per experiment: services move together (the same members drive them), so the
experiment's interval comes from joint draws of the deltas with their member-level
correlation, each draw priced through every service's (possibly non-linear, e.g.
static-until-capacity) cost curve. Non-significant services contribute 0 to the point
estimate but their uncertainty still widens the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_attribution.estimation.models import FittedCostModel, project_incremental_cost

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


def cost_curve(
    model: FittedCostModel, volume: np.ndarray, scale: float, lo: float, hi: float, points: int = 161
) -> ServiceCostCurve:
    lo = max(lo, -0.999)  # a cell cannot remove more than all of a service's volume
    hi = max(hi, lo + 1e-9)
    grid = np.linspace(lo, hi, points)
    if lo < 0.0 < hi:  # zero exactly on the grid, so a null delta prices to exactly $0
        grid = np.unique(np.append(grid, 0.0))
    cost = np.array([project_incremental_cost(model, volume, float(d))[0] * scale for d in grid])
    # Guard the interpolation against tiny non-monotone wiggles of a fitted model.
    return ServiceCostCurve(model.service, grid, np.maximum.accumulate(cost))


def service_dollars(
    curve: ServiceCostCurve, delta: float, ci_low: float, ci_high: float, significant: bool
) -> tuple[float, float, float]:
    point = float(curve(delta)) if significant else 0.0
    return point, float(curve(ci_low)), float(curve(ci_high))


def experiment_interval(
    curves: list[ServiceCostCurve],
    deltas: np.ndarray,
    half_widths: np.ndarray,
    significant: np.ndarray,
    correlation: np.ndarray | None,
    draws: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(point, low, high) of the experiment's incremental cost.

    half_widths are the reported per-service interval half-widths (always-valid or
    fixed), so the marginal spread of each draw matches what the report shows."""
    if not curves:
        return 0.0, 0.0, 0.0
    sd = np.asarray(half_widths, dtype=float) / Z95
    sd = np.where(np.isfinite(sd), sd, 0.0)
    k = len(curves)
    corr = np.eye(k) if correlation is None else np.asarray(correlation, dtype=float)
    corr = np.where(np.isfinite(corr), corr, 0.0)
    np.fill_diagonal(corr, 1.0)
    cov = corr * np.outer(sd, sd)
    root = _matrix_root(cov)
    rng = np.random.default_rng(seed)
    centre = np.where(significant, deltas, 0.0)
    sampled = centre + rng.standard_normal((draws, k)) @ root.T
    totals = np.zeros(draws)
    for j, curve in enumerate(curves):
        totals += curve(sampled[:, j])
    point = float(sum(curve(d) for curve, d, s in zip(curves, deltas, significant) if s))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(totals, [tail, 1.0 - tail])
    return point, float(min(low, point)), float(max(high, point))


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
