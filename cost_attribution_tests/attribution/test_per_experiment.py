"""The as-of statistics one experiment at a time: reading each experiment's member rows on
their own (member_usage) and computing its deltas on their own (deltas.cell_deltas) gives
exactly what one pass over every experiment gives, with one Benjamini-Hochberg family over
all of them (deltas.with_fdr)."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution.call_graph import caller_shares
from cost_attribution.attribution.deltas import cell_deltas, deltas_by_experiment, requests_and_work_deltas, with_fdr
from cost_attribution.attribution.member_usage import each_experiment_usage, served_requests, usage_scope
from cost_attribution.attribution.stats import StatsConfig, intended_splits

AS_OF = dt.date(2026, 3, 3)
# An id with a quote: read through a bound parameter, never formatted into the SQL.
ODD = "it's-new"


def _world(seed: int = 11):
    """Three experiments over five services: `big` has pre-period rows and roots and
    moves `recs` by +30%; `odd` moves nothing; `late` starts after the as-of day."""
    rng = np.random.default_rng(seed)
    usage, roots, allocations = [], [], []
    for experiment, n, effect in (("big", 1500, 1.3), (ODD, 900, 1.0), ("late", 50, 1.0)):
        for i in range(n):
            cell = "control" if i % 2 else "treatment"
            member = f"m{i}"  # members are in several experiments at once, as in production
            allocations.append({"experiment_id": experiment, "member_id": member, "cell": cell,
                                "allocated_at": dt.datetime(2026, 3, 1, 6)})
            activity = rng.gamma(0.8, 30.0)
            for service in ("gateway", "recs", "images", "search", "blind"):
                mean = activity * {"gateway": 1.0, "recs": 0.6, "images": 0.3, "search": 0.05, "blind": 0.2}[service]
                if service == "recs" and cell == "treatment":
                    mean *= effect
                for period, day in (("pre", dt.date(2026, 3, 1)), ("post", dt.date(2026, 3, 2))):
                    if period == "pre" and experiment != "big":
                        continue
                    requests = float(rng.poisson(mean))
                    if requests == 0:
                        continue
                    source = "client" if service == "blind" and rng.random() < 0.7 else "server"
                    usage.append({"dt": day, "experiment_id": experiment, "cell": cell, "member_id": member,
                                  "service": service, "source": source, "period": period, "requests": requests,
                                  "work": requests * 0.01 * rng.lognormal(0, 0.2), "busy": requests * 0.005})
            if experiment != ODD:
                roots.append({"dt": dt.date(2026, 3, 2), "experiment_id": experiment, "member_id": member,
                              "service": "gateway", "period": "post", "root_requests": float(rng.poisson(activity))})
    experiments = pl.DataFrame({
        "experiment_id": ["big", ODD, "late"], "control_cell": ["control"] * 3,
        "cells": ["control,treatment"] * 3, "weights": [None, "[0.5, 0.5]", None],
        "start_date": [dt.date(2026, 3, 1), dt.date(2026, 3, 1), dt.date(2026, 3, 9)],
    })
    coverage = pl.DataFrame({"dt": [dt.date(2026, 3, 2)] * 5, "service": ["gateway", "recs", "images", "search", "blind"],
                             "attributed_requests": [95.0, 95.0, 95.0, 95.0, 5.0], "adjusted_requests": [100.0] * 5})
    return {"raw.experiments": experiments, "raw.allocations": pl.DataFrame(allocations),
            "main.member_service_usage": pl.DataFrame(usage), "main.member_roots": pl.DataFrame(roots),
            "main.service_coverage": coverage}


@pytest.fixture(scope="module")
def warehouse():
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA raw")
    for name, frame in _world().items():
        conn.register("_f", frame.to_arrow())
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM _f")
        conn.unregister("_f")
    yield conn
    conn.close()


def test_each_experiment_reads_only_its_own_rows_measured_as_scoped(warehouse):
    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    assert scope.experiments["experiment_id"].to_list() == ["big", ODD]  # `late` has not started
    assert scope.client_measured == ["blind"] and scope.has_pre_period
    usages = list(each_experiment_usage(warehouse, scope))
    assert [u.experiments["experiment_id"].to_list() for u in usages] == [["big"], [ODD]]
    big, odd = usages
    for usage, experiment in ((big, "big"), (odd, ODD)):
        for frame in (usage.allocations, usage.member_usage, usage.pre_usage, usage.roots):
            assert set(frame["experiment_id"].unique().to_list()) <= {experiment}
    assert big.allocations.height == 1500 and odd.allocations.height == 900
    # The blind service from its callers' CLIENT spans only, every other from SERVER spans.
    sources = big.member_usage.group_by("service").agg(pl.col("measured_from").unique())
    assert {r["service"]: r["measured_from"] for r in sources.iter_rows(named=True)} == {
        "blind": ["client"], "gateway": ["server"], "recs": ["server"], "images": ["server"], "search": ["server"]}
    # Usage before the allocation is the covariate, never the outcome.
    rows = pl.from_arrow(warehouse.sql(
        "SELECT period, sum(requests) AS r FROM main.member_service_usage "
        "WHERE experiment_id = 'big' AND source = 'server' AND service = 'recs' GROUP BY ALL").to_arrow_table())
    by_period = dict(rows.iter_rows())
    recs = big.member_usage.filter(pl.col("service") == "recs")["requests"].sum()
    assert recs == by_period["post"]
    assert big.pre_usage.filter(pl.col("service") == "recs")["pre_requests"].sum() == by_period["pre"]
    assert odd.pre_usage.height == 0 and odd.roots.height == 0


def test_served_requests_are_the_outcome_rows_summed_in_duckdb(warehouse):
    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    members = pl.concat([u.member_usage for u in each_experiment_usage(warehouse, scope)])
    summed = members.group_by("experiment_id", "cell", "service").agg(pl.col("requests").sum()).sort(pl.all())
    assert served_requests(warehouse, scope).sort(pl.all()).equals(summed)
    edges = pl.DataFrame({"experiment_id": ["big", "big"], "cell": ["control", "control"],
                          "caller": ["gateway", "recs"], "callee": ["recs", "images"], "requests": [400.0, 150.0]})
    assert caller_shares(edges, served_requests(warehouse, scope), scope.experiments) == caller_shares(
        edges, members, scope.experiments)


def test_deltas_one_experiment_at_a_time_equal_one_pass_over_all(warehouse):
    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    usages = list(each_experiment_usage(warehouse, scope))
    config = StatsConfig()
    whole = requests_and_work_deltas(
        pl.concat([u.member_usage for u in usages]).drop("measured_from"),
        pl.concat([u.allocations for u in usages]), scope.experiments, config,
        pre_usage=pl.concat([u.pre_usage for u in usages]), roots=pl.concat([u.roots for u in usages]),
    )
    parts = [cell_deltas(u.member_usage.drop("measured_from"), u.allocations, u.experiments, config,
                         pre_usage=u.pre_usage, roots=u.roots) for u in usages]
    apart, srm = deltas_by_experiment(iter(usages), config, scope.has_pre_period, intended_splits(scope.experiments))
    assert apart.columns == [*whole.columns, "measured_from"] and apart.height == whole.height == 10
    assert srm["experiment_id"].to_list() == ["big", ODD] and not srm["mismatch"].any()
    assert set(apart.filter(pl.col("service") == "blind")["measured_from"]) == {"client"}
    assert set(apart["covariate"].to_list()) == {"roots", "pre-period"}  # `odd` has no roots: its fallback
    for column, dtype in whole.schema.items():
        if dtype == pl.Float64:
            np.testing.assert_allclose(apart[column].to_numpy(), whole[column].to_numpy(), rtol=1e-12, atol=1e-15)
        else:
            assert apart[column].equals(whole[column]), column
    # One BH family: the q-values are not each experiment's own.
    own = pl.concat(parts).sort("experiment_id", "cell", "service")
    assert not np.allclose(own["q_value"].to_numpy(), apart["q_value"].to_numpy(), rtol=1e-6, atol=0.0, equal_nan=True)
    recs = apart.filter((pl.col("experiment_id") == "big") & (pl.col("service") == "recs")).row(0, named=True)
    assert recs["significant"] and recs["ci_low"] < 0.3 < recs["ci_high"]


def test_no_experiments_give_an_empty_frame_of_the_delta_schema():
    from cost_attribution.attribution.deltas import DELTA_SCHEMA

    assert with_fdr([], StatsConfig()).schema == pl.Schema(DELTA_SCHEMA)


def test_the_root_covariate_a_few_services_at_a_time_changes_nothing(warehouse, monkeypatch):
    import cost_attribution.attribution.deltas as deltas

    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    big = next(each_experiment_usage(warehouse, scope))
    args = (big.member_usage.drop("measured_from"), big.allocations, big.experiments, StatsConfig())
    whole = with_fdr([cell_deltas(*args, pre_usage=big.pre_usage, roots=big.roots)], StatsConfig())
    monkeypatch.setattr(deltas, "COVARIATE_ROWS", 2 * big.roots["member_id"].n_unique())
    assert len(deltas._service_batches(big.member_usage, big.roots)) == 3  # 5 services, 2 a batch
    batched = with_fdr([cell_deltas(*args, pre_usage=big.pre_usage, roots=big.roots)], StatsConfig())
    assert batched["covariate"].to_list() == whole["covariate"].to_list() and "roots" in whole["covariate"].to_list()
    for column, dtype in whole.schema.items():
        if dtype == pl.Float64:
            np.testing.assert_allclose(batched[column].to_numpy(), whole[column].to_numpy(), rtol=1e-12, atol=1e-15)
