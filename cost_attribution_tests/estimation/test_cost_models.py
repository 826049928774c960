"""Per-service cost models on synthetic histories with a known cost structure."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from cost_attribution.estimation.curve_models import evaluate_curve, fit_curve
from cost_attribution.estimation.models import (
    FittedCostModel,
    ModelConfig,
    fit_all,
    fit_service_model,
    project_incremental_cost,
)
from cost_attribution_tests.fixtures.estimation.cost_history_sim import (
    AS_OF,
    Structure,
    simulate_history,
    true_cost,
)

AUTO = Structure(capacity_per_instance=540_000, unit_price=0.68)


def _volume(history: pl.DataFrame) -> np.ndarray:
    return history.sort("hour")["requests"].to_numpy()


def test_step_function_autoscaling_extrapolates_to_1_5x_peak():
    history = simulate_history(AUTO, seed=1)
    model = fit_service_model("svc", history, AS_OF)
    assert (model.scaling, model.cost_model, model.drift_detected) == ("autoscale", "ml", False)
    assert model.model_error_pct < 10
    peak = _volume(history).max()
    for factor in (1.0, 1.25, 1.5):
        predicted = model.predict(np.array([factor * peak]))[0]
        truth = true_cost(np.array([factor * peak]), AUTO)[0]
        assert abs(predicted / truth - 1) < 0.10, (factor, predicted, truth)
    incremental, base, cf = project_incremental_cost(model, _volume(history), 0.4)
    truth = (true_cost(_volume(history) * 1.4, AUTO) - true_cost(_volume(history), AUTO)).sum()
    assert abs(incremental / truth - 1) < 0.05
    assert np.all(cf >= base)


def test_tree_alone_caps_at_the_peak_and_under_projects():
    history = simulate_history(AUTO, seed=2)
    v, c = _volume(history), history.sort("hour")["cost"].to_numpy()
    tree = fit_curve("hist-gbm", v, c)
    model = fit_service_model("svc", history, AS_OF)
    peak = v.max()
    far = np.array([1.5 * peak])
    truth_far = true_cost(far, AUTO)[0]
    # The tree's prediction at 1.5x the peak is its prediction at the peak.
    assert evaluate_curve(tree, far)[0] == pytest.approx(evaluate_curve(tree, np.array([peak]))[0])
    assert evaluate_curve(tree, far)[0] < 0.8 * truth_far
    truth = (true_cost(v * 1.4, AUTO) - true_cost(v, AUTO)).sum()
    tree_incremental = (evaluate_curve(tree, v * 1.4) - evaluate_curve(tree, v)).sum()
    chosen_incremental = project_incremental_cost(model, v, 0.4)[0]
    assert tree_incremental < 0.8 * truth        # under-projects by more than 20%
    assert abs(chosen_incremental / truth - 1) < 0.05


@pytest.mark.parametrize("kind", ["monotone-linear", "isotonic+linear-tail", "hist-gbm+linear-tail", "hist-gbm"])
def test_every_curve_is_monotone_in_volume(kind):
    history = simulate_history(Structure(capacity_per_instance=300_000), seed=3, noise=0.08)
    params = fit_curve(kind, _volume(history), history.sort("hour")["cost"].to_numpy())
    grid = np.linspace(0, 3 * _volume(history).max(), 2000)
    assert np.all(np.diff(evaluate_curve(params, grid)) >= -1e-12)


def test_model_round_trips_through_json():
    history = simulate_history(AUTO, seed=4)
    for model in (fit_service_model("a", history, AS_OF),
                  fit_service_model("s", simulate_history(Structure(static_instances=10), seed=4), AS_OF)):
        restored = FittedCostModel.from_dict(json.loads(json.dumps(model.to_dict())))
        grid = np.linspace(0, 3e7, 500)
        np.testing.assert_array_equal(restored.predict(grid), model.predict(grid))
        assert restored.training_start == model.training_start and restored.kind == model.kind


def test_static_service_is_flat_until_its_tipping_point_then_scales():
    static = Structure(static_instances=10, unit_price=0.5)
    history = simulate_history(static, seed=5)
    v = _volume(history)
    model = fit_service_model("auth", history, AS_OF)
    assert (model.scaling, model.cost_model) == ("static", "static")
    assert model.capacity_requests_per_hour == pytest.approx(1.5 * v.max())  # default headroom 0.5
    # Inside the headroom: +40% costs nothing.
    assert project_incremental_cost(model, v, 0.4)[0] == pytest.approx(0.0, abs=1e-9)
    # Past the tipping point one instance per capacity/10 requests, at today's unit price.
    per_instance = 1.5 * v.max() / 10
    incremental = project_incremental_cost(model, v, 2.0)[0]
    expected = ((np.maximum(10, np.ceil(3 * v / per_instance)) - 10) * 0.5).sum()
    assert expected > 100
    assert incremental == pytest.approx(expected, rel=0.01)
    # The headroom is an assumption the caller can change per service.
    full = fit_service_model("auth", history, AS_OF, ModelConfig(static_headroom_by_service={"auth": 0.0}))
    assert full.capacity_requests_per_hour == pytest.approx(v.max())
    assert project_incremental_cost(full, v, 0.2)[0] > 0


def test_price_change_is_detected_and_priced_at_the_new_price():
    change = AS_OF - timedelta(days=5)
    cheaper = Structure(capacity_per_instance=540_000, unit_price=0.68 * 0.8)
    history = simulate_history(AUTO, change_at=change, new_structure=cheaper, seed=6)
    model = fit_service_model("svc", history, AS_OF)
    assert model.drift_detected and model.cost_model == "heuristic"
    assert any("unit price changed" in r for r in model.drift_reasons)
    assert model.training_start == change
    v = _volume(history)
    truth_new = (true_cost(v * 1.4, cheaper) - true_cost(v, cheaper)).sum()
    truth_old = (true_cost(v * 1.4, AUTO) - true_cost(v, AUTO)).sum()
    incremental = project_incremental_cost(model, v, 0.4)[0]
    assert abs(incremental / truth_new - 1) < 0.10
    assert abs(incremental - truth_new) < abs(incremental - truth_old)


def test_instance_type_change_is_detected_and_priced_at_the_new_structure():
    change = AS_OF - timedelta(days=7)
    r7i = Structure(capacity_per_instance=324_000, unit_price=2.52, sku="r7i.4xlarge")
    r6i = Structure(capacity_per_instance=216_000, unit_price=2.10, sku="r6i.4xlarge")
    history = simulate_history(r6i, change_at=change, new_structure=r7i, seed=7, base=4.2e6)
    model = fit_service_model("recs", history, AS_OF)
    assert model.drift_detected and model.cost_model == "heuristic" and model.scaling == "autoscale"
    assert any("instance type changed r6i.4xlarge -> r7i.4xlarge" in r for r in model.drift_reasons)
    v = _volume(history)
    truth = (true_cost(v * 1.4, r7i) - true_cost(v, r7i)).sum()
    assert abs(project_incremental_cost(model, v, 0.4)[0] / truth - 1) < 0.10
    # A model trained on the whole window (no drift handling) mixes the two structures.
    stale = fit_curve("monotone-linear", v, history.sort("hour")["cost"].to_numpy())
    stale_incremental = (evaluate_curve(stale, 1.4 * v) - evaluate_curve(stale, v)).sum()
    assert abs(stale_incremental / truth - 1) > 0.15


def test_efficiency_regression_without_sku_or_price_change_is_caught_by_residual_shift():
    change = AS_OF - timedelta(days=2)
    slower = Structure(capacity_per_instance=540_000 * 0.7, unit_price=0.68)
    history = simulate_history(AUTO, change_at=change, new_structure=slower, seed=8)
    model = fit_service_model("svc", history, AS_OF)
    assert model.drift_detected and model.cost_model == "heuristic"
    assert any("residual shift" in r for r in model.drift_reasons)
    v = _volume(history)
    truth = (true_cost(v * 1.4, slower) - true_cost(v, slower)).sum()
    assert abs(project_incremental_cost(model, v, 0.4)[0] / truth - 1) < 0.15


def test_old_break_retrains_on_post_change_data_without_alarm():
    change = AS_OF - timedelta(days=20)
    new = Structure(capacity_per_instance=400_000, unit_price=0.9, sku="m8i.2xlarge")
    history = simulate_history(AUTO, change_at=change, new_structure=new, seed=9)
    model = fit_service_model("svc", history, AS_OF)
    assert (model.cost_model, model.drift_detected) == ("ml", False)
    assert model.training_start == change
    v = _volume(history)
    truth = (true_cost(v * 1.4, new) - true_cost(v, new)).sum()
    assert abs(project_incremental_cost(model, v, 0.4)[0] / truth - 1) < 0.05


def test_no_false_drift_alarm_on_seasonal_growing_services():
    """Simulation: 60 stable services (autoscaled and static, 1-60 instances, growth up
    to 2%/day, noisy volume and billing) must raise no drift alarm."""
    rng = np.random.default_rng(2026)
    alarms, fits = [], 0
    for seed in range(60):
        static = seed % 5 == 0
        instances_at_base = rng.uniform(1.5, 60)
        capacity = rng.uniform(2e5, 1.5e6)
        s = Structure(capacity_per_instance=capacity, unit_price=rng.uniform(0.2, 3.0),
                      static_instances=int(instances_at_base * 2) if static else None)
        history = simulate_history(
            s, seed=seed, base=capacity * instances_at_base, daily_amp=rng.uniform(0.1, 0.45),
            weekly_amp=rng.uniform(0.0, 0.2), growth_per_day=rng.uniform(0.0, 0.02), noise=rng.uniform(0.01, 0.08),
            price_noise=0.004,
        )
        model = fit_service_model(f"svc{seed}", history, AS_OF)
        fits += 1
        if model.drift_detected:
            alarms.append((seed, model.drift_reasons))
    assert fits == 60 and alarms == []


def test_short_history_falls_back_to_heuristic_with_a_reason():
    history = simulate_history(AUTO, seed=10).sort("hour").tail(30)
    model = fit_service_model("new-svc", history, AS_OF)
    assert model.cost_model == "heuristic" and not model.drift_detected
    assert "insufficient history" in model.drift_reasons[0]
    assert project_incremental_cost(model, _volume(history), 0.4)[0] > 0

    empty = fit_service_model("ghost", history.clear(), AS_OF)
    assert empty.cost_model == "heuristic" and "insufficient history" in empty.drift_reasons[0]
    assert project_incremental_cost(empty, np.array([1.0, 2.0]), 0.4)[0] == 0.0


def test_dirty_rows_are_counted_not_fatal():
    history = simulate_history(AUTO, seed=11).sort("hour").with_row_index()
    broken_instances = pl.col("index").is_in([40, 41])  # instances 0 and no unit cost: derive nothing from them
    history = history.with_columns(
        instances=pl.when(broken_instances).then(0).otherwise(pl.col("instances")),
        unit_cost=pl.when(broken_instances).then(None).otherwise(pl.col("unit_cost")),
    ).drop("index")
    dirty = pl.concat([
        history,
        history.head(3),                                                     # duplicated hours
        history.slice(10, 2).with_columns(requests=pl.lit(float("nan"))),    # NaN volume (quarantined before de-duplication)
        history.slice(20, 1).with_columns(cost=pl.lit(-5.0)),                # credit-dominated hour
        history.slice(30, 1).with_columns(hour=pl.lit(None, pl.Datetime("us", "UTC"))),
    ])
    model = fit_service_model("svc", dirty, AS_OF)
    quality = model.params["data_quality"]
    assert quality == {"missing_hour": 1, "invalid_requests": 2, "negative_cost": 1,
                       "duplicate_hour": 3, "invalid_instances": 2}
    assert model.cost_model == "ml" and not model.drift_detected


def test_missing_required_column_is_a_clear_error():
    with pytest.raises(ValueError, match="missing required column"):
        fit_service_model("svc", simulate_history(AUTO).drop("cost"), AS_OF)


def test_projection_validates_inputs():
    model = fit_service_model("svc", simulate_history(AUTO, seed=12), AS_OF)
    with pytest.raises(ValueError):
        project_incremental_cost(model, np.array([1e6, np.nan]), 0.4)
    with pytest.raises(ValueError):
        project_incremental_cost(model, np.array([1e6]), -1.0)
    total, base, cf = project_incremental_cost(model, np.array([1e6, 2e6]), -0.3)
    assert total <= 0 and np.all(cf <= base)


def test_fit_all_fits_each_service_in_name_order():
    frames = [simulate_history(AUTO, seed=13).with_columns(service=pl.lit("b")),
              simulate_history(Structure(static_instances=4), seed=14).with_columns(service=pl.lit("a"))]
    models = fit_all(pl.concat(frames), AS_OF)
    assert [(m.service, m.scaling) for m in models] == [("a", "static"), ("b", "autoscale")]
    with pytest.raises(ValueError, match="service"):
        fit_all(frames[0].drop("service"), AS_OF)


def test_training_window_excludes_as_of_and_older_days():
    history = simulate_history(AUTO, seed=15, days=40)
    model = fit_service_model("svc", history, AS_OF - timedelta(days=2))
    assert model.training_start == AS_OF - timedelta(days=30)
    assert model.training_end == AS_OF - timedelta(days=2)


def test_small_price_changes_are_detected_by_simulation():
    """Power check: an 8% price rise two days ago, 20 random services, all flagged."""
    rng = np.random.default_rng(7)
    flagged = 0
    for seed in range(20):
        capacity = rng.uniform(2e5, 1.5e6)
        old = Structure(capacity_per_instance=capacity, unit_price=1.0)
        new = Structure(capacity_per_instance=capacity, unit_price=1.08)
        history = simulate_history(old, change_at=AS_OF - timedelta(days=2), new_structure=new, seed=100 + seed,
                                   base=capacity * rng.uniform(3, 40), growth_per_day=rng.uniform(0, 0.02), noise=0.04)
        model = fit_service_model("svc", history, AS_OF)
        flagged += model.drift_detected and any("unit price changed" in r for r in model.drift_reasons)
    assert flagged == 20
