"""The closed loop's pure parts: realized change from a synthetic control, calibration,
the append-only decision log and experiments.yaml `shipped`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.estimation.outcomes import calibration, cell_outcome, service_outcome
from cost_attribution.ingest import catalogs
from cost_attribution.warehouse import append_new_rows

SHIP = dt.date(2026, 10, 20)
END = dt.datetime(2026, 10, 24)  # four post-ship days


@dataclass
class StepModel:
    """Cost of a fleet of instances serving `capacity` load units each (the truth's shape)."""

    capacity: float
    price: float = 1.0
    features: tuple = ("cpu_seconds",)

    def predict(self, load):
        return np.maximum(2, np.ceil(np.asarray(load) / self.capacity)) * self.price


def _world(delta: float, capacity_after: float, seed: int = 0):
    """Hourly history of a reference service and one moved service: the test ramps from 0 to
    a 40% share over the pre-ship weeks, the cell goes to 100% on SHIP, and the service's
    instances serve capacity_after from then on. Returns (history, shares, truth per 30d)."""
    rng = np.random.default_rng(seed)
    start = dt.datetime.combine(SHIP, dt.time()) - dt.timedelta(days=28)
    hours = np.datetime64(start, "h") + np.arange(32 * 24)
    t = np.arange(len(hours))
    ref = 1e6 * (1 + 0.4 * np.sin(2 * np.pi * t / 24)) * (1 + 0.002 * t / 24) * rng.lognormal(0, 0.01, len(t))
    post = hours >= np.datetime64(SHIP, "h")
    share = np.clip((t - 5 * 24) / (14 * 24), 0, 1) * 0.4
    share[post] = 1.0
    base = 0.02 * ref * rng.lognormal(0, 0.01, len(t))
    load = base * (1 + share * delta)
    before, after = StepModel(1_000.0), StepModel(capacity_after)
    cost = np.where(post, after.predict(load), before.predict(load))
    truth = (cost[post] - before.predict(base[post])).sum() * 720 / post.sum()
    stamps = pl.Series(hours.astype("datetime64[us]")).dt.replace_time_zone("UTC")
    history = pl.concat([
        pl.DataFrame({"service": "gateway", "hour": stamps, "requests": ref, "cpu_seconds": ref * 0.005,
                      "cost": StepModel(5_000.0).predict(ref * 0.005)}),
        pl.DataFrame({"service": "svc", "hour": stamps, "requests": load * 50, "cpu_seconds": load, "cost": cost}),
    ])
    shares = pl.DataFrame({"experiment_id": "exp", "cell": "t", "hour": stamps, "share": share})
    return history, shares, float(truth), before


def _decision(delta: float, low: float, high: float) -> pl.DataFrame:
    return pl.DataFrame({"as_of": [SHIP - dt.timedelta(days=1)], "experiment_id": ["exp"], "cell": ["t"],
                         "service": ["svc"], "delta_used": [delta], "delta_ci_low_used": [low],
                         "delta_ci_high_used": [high], "significant": [low > 0 or high < 0]})


@pytest.mark.parametrize("capacity_after", [1_000.0, 700.0, 1_250.0])
def test_realized_change_recovers_the_truth_with_or_without_a_cost_structure_change(capacity_after):
    history, shares, truth, model = _world(0.5, capacity_after)
    outcome = service_outcome("svc", "exp", "t", SHIP, model, history, ["gateway"], _decision(0.3, 0.1, 0.5),
                              shares, {"exp": ("t", SHIP)}, END)
    assert outcome.own_delta == pytest.approx(0.5, abs=0.03)  # the ramp corrects the traces' 0.3
    assert outcome.realized == pytest.approx(truth, rel=0.1)
    assert abs(outcome.realized - truth) < 3 * outcome.se + 0.02 * abs(truth)


def test_without_a_ramp_the_traces_prior_takes_the_share_out():
    history, shares, truth, model = _world(0.5, 700.0)
    flat = shares.with_columns(share=pl.when(pl.col("share") < 1).then(0.4).otherwise(1.0))
    outcome = service_outcome("svc", "exp", "t", SHIP, model, history, ["gateway"], _decision(0.45, 0.35, 0.55),
                              flat, {"exp": ("t", SHIP)}, END)
    assert outcome.own_delta == pytest.approx(0.45, abs=0.01)  # a constant share carries no information


def test_another_experiments_ramp_on_the_same_service_is_taken_out():
    """A second test ramps on the service while the shipped one ramps too: without its share
    the ratio would absorb it; with it (and a vague prior) both effects are fitted."""
    history, shares, truth, model = _world(0.5, 1_000.0, seed=1)
    hours = shares["hour"]
    t = np.arange(len(hours))
    other = np.clip((t - 12 * 24) / 48, 0, 1) * 0.5
    history = history.with_columns(
        cpu_seconds=pl.when(pl.col("service") == "svc").then(pl.col("cpu_seconds") * pl.Series(np.tile(1 - 0.3 * other, 2)))
        .otherwise(pl.col("cpu_seconds")))
    svc = history.filter(pl.col("service") == "svc")
    svc = svc.with_columns(cost=pl.Series(model.predict(svc["cpu_seconds"].to_numpy())))  # no structure change
    history = pl.concat([history.filter(pl.col("service") != "svc"), svc])
    shares = pl.concat([shares, pl.DataFrame({"experiment_id": "other", "cell": "t", "hour": hours, "share": other})])
    decisions = pl.concat([_decision(0.3, 0.0, 0.6), _decision(-0.1, -0.4, 0.2).with_columns(experiment_id=pl.lit("other"))])
    outcome = service_outcome("svc", "exp", "t", SHIP, model, history, ["gateway"], decisions,
                              shares, {"exp": ("t", SHIP)}, END)
    base = svc["cpu_seconds"].to_numpy() / (1 + shares.filter(pl.col("experiment_id") == "exp")["share"].to_numpy() * 0.5)
    post = (svc["hour"].dt.replace_time_zone(None) >= dt.datetime.combine(SHIP, dt.time())).to_numpy()
    truth = (model.predict(svc["cpu_seconds"].to_numpy()[post]) - model.predict(base[post])).sum() * 720 / post.sum()
    assert outcome.own_delta == pytest.approx(0.5, abs=0.03)
    assert outcome.realized == pytest.approx(truth, rel=0.1)


def _cell(projected, low, high, realized, se):
    decision = {"experiment_id": "e", "cell": "t", "ship_date": SHIP, "as_of": SHIP - dt.timedelta(days=1),
                "incremental_cost_usd_30d": projected, "ci_low_usd_30d": low, "ci_high_usd_30d": high}
    from cost_attribution.estimation.outcomes import ServiceOutcome

    return cell_outcome(SHIP, decision, [ServiceOutcome("svc", realized, se, 96, 0.1, 0.01, "gw")])


def test_verdicts_and_calibration_flag_misses_and_systematic_bias():
    on = _cell(1000, 800, 1200, 1050, 20)
    under = _cell(1000, 800, 1200, 2500, 20)
    over = _cell(1000, 800, 1200, 400, 20)
    assert (on["verdict"], under["verdict"], over["verdict"]) == ("on_target", "under_projected", "over_projected")
    assert under["error_pct"] == pytest.approx(-60.0)
    mixed = calibration(pl.DataFrame([on, under, over]))
    assert mixed.missed == ["e:t", "e:t"] and mixed.coverage == pytest.approx(1 / 3)
    assert not mixed.systematic_bias  # one over, one under: misses, not a bias
    biased = calibration(pl.DataFrame([_cell(1000, 900, 1100, r, 5) for r in (700, 720, 690, 710)]))
    assert biased.systematic_bias and biased.mean_signed_error_pct > 30
    assert calibration(pl.DataFrame([on, on, on])).systematic_bias is False
    assert calibration(pl.DataFrame()).n == 0


def test_decision_log_is_append_only():
    first = pl.DataFrame({"as_of": [SHIP], "experiment_id": ["e"], "cell": ["t"], "estimate": [1.0]})
    with duckdb.connect() as conn:
        assert append_new_rows(conn, "main.log", first, ["as_of", "experiment_id", "cell"]) == 1
        retrained = first.with_columns(estimate=pl.lit(2.0))
        new_day = retrained.with_columns(as_of=pl.lit(SHIP + dt.timedelta(days=1)))
        assert append_new_rows(conn, "main.log", pl.concat([retrained, new_day]), ["as_of", "experiment_id", "cell"]) == 1
        rows = conn.execute("SELECT as_of, estimate FROM main.log ORDER BY as_of").fetchall()
    assert rows == [(SHIP, 1.0), (SHIP + dt.timedelta(days=1), 2.0)]


def test_experiments_yaml_shipped_is_parsed_and_checked():
    frame = catalogs.parse_experiments({"experiments": [
        {"id": "a", "cells": ["control", "b"], "shipped": {"cell": "b", "date": dt.date(2026, 10, 20)}},
        {"id": "c", "shipped": {"cell": "treatment", "date": "2026-10-21"}},
        {"id": "d"},
    ]})
    assert frame["shipped_cell"].to_list() == ["b", "treatment", None]
    assert frame["shipped_date"].to_list() == [dt.date(2026, 10, 20), dt.date(2026, 10, 21), None]
    with pytest.raises(ValueError, match="shipped.cell 'control' is the control cell, not one of its treatment cells"):
        catalogs.parse_experiments({"experiments": [{"id": "a", "shipped": {"cell": "control", "date": "2026-10-20"}}]})
    with pytest.raises(ValueError, match="shipped.date: Field required"):
        catalogs.parse_experiments({"experiments": [{"id": "a", "shipped": {"cell": "treatment"}}]})
    with pytest.raises(ValueError, match="shipped.date: Input should be a valid date"):
        catalogs.parse_experiments({"experiments": [{"id": "a", "shipped": {"cell": "treatment", "date": "soon"}}]})
