"""The as-of statistics one experiment at a time: reading each experiment's member rows on
their own (member_usage) and computing its deltas on their own (deltas.cell_deltas) gives
exactly what one pass over every experiment gives, with one Benjamini-Hochberg family over
all of them (deltas.with_fdr)."""

from __future__ import annotations

import datetime as dt
import warnings

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution.call_graph import caller_shares
from cost_attribution.attribution.deltas import cell_deltas, deltas_by_experiment, requests_and_work_deltas, with_fdr
from cost_attribution.attribution.member_usage import each_experiment_usage, usage_scope
from cost_attribution.attribution.stats import StatsConfig, intended_splits
from cost_attribution.attribution.usage_moments import each_experiment_moments, served_requests
from cost_attribution_tests.worlds import warehouse_of

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
                              "service": "gateway", "period": "post",
                              # adjusted counts (1 / sampling rate), not whole numbers
                              "root_requests": rng.poisson(activity) / 0.015})
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
    conn = warehouse_of(_world())
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


def test_served_requests_are_the_outcome_rows_summed(warehouse):
    """What the projections weigh callers by: each cell's requests per service, read off
    the cross moments usage_deltas keeps, equal the member rows summed."""
    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    members = pl.concat([u.member_usage for u in each_experiment_usage(warehouse, scope)])
    summed = members.group_by("experiment_id", "cell", "service").agg(pl.col("requests").sum()).sort(pl.all())
    cross = pl.concat([moments.cross_moments() for moments in each_experiment_moments(warehouse, scope)])
    served = served_requests(cross)
    assert served.select("experiment_id", "cell", "service").equals(summed.select("experiment_id", "cell", "service"))
    np.testing.assert_allclose(served["requests"].to_numpy(), summed["requests"].to_numpy(), rtol=1e-12)
    edges = pl.DataFrame({"experiment_id": ["big", "big"], "cell": ["control", "control"],
                          "caller": ["gateway", "recs"], "callee": ["recs", "images"], "requests": [400.0, 150.0]})
    ours, reference = caller_shares(edges, served, scope.experiments), caller_shares(edges, members, scope.experiments)
    assert ours.keys() == reference.keys() and ours
    for key, callers in reference.items():
        assert [c for c, _ in ours[key]] == [c for c, _ in callers]
        np.testing.assert_allclose([share for _, share in ours[key]], [share for _, share in callers], rtol=1e-12)


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
    apart, srm = deltas_by_experiment(each_experiment_moments(warehouse, scope), config, scope.has_pre_period,
                                      intended_splits(scope.experiments))
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


# --- The sums computed in the warehouse (usage_moments) against member rows in memory ---

MOMENTS = ["sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"]


def _dirty_world():
    """_world with the accidents the statistics must leave out: a member allocated to both
    cells, usage rows naming the wrong cell, a negative and a NaN value."""
    world = _world(seed=5)
    alloc = world["raw.allocations"]
    world["raw.allocations"] = pl.concat([alloc, alloc.filter(pl.col("member_id") == "m3").with_columns(
        cell=pl.when(pl.col("cell") == "control").then(pl.lit("treatment")).otherwise(pl.lit("control")))])
    usage = world["main.member_service_usage"].with_row_index()
    world["main.member_service_usage"] = usage.with_columns(
        cell=pl.when(pl.col("index") % 97 == 0).then(pl.lit("treatment")).otherwise(pl.col("cell")),
        requests=pl.when(pl.col("index") == 10).then(-1.0).otherwise(pl.col("requests")),
        work=pl.when(pl.col("index") == 11).then(float("nan")).otherwise(pl.col("work")),
    ).drop("index")
    return world


@pytest.fixture(scope="module", params=["tidy", "dirty", "tidy, staged from its rows", "dirty, staged from its rows"])
def any_warehouse(request):
    """The worlds' member rows span two days, so the statistics read the kept totals
    (usage_window); 'staged from its rows' takes the path of a single day (NOT_KEPT)."""
    from cost_attribution.attribution import usage_window

    conn = warehouse_of(_world() if request.param.startswith("tidy") else _dirty_world())
    with pytest.MonkeyPatch.context() as patch:
        if "staged" in request.param:
            patch.setattr(usage_window, "_member_days", lambda conn, scope: 1)
        yield conn
    conn.close()


