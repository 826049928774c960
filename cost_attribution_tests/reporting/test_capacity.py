"""Capacity plan: peak requests/s and instances, today and at 100% rollout."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from cost_attribution.estimation.capacity import capacity_plan, service_throughput

START = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def history(service: str, hours: int = 24 * 7, per_instance_hour: float = 360_000.0, change_at: int | None = None):
    t = np.arange(hours)
    requests = 2_000_000 + 1_500_000 * np.sin(2 * np.pi * t / 24)
    changed = t >= change_at if change_at is not None else np.zeros(hours, dtype=bool)
    capacity = np.where(changed, 2 * per_instance_hour, per_instance_hour)
    instances = np.ceil(requests / capacity).astype(int)
    return pl.DataFrame({
        "service": service,
        "hour": [START + dt.timedelta(hours=int(h)) for h in t],
        "requests": requests,
        "instances": instances,
        "sku": np.where(changed, "big", "small"),
    })


def test_baseline_and_rollout_instances():
    hist = history("api")
    deltas = pl.DataFrame({"experiment_id": ["x", "y"], "cell": ["treatment"] * 2, "service": ["api", "api"],
                           "delta": [0.5, 0.02], "ci_low": [0.3, -0.01], "ci_high": [0.7, 0.05],
                           "significant": [True, False]})
    plan = capacity_plan(hist, deltas)
    base = plan.filter(pl.col("scenario") == "baseline").row(0, named=True)
    assert base["peak_requests_per_s"] == pytest.approx(3_500_000 / 3600, rel=1e-6)
    assert base["requests_per_instance_s"] == pytest.approx(3_500_000 / 10 / 3600, rel=1e-6)  # 10 instances at peak
    assert base["instances_needed"] == 10
    rollout = plan.filter(pl.col("scenario") == "rollout")
    assert rollout["experiment_id"].to_list() == ["x"]  # only significant cells
    r = rollout.row(0, named=True)
    assert r["peak_requests_per_s"] == pytest.approx(1.5 * base["peak_requests_per_s"])
    assert (r["instances_needed_low"], r["instances_needed"], r["instances_needed_high"]) == (13, 15, 17)
    assert r["additional_instances"] == 5


def test_throughput_comes_from_the_current_instance_type():
    hist = history("recs", change_at=24 * 6)  # the last day runs on instances twice as big
    stats = service_throughput(hist)
    assert stats["sku"] == "big"
    assert stats["requests_per_instance_s"] == pytest.approx(3_500_000 / 5 / 3600, rel=1e-6)
    plan = capacity_plan(hist, pl.DataFrame(schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "service": pl.Utf8,
                                                    "delta": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                                                    "significant": pl.Boolean}))
    assert plan["instances_needed"].to_list() == [5]
