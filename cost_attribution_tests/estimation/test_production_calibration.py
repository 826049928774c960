"""Production metrics calibrate the trace deltas where an experiment started inside the
load history: a known jump is recovered, its error is measured by a placebo, and a
world without the jump is not given one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from cost_attribution.attribution.treated_share import hourly_grid
from cost_attribution.estimation.production_calibration import ProductionScale, combine_cells, production_scale


def combine(trace_delta: float, trace_half_width: float, scale: ProductionScale | None) -> tuple[float, float, str]:
    """One cell through combine_cells: (delta, interval half-width, source)."""
    combined = combine_cells([(trace_delta, trace_half_width)], np.ones(1), scale, trace_delta) if trace_half_width > 0 else None
    if combined is None:
        return trace_delta, trace_half_width, "traces"
    return combined[0][0], combined[0][1], "traces+production"

UTC = dt.timezone.utc


def _series(jump: float, start_day: int = 40, days: int = 56, seed: int = 0):
    hours = hourly_grid(dt.datetime(2026, 5, 1, tzinfo=UTC), dt.datetime(2026, 5, 1, tzinfo=UTC) + dt.timedelta(days=days))
    rng = np.random.default_rng(seed)
    hour_of_day = np.arange(len(hours)) % 24
    weekend = ((hours.astype("datetime64[D]").astype(np.int64) + 3) % 7) >= 5
    baseline = 1e5 * (1 + 0.45 * np.sin(2 * np.pi * (hour_of_day - 14) / 24)) * np.where(weekend, 1.12, 1.0)
    share = np.where(np.arange(len(hours)) >= 24 * start_day, 0.2, 0.0)
    load = baseline * (1 + share * jump) * rng.lognormal(0, 0.01, len(hours))
    return hours, load, share


def test_recovers_a_tiny_services_jump_that_traces_overestimate():
    hours, load, share = _series(jump=7.5)
    scale = production_scale(hours, load, share * 9.6)  # traces said +960%
    assert scale.scale == pytest.approx(7.5 / 9.6, rel=0.02)
    delta, half, source = combine(9.6, 3.2, scale)
    assert source == "traces+production"
    assert delta == pytest.approx(7.5, rel=0.03) and half < 0.5


def test_no_jump_in_production_is_not_invented_and_small_effects_keep_the_traces():
    hours, load, share = _series(jump=0.0)
    scale = production_scale(hours, load, share * 0.4)
    assert abs(scale.scale) < 0.15  # production shows no jump ...
    assert scale.se > 0.01  # ... and says how sure it is, from the placebo
    delta, half, _ = combine(0.4, 0.1, scale)
    assert delta < 0.4 and half < 0.1


def test_no_calibration_without_untreated_history():
    hours, load, share = _series(jump=1.0, start_day=1)
    assert production_scale(hours, load, share * 1.0) is None
    assert combine(1.0, 0.2, None) == (1.0, 0.2, "traces")


def test_reconcile_names_agreement_absence_and_disagreement():
    from cost_attribution.estimation.production_calibration import reconcile

    hours, load, share = _series(jump=0.4)
    assert reconcile(production_scale(hours, load, share * 0.42), 0.1) == "agrees"
    assert reconcile(production_scale(hours, load, share * 1.2), 0.05) == "disagrees"
    hours, load, share = _series(jump=0.0)
    assert reconcile(production_scale(hours, load, share * 9.4), 0.15) == "absent"
    assert reconcile(None, 0.1) == "none"


def test_metrics_that_do_not_carry_the_test_are_not_deflated():
    """A tidy world: traces show +40% for the 25% of members treated in the last days,
    the usage metrics never saw it. Nothing is taken out of the load; both baselines agree."""
    import polars as pl

    from cost_attribution.estimation.cell_costs import project_cells
    from cost_attribution_tests.estimation.test_production_share import AS_OF, _deltas, _linear_model

    hours, load, share = _series(jump=0.0, start_day=52, days=56)
    shares = pl.DataFrame({"experiment_id": "x", "cell": "treatment", "hour": hours, "share": share * 1.25}).with_columns(
        pl.col("hour").dt.replace_time_zone("UTC"))
    deltas = _deltas([{"experiment_id": "x", "cell": "treatment", "service": "svc", "delta": 0.4,
                       "ci_low": 0.32, "ci_high": 0.48}])
    services, cells, _ = project_cells(AS_OF, deltas, {"svc": _linear_model("svc", 0.01)},
                                       {"svc": (np.arange(len(hours)), load)}, hours, shares, 30 / 28, 0.05,
                                       lambda *_: None, projection_hours=24 * 28, point_estimate="gate")
    row = services.row(0, named=True)
    assert row["delta_source"] == "traces (production absent)" and row["delta_used"] == 0.4
    cell = cells.row(0, named=True)
    assert cell["bill_change_usd_30d"] == pytest.approx(cell["incremental_cost_usd_30d"])


def test_two_cells_production_pins_their_weighted_sum_not_each_cell():
    """Production sees only a'd for a three-cell test: each cell's updated interval must
    still cover its truth 95% of the time (it keeps the traces' uncertainty about the split),
    while the weighted sum comes out as precise as production."""
    from cost_attribution.estimation.production_calibration import ProductionScale, combine_cells

    rng = np.random.default_rng(4)
    truth, sd, weights, se_y = np.array([7.5, 15.0]), np.array([2.0, 4.0]), np.array([0.2, 0.21]), 0.02
    covered, sums = [], []
    for _ in range(2000):
        trace = truth + sd * rng.standard_normal(2)
        implied = float(weights @ trace)
        y = float(weights @ truth) + se_y * rng.standard_normal()
        scale = ProductionScale(y / implied, se_y / abs(implied), 48)
        out = combine_cells([(d, 1.959963984540054 * s) for d, s in zip(trace, sd)], weights, scale, implied)
        covered.append([abs(d - t) <= h for (d, h), t in zip(out, truth)])
        sums.append(weights @ np.array([d for d, _ in out]) - weights @ truth)
    coverage = np.mean(covered, axis=0)
    assert np.all((coverage > 0.93) & (coverage < 0.97)), coverage
    assert np.std(sums) < 0.5 * float(np.sqrt(weights**2 @ sd**2))  # the sum is pinned by production


def test_a_control_both_cells_share_is_corrected_in_both():
    """Two cells measured against one control: a control that came out low raises both
    deltas. With the shared-control correlation the update moves both cells (each keeps
    coverage and the error of the smaller cell drops); without it the noisier cell absorbs
    nearly all of the correction and the other keeps the control's error."""
    from cost_attribution.estimation.production_calibration import ProductionScale, combine_cells

    rng = np.random.default_rng(5)
    truth, weights, se_y = np.array([7.5, 15.0]), np.array([0.2, 0.21]), 0.02
    cv_treatment, cv_control = np.array([0.04, 0.03]), 0.12
    errors = {"shared": [], "independent": []}
    covered = []
    for _ in range(2000):
        control = 1.0 + cv_control * rng.standard_normal()
        trace = (1 + truth) * (1 + cv_treatment * rng.standard_normal(2)) / control - 1
        sd = (1 + trace) * np.sqrt(cv_treatment**2 + cv_control**2)
        cov = (1 + trace[0]) * (1 + trace[1]) * cv_control**2
        corr = np.array([[1.0, cov / (sd[0] * sd[1])], [cov / (sd[0] * sd[1]), 1.0]])
        implied = float(weights @ trace)
        y = float(weights @ truth) + se_y * rng.standard_normal()
        scale = ProductionScale(y / implied, se_y / abs(implied), 48)
        cells = [(d, 1.959963984540054 * s) for d, s in zip(trace, sd)]
        shared = combine_cells(cells, weights, scale, implied, correlation=corr)
        alone = combine_cells(cells, weights, scale, implied)
        errors["shared"].append([d - t for (d, _), t in zip(shared, truth)])
        errors["independent"].append([d - t for (d, _), t in zip(alone, truth)])
        covered.append([abs(d - t) <= h for (d, h), t in zip(shared, truth)])
    rmse = {k: np.sqrt(np.mean(np.square(v), axis=0)) for k, v in errors.items()}
    assert rmse["shared"][0] < 0.6 * rmse["independent"][0], rmse
    assert np.all(np.mean(covered, axis=0) > 0.93), np.mean(covered, axis=0)


def test_growth_before_the_start_is_not_read_as_the_tests_jump():
    """Traffic growing 0.2% a day: the jump a test makes two weeks after its start is
    measured against the baseline carried along that growth, not against its level."""
    from cost_attribution.estimation.production_calibration import production_scale

    hours = np.datetime64("2026-05-01T00:00", "us") + np.arange(24 * 56) * np.timedelta64(1, "h")
    day = np.arange(len(hours)) / 24.0
    base = 1000.0 * 1.002**day * (1.0 + 0.3 * np.sin(2 * np.pi * (np.arange(len(hours)) % 24) / 24))
    implied = np.where(day >= 42, 0.2 * 1.5, 0.0)  # a +150% cell on 20% of traffic from day 42
    scale = production_scale(hours, base * (1.0 + implied), implied)
    assert scale is not None and abs(scale.scale - 1.0) < 0.01, scale
