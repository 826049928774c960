"""Scaling class from data: does the fleet follow volume (autoscale) or not (static)?

A static fleet keeps the same instance count while volume swings with the day and the
week. That is all the data can say: a flat fleet never shows its capacity, only that it
coped with the busiest hour observed. Where the tipping point sits past that peak is an
assumption (``ModelConfig.static_headroom``), applied in ``static_capacity``.
"""

from __future__ import annotations

import numpy as np

# Quantiles used to compare instance counts / costs, so that an hour or two with a
# replacement instance (two ResourceIds billed in the same hour) does not make a static
# fleet look autoscaled.
_LOW_Q, _HIGH_Q = 0.02, 0.98
# A flat fleet is only informative if volume actually moved: below this relative swing
# (p98 / p2 - 1) a steady autoscaler and a static fleet look the same; we call it static.
_MIN_VOLUME_SWING = 0.10
# Without instance counts, cost is "flat" when its p98 / p2 - 1 is under this.
_FLAT_COST_SWING = 0.03


def classify_scaling(requests: np.ndarray, cost: np.ndarray, instances: np.ndarray | None) -> str:
    """'static' when the fleet size (or, without instance counts, the cost) ignores volume."""
    if instances is not None and np.isfinite(instances).sum() >= max(3, len(instances) // 2):
        inst = instances[np.isfinite(instances)]
        lo, hi = np.quantile(inst, [_LOW_Q, _HIGH_Q])
        return "static" if hi == lo else "autoscale"
    positive = cost[cost > 0]
    if len(positive) < 3:
        return "static"
    lo, hi = np.quantile(positive, [_LOW_Q, _HIGH_Q])
    v_lo, v_hi = np.quantile(requests, [_LOW_Q, _HIGH_Q])
    volume_moved = v_lo <= 0 or v_hi / v_lo - 1 >= _MIN_VOLUME_SWING
    return "static" if (hi / lo - 1 < _FLAT_COST_SWING and volume_moved) else "autoscale"


def static_capacity(observed_peak_requests_per_hour: float, headroom: float) -> float:
    """Tipping point of a static fleet: the observed peak plus the assumed headroom."""
    return float(observed_peak_requests_per_hour) * (1.0 + float(headroom))