def _same_moments(ours: pl.DataFrame, reference: pl.DataFrame):
    keys = ["experiment_id", "cell", "service"]
    ours, reference = ours.sort(keys), reference.sort(keys)
    assert ours.select(keys).equals(reference.select(keys))
    for m in MOMENTS:
        np.testing.assert_allclose(ours[m].to_numpy(), reference[m].to_numpy(), rtol=1e-12, atol=1e-9, err_msg=m)


def test_warehouse_sums_equal_the_member_rows_sums(any_warehouse):
    """Every sum the deltas are made of, from DuckDB (usage_moments) and from the member
    rows in memory (deltas.FrameMoments over member_usage.experiment_usage), on a tidy
    world and on one with a member in two cells, rows naming the wrong cell and bad values."""
    from cost_attribution.attribution.deltas import FrameMoments
    from cost_attribution.attribution.member_usage import experiment_usage

    scope = usage_scope(any_warehouse, AS_OF, blind_spot_coverage=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dirty world's exclusions: counted in the next test
        for ours in each_experiment_moments(any_warehouse, scope):
            rows = experiment_usage(any_warehouse, scope, ours.experiment_id)
            frames = FrameMoments(rows.member_usage, rows.allocations, rows.experiments, rows.pre_usage, rows.roots)
            assert ours.cell_counts().sort("cell").equals(frames.cell_counts().sort("cell"))
            assert ours.has_roots == frames.has_roots == (ours.experiment_id == "big")
            for metric in ("requests", "work"):
                for covariate in ("none", "pre-period", *(["roots"] if ours.has_roots else [])):
                    _same_moments(ours.outcome(metric, covariate), frames.outcome(metric, covariate))
            _same_moments(ours.work_per_request(), frames.work_per_request())
            if ours.has_roots:
                _same_moments(ours.root_totals(), frames.root_totals())
                # The root service's own covariate (roots to other services) is exactly 0, so
                # its ratio is undefined and it falls back, as with the member rows.
                gateway = ours.outcome("requests", "roots").filter(pl.col("service") == "gateway")
                assert gateway["sum_x"].to_list() == [0.0, 0.0]


_PRODUCTS = [("requests_requests", "r", "r"), ("requests_work", "r", "w"), ("work_requests", "w", "r"),
             ("work_work", "w", "w")]


def _member_products(member_usage: pl.DataFrame, allocations: pl.DataFrame) -> pl.DataFrame:
    """The cross moments written out from member rows: cleaned as the statistics clean them
    (a member in two cells left out; a row naming another cell left out; per member and
    service its rows summed, then a value that is NaN, infinite or negative left out of every
    sum), each pair of services a <= b that a member has rows at, products of valid values."""
    cells = (allocations.unique(["member_id", "cell"]).group_by("member_id")
             .agg(pl.col("cell").first(), pl.len().alias("n")))
    clean = (member_usage.join(cells.filter(pl.col("n") == 1).drop("n"), on="member_id", suffix="_allocated")
             .filter(pl.col("cell").is_null() | (pl.col("cell") == pl.col("cell_allocated")))
             .group_by(pl.col("cell_allocated").alias("cell"), "member_id", "service")
             .agg(pl.col("requests").sum(), pl.col("work").sum()))
    valid = clean.with_columns(
        r=pl.when(pl.col("requests").is_finite() & (pl.col("requests") >= 0)).then(pl.col("requests")),
        w=pl.when(pl.col("work").is_finite() & (pl.col("work") >= 0)).then(pl.col("work")))
    pairs = (valid.join(valid, on=["cell", "member_id"], suffix="_b").filter(pl.col("service_b") >= pl.col("service"))
             .group_by("cell", pl.col("service").alias("service_a"), "service_b")
             .agg(*[(pl.col(a) * pl.col(f"{b}_b")).sum().alias(name) for name, a, b in _PRODUCTS],
                  *[(pl.col(a) * pl.col(f"{b}_b")).count().alias(f"{name}_n") for name, a, b in _PRODUCTS]))
    for name, _, _ in _PRODUCTS:  # a sum of no value is null, as SQL's
        pairs = pairs.with_columns(pl.when(pl.col(f"{name}_n") > 0).then(pl.col(name)).alias(name))
    sums = valid.group_by("cell", pl.col("service").alias("service_a")).agg(
        requests_a=pl.when(pl.col("r").count() > 0).then(pl.col("r").sum()),
        work_a=pl.when(pl.col("w").count() > 0).then(pl.col("w").sum()))
    return pairs.join(sums, on=["cell", "service_a"]).drop([f"{name}_n" for name, _, _ in _PRODUCTS])


@pytest.mark.parametrize("batch_members", [None, 7])
def test_cross_moments_equal_the_member_rows_products(any_warehouse, batch_members, monkeypatch):
    """The cross moments (one row per member pivoted in DuckDB, products summed by numpy a
    batch at a time: member_vectors) against the products written out from member rows, on
    the tidy and the dirty world, in one batch and in batches of 7 members."""
    from cost_attribution.attribution import member_vectors
    from cost_attribution.attribution.member_usage import experiment_usage

    if batch_members:
        monkeypatch.setattr(member_vectors, "BATCH_VALUES", batch_members * 16)  # 5 services: 1 + 3 x 5 a member
    scope = usage_scope(any_warehouse, AS_OF, blind_spot_coverage=0.5)
    keys = ["cell", "service_a", "service_b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for moments in each_experiment_moments(any_warehouse, scope):
            rows = experiment_usage(any_warehouse, scope, moments.experiment_id, covariates=False)
            reference = _member_products(rows.member_usage, rows.allocations).sort(keys)
            ours = moments.cross_moments()
            members = dict(moments.cell_counts().select("cell", "n").iter_rows())
            assert all(n == members[cell] for cell, n in ours.select("cell", "members").iter_rows())
            ours = ours.select(reference.columns).sort(keys)
            assert ours.select(keys).equals(reference.select(keys))
            for column in reference.columns[3:]:
                assert ours[column].is_null().to_list() == reference[column].is_null().to_list(), column
                np.testing.assert_allclose(ours[column].fill_null(0).to_numpy(), reference[column].fill_null(0).to_numpy(),
                                           rtol=1e-12, err_msg=column)


def test_dirty_rows_are_counted_in_the_warning():
    conn = warehouse_of(_dirty_world())
    scope = usage_scope(conn, AS_OF, blind_spot_coverage=0.5)
    with pytest.warns(UserWarning, match=r"'big' stats excluded 1 members allocated to more than one cell") as seen:
        big = next(each_experiment_moments(conn, scope))
    assert big.excluded["usage rows of members not (unambiguously) allocated to this cell"] > 10
    assert big.excluded["usage rows with a null, NaN, infinite or negative value"] >= 1
    assert "usage rows" in str(seen[0].message)


def test_the_correlation_from_warehouse_sums_equals_the_member_matrix(warehouse):
    from cost_attribution.attribution.member_usage import experiment_usage
    from cost_attribution.attribution.stats import delta_covariance
    from cost_attribution.attribution.usage_moments import WarehouseMoments, covariance_from_cross_moments

    scope = usage_scope(warehouse, AS_OF, blind_spot_coverage=0.5)
    services, work_services = ["gateway", "recs", "images", "blind"], ["recs"]
    rows = experiment_usage(warehouse, scope, "big", covariates=False)
    priced = rows.member_usage.with_columns(
        pl.when(pl.col("service").is_in(work_services)).then(pl.col("work")).otherwise(pl.col("requests")).alias("requests"))
    reference = delta_covariance(priced, rows.allocations, "big", "treatment", "control", services)
    moments = WarehouseMoments(warehouse, scope, "big")
    try:
        ours = moments.service_covariance("treatment", "control", services, work_services)
        cross = moments.cross_moments()
    finally:
        moments.close()
    np.testing.assert_allclose(ours, reference, rtol=1e-9)
    # What usage_deltas stores serves any pricing of the services (cost_projections picks it later).
    for priced_on_work in ([], ["recs", "gateway"], services):
        on_work = delta_covariance(
            rows.member_usage.with_columns(pl.when(pl.col("service").is_in(priced_on_work)).then(pl.col("work"))
                                           .otherwise(pl.col("requests")).alias("requests")),
            rows.allocations, "big", "treatment", "control", services)
        np.testing.assert_allclose(
            covariance_from_cross_moments(cross, "treatment", "control", services, priced_on_work), on_work, rtol=1e-9)
    assert np.all(ours[~np.eye(len(services), dtype=bool)] > 0)  # services share members: correlated


def test_projections_stop_when_the_day_has_deltas_but_no_cross_moments():
    """A day measured before usage_deltas kept its cross moments: cost_projections would price
    every cell as if its services were uncorrelated. It stops and names what to rerun."""
    import datetime as dt

    from cost_attribution.attribution.usage_moments import CROSS_MOMENT_SCHEMA, CROSS_MOMENTS_TABLE
    from cost_attribution.estimation.assets import cross_moments_by_experiment

    day = dt.date(2026, 3, 9)
    deltas = pl.DataFrame({"experiment_id": ["big", "small"]})
    conn = duckdb.connect()
    with pytest.raises(RuntimeError, match=r"experiments \['big', 'small'\].*materialize usage_deltas for partition 2026-03-09"):
        cross_moments_by_experiment(conn, day, deltas)
    conn.execute("CREATE SCHEMA IF NOT EXISTS main")
    stored = pl.DataFrame({"experiment_id": ["big"], "cell": ["control"], "members": [3]}, schema_overrides={
        "members": pl.Int64}).with_columns(
        *[pl.lit(None, dtype=t).alias(c) for c, t in CROSS_MOMENT_SCHEMA.items() if c not in ("experiment_id", "cell", "members")]
    ).select(pl.lit(day).alias("as_of"), *CROSS_MOMENT_SCHEMA)
    conn.register("_stored", stored.to_arrow())
    conn.execute(f"CREATE TABLE {CROSS_MOMENTS_TABLE} AS SELECT * FROM _stored")
    with pytest.raises(RuntimeError, match=r"experiments \['small'\]"):
        cross_moments_by_experiment(conn, day, deltas)
    assert set(cross_moments_by_experiment(conn, day, deltas.head(1))) == {"big"}


def test_the_pre_period_reaches_back_pre_period_days_before_the_start_and_no_further():
    """Rows older than the start less pre_period_days are not read: not as the covariate,
    not for the scope (so a long history costs the as-of analyses nothing)."""
    world = _world()
    usage = world["main.member_service_usage"]
    old = usage.filter(pl.col("experiment_id") == "big", pl.col("period") == "pre").with_columns(
        dt=pl.lit(dt.date(2026, 2, 1)), requests=pl.col("requests") * 1000, source=pl.lit("client"))
    world["main.member_service_usage"] = pl.concat([usage, old])
    conn = warehouse_of(world)

    def pre_requests(days: int):
        scope = usage_scope(conn, AS_OF, blind_spot_coverage=0.5, pre_period_days=days)
        big = experiment_usage(conn, scope, "big")
        return scope, big.pre_usage["pre_requests"].sum()

    from cost_attribution.attribution.member_usage import experiment_usage
    reference = usage_scope(warehouse_of(_world()), AS_OF, blind_spot_coverage=0.5)
    scope, near = pre_requests(14)  # 2026-03-01 less 14 days: 2026-02-15
    assert near == experiment_usage(warehouse_of(_world()), reference, "big").pre_usage["pre_requests"].sum()
    assert scope.window_start == reference.window_start == dt.date(2026, 3, 1)
    assert scope.client_measured == reference.client_measured  # the old CLIENT rows not seen either
    far_scope, far = pre_requests(60)
    assert far > 10 * near and far_scope.window_start == dt.date(2026, 2, 1)
    staged = each_experiment_moments(conn, scope)  # kept: its rows are dropped when it goes
    moments = next(staged)
    assert moments.outcome("requests", "pre-period")["sum_x"].sum() == pytest.approx(near)
