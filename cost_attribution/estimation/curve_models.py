"""Volume -> hourly-cost curves: fitting (scikit-learn) and a JSON form to predict from.

Every fitted curve is reduced to a small, JSON-serialisable ``params`` dict whose
evaluation (``evaluate_curve``) needs only numpy. That keeps ``FittedCostModel``
round-trippable through ``to_dict``/``from_dict`` without pickling estimators, and it
makes monotonicity easy to guarantee: every form below is non-decreasing in volume.

Forms:
  linear  cost = max(0, intercept + slope * v), slope >= 0
  knots   monotone piecewise-linear through (x, y) knots, then a linear tail of
          ``tail_slope`` past the last knot (tail_slope 0 = a capped tree model)
  static  unit_cost * max(instances, ceil(v / requests_per_instance)): flat until the
          fleet's capacity, then one more instance per requests_per_instance
  flat    a constant
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

# Volumes are divided by this before fitting so that slopes are well conditioned.
_VOLUME_SCALE = 1e6
# Relative tolerance on instance counts, so that a volume exactly at capacity does not
# buy an extra instance because of float rounding.
_CEIL_EPS = 1e-9

# Curves that keep rising past the historical peak: only these may be chosen to project.
EXTRAPOLATING_KINDS = ("monotone-linear", "isotonic+linear-tail", "hist-gbm+linear-tail")


def fit_monotone_linear(volume: np.ndarray, cost: np.ndarray) -> dict:
    """Least squares with a non-negative slope (the intercept absorbs the ceil() step bias)."""
    if np.ptp(volume) <= 0:
        # No spread in volume: the slope is not identifiable, fall back to cost per request.
        slope = float(cost.sum() / volume.sum()) if volume.sum() > 0 else 0.0
        return {"form": "linear", "intercept": 0.0, "slope": slope}
    reg = LinearRegression(positive=True).fit((volume / _VOLUME_SCALE).reshape(-1, 1), cost)
    return {
        "form": "linear",
        "intercept": float(reg.intercept_),
        "slope": float(reg.coef_[0]) / _VOLUME_SCALE,
    }


def _upper_half_slope(volume: np.ndarray, cost: np.ndarray) -> float:
    """Marginal cost per request near the peak, used to extend a curve past it."""
    upper = volume >= np.median(volume)
    params = fit_monotone_linear(volume[upper], cost[upper])
    if params["slope"] <= 0:  # too little spread in the upper half: use the whole range
        params = fit_monotone_linear(volume, cost)
    return params["slope"]


def _knots_from(predict, volume: np.ndarray, n_knots: int, tail_slope: float) -> dict:
    """Sample a fitted monotone 1-D predictor on a quantile grid of the training volumes."""
    grid = np.unique(np.quantile(volume, np.linspace(0.0, 1.0, n_knots)))
    y = np.maximum.accumulate(np.asarray(predict(grid), dtype=float))  # guard monotonicity
    return {"form": "knots", "x": grid.tolist(), "y": y.tolist(), "tail_slope": float(tail_slope)}


def fit_isotonic_linear_tail(volume: np.ndarray, cost: np.ndarray, n_knots: int) -> dict:
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(volume, cost)
    return _knots_from(iso.predict, volume, n_knots, _upper_half_slope(volume, cost))


def _fit_gbm(volume: np.ndarray, cost: np.ndarray) -> HistGradientBoostingRegressor:
    gbm = HistGradientBoostingRegressor(max_iter=60, monotonic_cst=[1], random_state=0)
    return gbm.fit((volume / _VOLUME_SCALE).reshape(-1, 1), cost)


def fit_hist_gbm(volume: np.ndarray, cost: np.ndarray, n_knots: int, linear_tail: bool) -> dict:
    # One thread: a few hundred rows gain nothing from OpenMP, and on a shared machine
    # its spinning threads made each fit 50x slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        gbm = _fit_gbm(volume, cost)
        tail = _upper_half_slope(volume, cost) if linear_tail else 0.0
        return _knots_from(lambda v: gbm.predict((v / _VOLUME_SCALE).reshape(-1, 1)), volume, n_knots, tail)


def fit_curve(kind: str, volume: np.ndarray, cost: np.ndarray, n_knots: int = 64) -> dict:
    """Fit one candidate ``kind`` on (hourly requests, hourly cost) and return its params."""
    volume = np.asarray(volume, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if kind == "monotone-linear":
        return fit_monotone_linear(volume, cost)
    if kind == "isotonic+linear-tail":
        return fit_isotonic_linear_tail(volume, cost, n_knots)
    if kind == "hist-gbm+linear-tail":
        return fit_hist_gbm(volume, cost, n_knots, linear_tail=True)
    if kind == "hist-gbm":
        return fit_hist_gbm(volume, cost, n_knots, linear_tail=False)
    raise ValueError(f"unknown cost curve kind {kind!r}")


def static_params(instances: int, unit_cost: float, capacity_requests_per_hour: float) -> dict:
    instances = max(int(instances), 1)
    return {
        "form": "static",
        "instances": instances,
        "unit_cost": float(unit_cost),
        "capacity_requests_per_hour": float(capacity_requests_per_hour),
    }


def evaluate_curve(params: dict, volume: np.ndarray) -> np.ndarray:
    """Hourly cost for each hourly volume; non-decreasing in volume for every form."""
    v = np.asarray(volume, dtype=float)
    form = params["form"]
    if form == "linear":
        return np.maximum(0.0, params["intercept"] + params["slope"] * v)
    if form == "knots":
        x = np.asarray(params["x"], dtype=float)
        y = np.asarray(params["y"], dtype=float)
        inside = np.interp(v, x, y)  # clamps below x[0] and above x[-1]
        beyond = np.maximum(v - x[-1], 0.0) * params["tail_slope"]
        return inside + beyond
    if form == "static":
        n = params["instances"]
        capacity = params["capacity_requests_per_hour"]
        if not math.isfinite(capacity) or capacity <= 0:
            return np.full(v.shape, n * params["unit_cost"])
        per_instance = capacity / n
        needed = np.ceil(v / per_instance * (1.0 - _CEIL_EPS))
        return np.maximum(needed, n) * params["unit_cost"]
    if form == "flat":
        return np.full(v.shape, float(params["cost"]))
    raise ValueError(f"unknown cost curve form {form!r}")
