"""Is a model trained on the trailing history still today's cost structure?

Two kinds of evidence, both cheap (a few numpy passes per service):

* structural breaks, located in time: the instance type (dominant SkuId) or the unit
  price (cost per instance-hour) changed. ``find_structural_break`` walks back from the
  most recent hours and returns the first hour of the current regime;
* level shifts with no visible cause: the recent window costs more (or less) than the
  model trained on earlier hours predicts for the same volumes (residual shift), or
  than earlier hours of similar volume actually cost (cost-per-request shift).

Seasonality and growth move volume, not cost *given* volume, so none of these fire on
them; ``test_cost_drift.py`` checks the false-alarm rate by simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl


@dataclass(frozen=True)
class StructuralBreak:
    index: int          # row index (in hour order) of the first hour of the current regime
    hour: datetime
    reasons: list[str]


def _fmt(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%MZ")


def _sku_break(sku: list[str | None], recent_hours: int) -> int | None:
    """First index after the last hour whose SKU differs from the current one."""
    recent = [s for s in sku[-recent_hours:] if s is not None]
    if not recent:
        return None
    current = max(set(recent), key=recent.count)
    for i in range(len(sku) - 1, -1, -1):
        if sku[i] is not None and sku[i] != current:
            return i + 1
    return None


def _level_break(values: np.ndarray, recent_hours: int, tolerance: float) -> int | None:
    """First index after the last hour whose (smoothed) level differs from today's.

    A centred 7-hour rolling median smooths out single dirty hours (a partially billed
    instance, a missing row) so that they do not count as a regime change.
    """
    finite = np.isfinite(values)
    if finite.sum() < recent_hours:
        return None
    smooth = pl.Series(values).fill_nan(None).rolling_median(7, center=True, min_samples=1).to_numpy()
    recent = smooth[-recent_hours:]
    current = np.nanmedian(recent)
    if not np.isfinite(current) or current <= 0:
        return None
    off = np.abs(smooth / current - 1.0) > tolerance
    off &= np.isfinite(smooth)
    bad = np.flatnonzero(off)
    return int(bad[-1]) + 1 if len(bad) else None


def find_structural_break(
    hours: list[datetime],
    sku: list[str | None],
    unit_cost: np.ndarray,
    recent_hours: int,
    price_tolerance: float,
) -> StructuralBreak | None:
    """The most recent instance-type or unit-price change, if any."""
    n = len(hours)
    candidates: list[tuple[int, str]] = []
    i_sku = _sku_break(sku, recent_hours)
    if i_sku is not None and 0 < i_sku < n:
        candidates.append((i_sku, f"instance type changed {sku[i_sku - 1]} -> {sku[i_sku]} at {_fmt(hours[i_sku])}"))
    i_price = _level_break(unit_cost, recent_hours, price_tolerance)
    if i_price is not None and 0 < i_price < n:
        before = np.nanmedian(unit_cost[max(0, i_price - 24):i_price])
        after = np.nanmedian(unit_cost[i_price:])
        change = after / before - 1.0 if before > 0 else float("inf")
        candidates.append((
            i_price,
            f"unit price changed {change:+.1%} ({before:.4g} -> {after:.4g} per instance-hour) at {_fmt(hours[i_price])}",
        ))
    if not candidates:
        return None
    index = max(i for i, _ in candidates)
    return StructuralBreak(index=index, hour=hours[index], reasons=[r for _, r in candidates])


def residual_shift(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Relative gap between what the window cost and what the model said it would."""
    total = predicted.sum()
    return float(actual.sum() / total - 1.0) if total > 0 else 0.0


def cost_per_request_shift(
    ref_requests: np.ndarray, ref_cost: np.ndarray, win_requests: np.ndarray, win_cost: np.ndarray,
    volume_band: float = 0.05, min_neighbours: int = 3, min_matched_hours: int = 24,
) -> float | None:
    """Median over window hours of cost per request / that of earlier hours with volume within +-5%.

    Matching each hour on volume removes the ceil() effect (a quiet hour pays for a
    partly idle instance), so a shift in the daily mix or growth does not read as a
    cost change. Returns None when too few window hours have earlier look-alikes (e.g.
    under strong growth), in which case the residual check is the one to trust.
    """
    ok_ref = ref_requests > 0
    ok_win = win_requests > 0
    if ok_ref.sum() < min_neighbours or ok_win.sum() < min_matched_hours:
        return None
    order = np.argsort(ref_requests[ok_ref])
    ref_v = ref_requests[ok_ref][order]
    ref_cpr = (ref_cost[ok_ref] / ref_requests[ok_ref])[order]
    prefix = np.concatenate([[0.0], np.cumsum(ref_cpr)])
    v, win_cpr = win_requests[ok_win], win_cost[ok_win] / win_requests[ok_win]
    lo = np.searchsorted(ref_v, v * (1 - volume_band), side="left")
    hi = np.searchsorted(ref_v, v * (1 + volume_band), side="right")
    count = hi - lo
    matched = count >= min_neighbours
    if matched.sum() < min_matched_hours:
        return None
    neighbour_cpr = (prefix[hi[matched]] - prefix[lo[matched]]) / count[matched]
    good = neighbour_cpr > 0
    if good.sum() < min_matched_hours:
        return None
    return float(np.median(win_cpr[matched][good] / neighbour_cpr[good]) - 1.0)
