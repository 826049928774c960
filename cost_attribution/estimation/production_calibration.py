"""What production metrics say about an experiment's effect, combined with the traces.

Traces are sampled (1% of requests, a few days): a small service that a treatment
calls ten times as often is measured from a few dozen sampled spans per cell. Usage
metrics count every request, every hour: when an experiment's treated share started
inside the metrics' history, the service's load jumped by sum_c share_c(h) x d_c. That
jump, against the same service's load at the same hour of the day and kind of day
before anyone was treated, measures the effect on all of production.

Per (experiment, service): the trace deltas fix how the cells compare; production
fixes the scale lambda of sum_c share_c(h) x d_c (least squares over the treated
hours). Its uncertainty is measured, not assumed: the same estimator run on the
untreated hours themselves (a placebo: the last days before the start predicted from
the earlier ones) must find no jump, and how far it misses is the error. The
production delta lambda x d_c and the trace delta are combined by inverse variance.
Nothing changes where the share never moved inside the history (no untreated or no
treated hours), or where production is too noisy to add information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_attribution.estimation.projection import Z95

# Untreated and treated hours a production estimate needs (3 days before, 1 day after).
MIN_UNTREATED_HOURS = 72
MIN_TREATED_HOURS = 24
# A share below this counts as untreated (a handful of early allocations).
UNTREATED_SHARE = 1e-3


@dataclass(frozen=True)
class ProductionScale:
    """sum_c share_c d_c in production = scale x the traces' own sum_c share_c d_c."""

    scale: float
    se: float
    treated_hours: int


def _day_type(hours: np.ndarray) -> np.ndarray:
    """0 weekday, 1 weekend (1970-01-01 was a Thursday)."""
    days = hours.astype("datetime64[D]").astype(np.int64)
    return ((days + 3) % 7 >= 5).astype(np.int64)


def _slot(hours: np.ndarray) -> np.ndarray:
    """Hour of the day x kind of day: the seasonality a baseline must match."""
    hour_of_day = (hours.astype("datetime64[h]").astype(np.int64)) % 24
    return hour_of_day + 24 * _day_type(hours)


