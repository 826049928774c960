"""Production as it really is, with known answers: treated share from allocations and
activity, the two baselines (vs not shipping, vs the bill as it was), any cells, and
work-driven pricing."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution.stats import intended_splits, sample_ratio_mismatch
from cost_attribution.attribution.treated_share import hourly_grid, treated_share
from cost_attribution.estimation.cell_costs import driver_effect, project_cells
from cost_attribution.estimation.models import FittedCostModel

UTC = dt.timezone.utc
AS_OF = dt.date(2026, 6, 30)


def _linear_model(service: str, dollars_per_unit: float, driver: str = "requests") -> FittedCostModel:
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    return FittedCostModel(
        service=service, scaling="autoscale", cost_model="ml", drift_detected=False, drift_reasons=[],
        model_error_pct=1.0, capacity_requests_per_hour=None, training_start=start, training_end=start,
        kind="monotone-linear", features=[driver],
        params={"curve": {"form": "linear", "intercept": 0.0, "slope": dollars_per_unit}},
    )


def test_treated_share_is_activity_weighted_and_carried_back_by_allocation_time():
    hours = hourly_grid(dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 6, 5, tzinfo=UTC))
    activity = pl.DataFrame({"member_id": ["a", "b", "c", "d"], "root_requests": [10.0, 30.0, 40.0, 20.0]})
    allocations = pl.DataFrame({
        "experiment_id": ["x", "x", "x"],
        "member_id": ["a", "b", "c"],
        "cell": ["control", "treatment", "treatment"],
        "allocated_at": [dt.datetime(2026, 6, 1, 0, 5, tzinfo=UTC), dt.datetime(2026, 6, 1, 0, 5, tzinfo=UTC),
                         dt.datetime(2026, 6, 3, 12, 0, tzinfo=UTC)],
    })
    experiments = pl.DataFrame({"experiment_id": ["x"], "start_date": [dt.date(2026, 6, 2)]})
    shares = treated_share(activity, allocations, experiments, hours)
    treatment = shares.filter(pl.col("cell") == "treatment").sort("hour")["share"].to_numpy()
    # Nobody is treated before the start; b (30 of 100) from the start; c (40) from 3 June 12:00.
    assert treatment[:24].max() == 0.0
    assert treatment[24:60] == pytest.approx(np.full(36, 0.3))
    assert treatment[60:] == pytest.approx(np.full(36, 0.7))
    control = shares.filter(pl.col("cell") == "control").sort("hour")["share"].to_numpy()
    assert control[30] == pytest.approx(0.1)


def test_no_running_experiment_has_no_share():
    hours = hourly_grid(dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 6, 2, tzinfo=UTC))
    allocations = pl.DataFrame({"experiment_id": ["x"], "member_id": ["a"], "cell": ["treatment"],
                                "allocated_at": [dt.datetime(2026, 6, 1, tzinfo=UTC)]})
    later = pl.DataFrame({"experiment_id": ["y"], "start_date": [dt.date(2026, 6, 9)]})
    activity = pl.DataFrame({"member_id": ["a"], "root_requests": [5.0]})
    assert treated_share(activity, allocations, later, hours).height == 0


def _deltas(rows: list[dict]) -> pl.DataFrame:
    base = {"control_cell": "control", "ci_low": None, "ci_high": None, "q_value": 0.001, "significant": True,
            "work_delta": None, "work_ci_low": None, "work_ci_high": None, "work_q_value": None}
    return pl.DataFrame([base | r for r in rows])


def _project(deltas, models, load_by_service, shares, hours):
    load = {s: (np.arange(len(hours)), v) for s, v in load_by_service.items()}
    # The significance gate: these known answers price the measured deltas exactly
    # (shrinkage has its own tests).
    return project_cells(AS_OF, deltas, models, load, hours, shares, scale=30 / 28, fdr_q=0.05,
                         correlation=lambda *_: None, point_estimate="gate")


def _share_frame(hours, values: dict[tuple[str, str], float]) -> pl.DataFrame:
    if not values:
        return pl.DataFrame(schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "hour": pl.Datetime("us", "UTC"), "share": pl.Float64})
    return pl.concat([
        pl.DataFrame({"experiment_id": e, "cell": c, "hour": hours, "share": np.full(len(hours), s)})
        for (e, c), s in values.items()
    ]).with_columns(pl.col("hour").dt.replace_time_zone("UTC"))


def test_running_test_is_taken_out_of_the_baseline_and_the_bill_shows_only_the_rest():
    """A +50% treatment on a 70% ramp over 90% of members: 63% of traffic treated.
    Observed load 1.315 B; vs not shipping the cell adds 0.5 B; the bill only 0.185 B."""
    hours = hourly_grid(dt.datetime(2026, 6, 3, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    everyone_control = np.full(len(hours), 1000.0)
    observed = everyone_control * (1 + 0.63 * 0.5)
    deltas = _deltas([{"experiment_id": "x", "cell": "treatment", "service": "svc", "delta": 0.5,
                       "ci_low": 0.4, "ci_high": 0.6}])
    services, cells, universes = _project(
        deltas, {"svc": _linear_model("svc", 0.01)}, {"svc": observed},
        _share_frame(hours, {("x", "treatment"): 0.63}), hours,
    )
    cell = cells.row(0, named=True)
    baseline_dollars = 1000.0 * 0.01 * len(hours) * 30 / 28
    assert cell["incremental_cost_usd_30d"] == pytest.approx(0.5 * baseline_dollars)
    assert cell["bill_change_usd_30d"] == pytest.approx((1.5 - 1.315) * baseline_dollars)
    assert cell["ci_low_usd_30d"] < cell["incremental_cost_usd_30d"] < cell["ci_high_usd_30d"]
    assert cell["bill_ci_low_usd_30d"] < cell["bill_change_usd_30d"] < cell["bill_ci_high_usd_30d"]
    row = services.row(0, named=True)
    assert row["baseline_cost_usd_30d"] == pytest.approx(baseline_dollars)
    assert row["observed_cost_usd_30d"] == pytest.approx(1.315 * baseline_dollars)
    assert universes["baseline_cost"].to_numpy() == pytest.approx(np.full(len(hours), 10.0))


def test_without_treated_share_both_baselines_agree():
    hours = hourly_grid(dt.datetime(2026, 6, 3, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    deltas = _deltas([{"experiment_id": "x", "cell": "treatment", "service": "svc", "delta": 0.4,
                       "ci_low": 0.3, "ci_high": 0.5}])
    _, cells, _ = _project(deltas, {"svc": _linear_model("svc", 0.01)}, {"svc": np.full(len(hours), 1000.0)},
                           _share_frame(hours, {("x", "treatment"): 0.0}), hours)
    cell = cells.row(0, named=True)
    assert cell["bill_change_usd_30d"] == pytest.approx(cell["incremental_cost_usd_30d"])


def test_three_cells_each_priced_against_control_with_siblings_taken_out():
    """badge (+100%) and badge-large (+300%) each on 20% of traffic: observed = 1.8 B."""
    hours = hourly_grid(dt.datetime(2026, 6, 3, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    observed = np.full(len(hours), 1800.0)
    deltas = _deltas([
        {"experiment_id": "r", "cell": "badge", "service": "svc", "delta": 1.0, "ci_low": 0.9, "ci_high": 1.1},
        {"experiment_id": "r", "cell": "badge-large", "service": "svc", "delta": 3.0, "ci_low": 2.8, "ci_high": 3.2},
    ])
    _, cells, _ = _project(deltas, {"svc": _linear_model("svc", 0.01)}, {"svc": observed},
                           _share_frame(hours, {("r", "badge"): 0.2, ("r", "badge-large"): 0.2}), hours)
    by_cell = {r["cell"]: r for r in cells.iter_rows(named=True)}
    unit = 1000.0 * 0.01 * len(hours) * 30 / 28  # B priced over the window
    assert by_cell["badge"]["incremental_cost_usd_30d"] == pytest.approx(1.0 * unit)
    assert by_cell["badge-large"]["incremental_cost_usd_30d"] == pytest.approx(3.0 * unit)
    assert by_cell["badge"]["bill_change_usd_30d"] == pytest.approx((2.0 - 1.8) * unit)
    assert by_cell["badge-large"]["bill_change_usd_30d"] == pytest.approx((4.0 - 1.8) * unit)


def test_heavier_requests_are_priced_through_work_when_cost_follows_cpu():
    row = {"experiment_id": "hd", "cell": "hd", "service": "images", "control_cell": "control",
           "delta": 0.01, "ci_low": -0.03, "ci_high": 0.05, "q_value": 0.8, "significant": True,
           "work_delta": 0.6, "work_ci_low": 0.5, "work_ci_high": 0.7, "work_q_value": 1e-9}
    cpu = driver_effect(row, _linear_model("images", 0.01, driver="cpu_seconds"), 0.05)
    assert (cpu.metric, cpu.delta) == ("work", 0.6)
    # Cost follows requests, but only the work moved: requests x work per request.
    requests = driver_effect(row, _linear_model("images", 0.01), 0.05)
    assert (requests.metric, requests.delta) == ("work", 0.6)
    # Both moved and cost follows requests: the (less noisy) request delta.
    both = driver_effect(row | {"q_value": 1e-6, "delta": 0.3, "ci_low": 0.2, "ci_high": 0.4},
                         _linear_model("images", 0.01), 0.05)
    assert (both.metric, both.delta) == ("requests", 0.3)


def test_srm_tests_the_intended_uneven_split():
    members = [f"m{i}" for i in range(5000)]
    rng = np.random.default_rng(1)
    cells = rng.choice(["control", "treatment"], size=len(members), p=[0.4, 0.6])
    allocations = pl.DataFrame({"experiment_id": "x", "member_id": members, "cell": cells})
    experiments = pl.DataFrame({"experiment_id": ["x"], "control_cell": ["control"], "cells": ["control,treatment"],
                                "weights": ["[0.4, 0.6]"]})
    intended = sample_ratio_mismatch(allocations, experiments, intended_splits(experiments))
    assert not intended["mismatch"][0]
    even = sample_ratio_mismatch(allocations, experiments.with_columns(weights=pl.lit(None, pl.Utf8)),
                                 intended_splits(experiments.with_columns(weights=pl.lit(None, pl.Utf8))))
    assert even["mismatch"][0]


def _members(n: int, cell: str, work_per_request: float, rng) -> list[dict]:
    rows = []
    for i in range(n):
        requests = float(rng.poisson(rng.gamma(2.0, 5.0)))
        rows.append({"experiment_id": "hd", "cell": cell, "member_id": f"{cell}{i}", "service": "images",
                     "requests": requests, "work": requests * work_per_request * rng.lognormal(0, 0.1)})
    return rows


def test_heavier_requests_move_work_not_volume_in_one_fdr_family():
    from cost_attribution.attribution.deltas import requests_and_work_deltas
    from cost_attribution.attribution.stats import StatsConfig

    rng = np.random.default_rng(5)
    usage = pl.DataFrame(_members(1500, "control", 0.02, rng) + _members(1500, "hd", 0.032, rng))
    allocations = usage.select("experiment_id", "member_id", "cell")
    experiments = pl.DataFrame({"experiment_id": ["hd"], "control_cell": ["control"]})
    row = requests_and_work_deltas(usage, allocations, experiments, StatsConfig()).row(0, named=True)
    assert row["ci_low"] < 0 < row["ci_high"]  # as many requests
    assert row["work_ci_low"] < 0.6 < row["work_ci_high"]  # each 60% heavier
    assert row["work_q_value"] < 0.05 and row["significant"]


def _active_members(n, cell, calls_per_root, roots_multiplier, rng):
    usage, roots = [], []
    for i in range(n):
        member = f"{cell}{i}"
        sent = float(rng.poisson(rng.gamma(0.7, 40.0) * roots_multiplier))
        calls = float(rng.poisson(sent * calls_per_root))
        roots.append({"experiment_id": "x", "member_id": member, "service": "gateway", "root_requests": sent})
        usage.append({"experiment_id": "x", "cell": cell, "member_id": member, "service": "recs",
                      "requests": calls, "work": calls * 0.01})
    return usage, roots


def _root_world(treated_roots_multiplier: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    u_c, r_c = _active_members(2000, "control", 0.6, 1.0, rng)
    u_t, r_t = _active_members(2000, "treatment", 0.84, treated_roots_multiplier, rng)
    usage, roots = pl.DataFrame(u_c + u_t), pl.DataFrame(r_c + r_t)
    allocations = usage.select("experiment_id", "member_id", "cell")
    return usage, roots, allocations, pl.DataFrame({"experiment_id": ["x"], "control_cell": ["control"]})


def test_adjusting_on_root_requests_narrows_the_interval_and_keeps_the_truth():
    from cost_attribution.attribution.deltas import requests_and_work_deltas
    from cost_attribution.attribution.stats import StatsConfig

    usage, roots, allocations, experiments = _root_world(1.0)
    plain = requests_and_work_deltas(usage, allocations, experiments, StatsConfig()).row(0, named=True)
    adjusted = requests_and_work_deltas(usage, allocations, experiments, StatsConfig(), roots=roots).row(0, named=True)
    assert adjusted["covariate"] == "roots" and plain["covariate"] == "none"
    assert adjusted["ci_low"] < 0.4 < adjusted["ci_high"]
    assert (adjusted["ci_high"] - adjusted["ci_low"]) < 0.5 * (plain["ci_high"] - plain["ci_low"])


def test_a_cell_that_moves_root_requests_is_not_adjusted_on_them():
    from cost_attribution.attribution.deltas import requests_and_work_deltas
    from cost_attribution.attribution.stats import StatsConfig

    # Treatment members send 30% more root requests: the adjustment would hide that.
    usage, roots, allocations, experiments = _root_world(1.3)
    row = requests_and_work_deltas(usage, allocations, experiments, StatsConfig(), roots=roots).row(0, named=True)
    assert row["covariate"] == "none"
    assert row["ci_low"] < 1.3 * 1.4 - 1 < row["ci_high"]


def test_shrinkage_prices_an_aa_at_zero_and_keeps_a_real_effect_with_a_narrower_interval():
    """A day of one real +40% effect and ten services an A/A cell moves only by noise
    (about 1 se each): under shrinkage the A/A reads exactly $0 with an interval around 0
    far narrower than the gate's, whose interval carries every null service's whole noise;
    the real effect keeps (almost) its measured size."""
    hours = hourly_grid(dt.datetime(2026, 6, 3, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    noise = [0.05, -0.04, 0.03, -0.06, 0.02, 0.05, -0.03, 0.04, -0.05, 0.01]
    rows = [{"experiment_id": "real", "cell": "treatment", "service": "s0", "delta": 0.4, "se": 0.05,
             "ci_low": 0.3, "ci_high": 0.5}]
    rows += [{"experiment_id": "aa", "cell": "treatment", "service": f"s{i}", "delta": d, "se": 0.05,
              "ci_low": d - 0.1, "ci_high": d + 0.1, "q_value": 0.9, "significant": False}
             for i, d in enumerate(noise)]
    deltas = _deltas(rows)
    models = {f"s{i}": _linear_model(f"s{i}", 0.01) for i in range(10)}
    load = {f"s{i}": np.full(len(hours), 1000.0) for i in range(10)}
    shares = _share_frame(hours, {("real", "treatment"): 0.0, ("aa", "treatment"): 0.0})
    unit = 1000.0 * 0.01 * len(hours) * 30 / 28
    cells = {}
    for estimate in ("shrinkage", "gate"):
        _, frame, _ = project_cells(AS_OF, deltas, models, {s: (np.arange(len(hours)), v) for s, v in load.items()},
                                    hours, shares, scale=30 / 28, fdr_q=0.05, correlation=lambda *_: None,
                                    point_estimate=estimate)
        cells[estimate] = {r["experiment_id"]: r for r in frame.iter_rows(named=True)}
    aa, aa_gate = cells["shrinkage"]["aa"], cells["gate"]["aa"]
    assert aa["incremental_cost_usd_30d"] == 0.0 and aa["ci_low_usd_30d"] <= 0.0 <= aa["ci_high_usd_30d"]
    assert aa["ci_high_usd_30d"] - aa["ci_low_usd_30d"] < 0.5 * (aa_gate["ci_high_usd_30d"] - aa_gate["ci_low_usd_30d"])
    real = cells["shrinkage"]["real"]
    assert real["incremental_cost_usd_30d"] == pytest.approx(0.4 * unit, rel=0.05)
    assert real["ci_low_usd_30d"] < 0.4 * unit < real["ci_high_usd_30d"]


def _static_model(service: str, instances: int, unit_cost: float, peak: float, headroom: float) -> FittedCostModel:
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    capacity = peak * (1 + headroom)
    return FittedCostModel(
        service=service, scaling="static", cost_model="static", drift_detected=False, drift_reasons=[],
        model_error_pct=1.0, capacity_requests_per_hour=capacity, training_start=start, training_end=start,
        kind="static-capacity", features=["requests"],
        params={"static_headroom": headroom, "observed_peak_requests_per_hour": peak,
                "curve": {"form": "static", "instances": instances, "unit_cost": unit_cost,
                          "capacity_requests_per_hour": capacity}},
    )


def test_a_static_fleets_unknown_capacity_widens_the_interval_not_the_point():
    """8.5x the load of a 2-instance fleet that never resized: its capacity is assumed
    (headroom 0.5). The interval reaches what the cell costs if the fleet was full at its
    peak (the most the data allows) and if it had twice the assumed headroom."""
    hours = hourly_grid(dt.datetime(2026, 6, 3, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    load = np.full(len(hours), 1000.0)
    deltas = _deltas([{"experiment_id": "x", "cell": "treatment", "service": "legacy", "delta": 7.5,
                       "ci_low": 7.0, "ci_high": 8.0}])
    assumed = _static_model("legacy", 2, 0.5, peak=1000.0, headroom=0.5)
    services, cells, _ = _project(deltas, {"legacy": assumed}, {"legacy": load}, _share_frame(hours, {}), hours)
    row, cell = services.row(0, named=True), cells.row(0, named=True)
    to_30d = len(hours) * 30 / 28

    def priced(headroom: float, delta: float) -> float:
        per_instance = 1000.0 * (1 + headroom) / 2
        return (np.ceil(1000.0 * (1 + delta) / per_instance) - 2) * 0.5 * to_30d

    assert row["incremental_cost_usd_30d"] == pytest.approx(priced(0.5, 7.5))
    assert row["ci_high_usd_30d"] == pytest.approx(priced(0.0, 8.0))  # full at the peak: the most
    assert row["ci_low_usd_30d"] == pytest.approx(priced(1.0, 7.0))
    assert cell["ci_low_usd_30d"] <= row["ci_low_usd_30d"] < cell["incremental_cost_usd_30d"] < row["ci_high_usd_30d"] <= cell["ci_high_usd_30d"]
    # A fleet that scales has its capacity measured: nothing to widen.
    scaling, _, _ = _project(deltas, {"legacy": _linear_model("legacy", 0.01)}, {"legacy": load}, _share_frame(hours, {}), hours)
    assert scaling.row(0, named=True)["ci_high_usd_30d"] == pytest.approx(0.01 * 1000 * 8.0 * to_30d)


def test_share_errors_match_the_spread_of_shares_over_member_draws():
    """The relative standard error of a cell's share (share_errors) against the spread of
    the share over many draws of which members land in the cell (heavy-tailed activity)."""
    from cost_attribution.attribution.treated_share import share_errors

    rng = np.random.default_rng(11)
    n = 3000
    activity = pl.DataFrame({"member_id": [f"m{i}" for i in range(n)], "root_requests": rng.gamma(0.7, 60.0, n)})
    experiments = pl.DataFrame({"experiment_id": ["x"]})
    shares, predicted = [], []
    for _ in range(300):
        cells = rng.choice(["control", "treatment", "none"], size=n, p=[0.1, 0.1, 0.8])
        allocated = activity.with_columns(cell=pl.Series(cells)).filter(pl.col("cell") != "none")
        allocations = allocated.select(pl.lit("x").alias("experiment_id"), "member_id", "cell")
        errors = share_errors(activity, allocations, experiments).filter(pl.col("cell") == "treatment").row(0, named=True)
        shares.append(errors["share"])
        predicted.append(errors["share_rel_se"])
    observed = np.std(shares) / np.mean(shares)
    assert np.median(predicted) == pytest.approx(observed, rel=0.15)
    assert 0.05 < observed < 0.2  # a tenth of 3000 heavy-tailed members: several percent


def test_a_share_error_widens_what_production_can_claim():
    from cost_attribution.estimation.cell_costs import _with_share_error
    from cost_attribution.estimation.production_calibration import ProductionScale

    scale = ProductionScale(0.95, 0.0025, 144)
    from cost_attribution.estimation.cell_costs import Effect

    effects = [Effect("x", c, "svc", "requests", d, d - 1, d + 1, True) for c, d in (("a", 9.5), ("b", 20.0))]
    shares = {("x", "a"): np.full(10, 0.17), ("x", "b"): np.full(10, 0.16)}
    widened = _with_share_error(scale, effects, shares, "x", {("x", "a"): 0.06, ("x", "b"): 0.06})
    parts = np.array([0.17 * 9.5, 0.16 * 20.0])
    expected = np.hypot(0.0025, 0.95 * 0.06 * np.sqrt(np.sum(parts**2)) / parts.sum())
    assert widened.se == pytest.approx(expected) and widened.scale == 0.95
    assert _with_share_error(scale, effects, shares, "x", {}) == scale


def test_shares_in_the_warehouse_equal_the_member_frames():
    """treated_share.shares_in_warehouse (DuckDB, no member rows in Python) against
    treated_share and share_errors over the same members as frames: members allocated at
    the same instant, before the start, after the window; an experiment not started; members
    without activity and activity without an allocation."""
    import duckdb

    from cost_attribution.attribution.treated_share import share_errors, shares_in_warehouse

    rng = np.random.default_rng(3)
    start, end = dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 6, 8, tzinfo=UTC)
    members = [f"m{i:04d}" for i in range(3000)]
    activity_days = pl.DataFrame({
        "member_id": members * 2, "dt": [dt.date(2026, 6, 6)] * 3000 + [dt.date(2026, 6, 7)] * 3000,
        "root_requests": rng.gamma(0.7, 20.0, 6000) * (rng.random(6000) < 0.8),
    }).filter(~pl.col("member_id").is_in(members[2900:]))  # 100 allocated members never seen
    minutes = rng.integers(-3 * 24 * 60, 9 * 24 * 60, 6000) // 30 * 30  # many share an instant
    allocations = pl.DataFrame({
        "experiment_id": ["x"] * 3000 + ["y"] * 2000 + ["later"] * 1000,
        "member_id": members + members[:2000] + members[1000:2000],
        "cell": rng.choice(["control", "a", "b"], 6000).tolist(),
        "allocated_at": [start + dt.timedelta(minutes=int(m)) for m in minutes],
    })
    experiments = pl.DataFrame({"experiment_id": ["x", "y", "later"],
                                "start_date": [dt.date(2026, 6, 3), None, dt.date(2026, 7, 9)]})
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA raw")
    for name, frame in (("main.member_activity", activity_days), ("raw.allocations", allocations),
                        ("raw.experiments", experiments)):
        conn.register("_f", frame.to_arrow())
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM _f")
        conn.unregister("_f")

    shares, errors = shares_in_warehouse(conn, AS_OF, start, end)
    activity = activity_days.group_by("member_id").agg(pl.col("root_requests").sum())
    window = allocations.filter(pl.col("allocated_at") < end)
    started = experiments.filter(pl.col("start_date").is_null() | (pl.col("start_date") <= AS_OF))
    expected = treated_share(activity, window, started, hourly_grid(start, end)).sort("experiment_id", "cell", "hour")
    expected_errors = share_errors(activity, window, started)
    assert shares.select("experiment_id", "cell", "hour").equals(expected.select("experiment_id", "cell", "hour"))
    assert set(shares["experiment_id"]) == {"x", "y"}  # `later` has not started
    np.testing.assert_allclose(shares["share"].to_numpy(), expected["share"].to_numpy(), rtol=1e-12, atol=0)
    assert 0 < shares["share"].max() < 1
    assert errors.select("experiment_id", "cell").equals(expected_errors.select("experiment_id", "cell"))
    for column in ("share", "share_rel_se"):
        np.testing.assert_allclose(errors[column].to_numpy(), expected_errors[column].to_numpy(), rtol=1e-9)