def _relative_jump(hours: np.ndarray, load: np.ndarray, baseline_mask: np.ndarray, target_mask: np.ndarray,
                   detrend: bool = True) -> np.ndarray:
    """load / expected - 1 on the target hours, expected = the baseline hours' mean in the
    same slot, carried forward along the baseline's own growth trend (log load against time,
    slot means taken out): traffic that grows 0.2% a day adds 3% to a jump measured two
    weeks later, which for a test that is most of a tiny service's load is most of its
    error. NaN where the slot has no baseline hour."""
    slots = _slot(hours)
    sums = np.bincount(slots[baseline_mask], weights=load[baseline_mask], minlength=48)
    counts = np.bincount(slots[baseline_mask], minlength=48)
    days = (hours.astype("datetime64[s]").astype(np.int64) / 86_400.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(counts > 0, sums / counts, np.nan)
        residual = np.log(load[baseline_mask] / expected[slots[baseline_mask]])
    t = days[baseline_mask]
    ok = np.isfinite(residual)
    growth = 0.0
    if detrend and ok.sum() >= 48 and np.ptp(t[ok]) >= 2.0:  # two days at least, or the slope is noise
        centred = t[ok] - t[ok].mean()
        growth = float(centred @ (residual[ok] - residual[ok].mean()) / (centred @ centred))
    with np.errstate(divide="ignore", invalid="ignore"):
        trend = np.exp(growth * (days[target_mask] - (t[ok].mean() if ok.any() else 0.0)))
        return load[target_mask] / (expected[slots[target_mask]] * trend) - 1.0


def production_scale(hours: np.ndarray, load: np.ndarray, traced_jump: np.ndarray) -> ProductionScale | None:
    """Scale of the traces' implied jump (sum_c share_c(h) d_c per hour, over `hours`)
    that production load shows, with its standard error; None without enough untreated
    and treated hours, or when the traces imply no jump."""
    hours = np.asarray(hours).astype("datetime64[us]")
    load = np.asarray(load, dtype=float)
    treated = np.abs(traced_jump) > 0
    untreated = ~treated & np.isfinite(load) & (load > 0)
    # Only untreated hours before the first treated one: a baseline from after it would
    # mix in whatever else changed since.
    first_treated = np.argmax(treated) if treated.any() else len(hours)
    untreated &= np.arange(len(hours)) < first_treated
    if untreated.sum() < MIN_UNTREATED_HOURS or treated.sum() < MIN_TREATED_HOURS:
        return None
    jump = _relative_jump(hours, load, untreated, treated)
    implied = traced_jump[treated]
    ok = np.isfinite(jump)
    if ok.sum() < MIN_TREATED_HOURS or not np.any(implied[ok]):
        return None
    scale = float(np.sum(jump[ok] * implied[ok]) / np.sum(implied[ok] ** 2))
    # Placebo: the last untreated days (as many hours as were treated, at most half of
    # the untreated ones) predicted from the earlier untreated hours.
    untreated_idx = np.flatnonzero(untreated)
    n_placebo = min(int(ok.sum()), len(untreated_idx) // 2)
    placebo_mask = np.zeros(len(hours), dtype=bool)
    placebo_mask[untreated_idx[-n_placebo:]] = True
    baseline_mask = untreated & ~placebo_mask
    # The placebo uses the level baseline, without the trend: a trend fitted on a few weeks
    # and carried to the treated days can miss by more than the hour-to-hour noise shows,
    # and the level baseline's miss over the placebo days bounds that (with the trend the
    # error came out too small: HD images' intervals covered 65% on the accuracy bench).
    placebo = _relative_jump(hours, load, baseline_mask, placebo_mask, detrend=False)
    placebo = placebo[np.isfinite(placebo)]
    if len(placebo) < MIN_TREATED_HOURS // 2:
        return None
    # The placebo's mean miss is the level error a baseline makes (trend, drift); its
    # spread over the hours shrinks with their number.
    error = float(np.sqrt(np.mean(placebo) ** 2 + np.var(placebo) / max(int(ok.sum()), 1)))
    mean_implied = float(np.mean(np.abs(implied[ok])))
    return ProductionScale(scale, error / mean_implied, int(ok.sum()))


# Production and traces agree when their scales differ by at most this many standard errors.
AGREEMENT_SE = 3.0
# Below this share of the traces' implied jump (at 2 standard errors), production load
# does not carry the test at all.
ABSENT_SCALE = 0.25


def reconcile(scale: ProductionScale | None, trace_relative_se: float) -> str:
    """How production relates to the traces for one (experiment, service):
    'none' (no production evidence), 'agrees' (combine them), 'absent' (the load shows
    no jump: the metrics do not carry the test's traffic), 'disagrees' (both show a
    jump, of clearly different sizes: keep the traces)."""
    if scale is None or not np.isfinite(scale.scale):
        return "none"
    if abs(scale.scale - 1.0) <= AGREEMENT_SE * float(np.hypot(scale.se, trace_relative_se)):
        return "agrees"
    if scale.scale + 2 * scale.se < ABSENT_SCALE:
        return "absent"
    return "disagrees"


def combine_cells(trace: list[tuple[float, float]], weights: np.ndarray, scale: ProductionScale | None,
                  implied: float, correlation: np.ndarray | None = None) -> list[tuple[float, float]] | None:
    """The cells' (delta, 95% half width) updated with production's one measurement.

    Production sees only the sum of the cells' effects weighted by their shares,
    y = sum_c a_c d_c (a_c: the cell's mean share over the treated hours), as scale x the
    traces' own implied sum `implied`, with standard error se x |implied|. With the trace
    deltas d_t ~ N(d, diag(sd^2)), the Gaussian update (a Kalman step) is
        d = d_t + S a (y - implied) / (a' S a + se_y^2),  Var = S - S a a' S / (a' S a + se_y^2),
    S the trace deltas' covariance (sd on the diagonal, `correlation` between the cells:
    they share one control, so a control that came out low raises every cell's delta).
    With one cell it is the inverse-variance mean of the trace delta and production's;
    with several, production pins down their weighted sum only, so how the sum splits
    between the cells keeps the traces' uncertainty, and an error they share is corrected
    in all of them. None when production adds nothing usable."""
    if scale is None or not np.isfinite(scale.scale) or scale.se <= 0 or not np.isfinite(implied) or implied == 0:
        return None
    deltas = np.array([d for d, _ in trace], dtype=float)
    sd = np.array([h for _, h in trace], dtype=float) / Z95
    weights = np.asarray(weights, dtype=float)
    if np.any(sd <= 0) or not np.all(np.isfinite(sd)):
        return None
    se_y = scale.se * abs(implied)
    corr = np.eye(len(sd)) if correlation is None else np.asarray(correlation, dtype=float)
    cov = corr * np.outer(sd, sd)
    spread = cov @ weights
    total = float(weights @ spread) + se_y**2
    if total <= 0:
        return None
    updated = deltas + spread * (scale.scale - 1.0) * implied / total
    variance = np.maximum(np.diag(cov) - spread**2 / total, 1e-12)
    return [(float(d), float(Z95 * np.sqrt(v))) for d, v in zip(updated, variance)]
