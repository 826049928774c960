"""The usage statistics' member totals carried from day to day (usage_window) are the totals
summed again from the member rows: on every day of a world where members are allocated on
many days (before and after the start, so a member's earlier rows become its pre-period
the day it is allocated), an experiment starts late, one has no start and a member turns
up in a second cell; and whenever what they were made of changes under them."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution.carried_window import STATE_TABLE
from cost_attribution.attribution.member_usage import usage_scope
from cost_attribution.attribution.carried_window import refresh
from cost_attribution.attribution.usage_window import (
    NOT_KEPT, USAGE_PRE, USAGE_ROOTS, USAGE_TOTALS, USAGE_UNCLAIMED, refresh_usage, usage_window)
from cost_attribution_tests.worlds import assert_same_tables, warehouse_of

DAY0 = dt.date(2026, 5, 1)
DAYS = [DAY0 + dt.timedelta(days=i) for i in range(8)]
# experiment -> start day index (None: no start date) and the day indexes members are allocated on
EXPERIMENTS = {"ramp": (2, range(0, 6)), "late": (5, range(3, 8)), "open": (None, range(1, 7))}
KEPT = (USAGE_TOTALS, USAGE_PRE, USAGE_ROOTS)


def _world(seed: int = 5) -> dict[str, pl.DataFrame]:
    """Member rows as the span models' views give them: a member's whole days before its
    allocation day as 'pre', after it as 'post', the allocation day split in both; from
    SERVER spans (with work) and CLIENT spans (without); root requests while treated."""
    rng = np.random.default_rng(seed)
    allocations, usage, roots = [], [], []
    for experiment, (_, alloc_days) in EXPERIMENTS.items():
        for m in range(40):
            member, cell = f"m{m}", ("control", "treatment")[m % 2]
            day = DAYS[rng.choice(list(alloc_days))]
            allocations.append({"experiment_id": experiment, "member_id": member, "cell": cell,
                                "allocated_at": dt.datetime.combine(day, dt.time(12))})
            for d in DAYS:
                if rng.random() < 0.25:
                    continue
                periods = ["pre"] if d < day else ["post"] if d > day else ["pre", "post"]
                for period in periods:
                    for service, source in (("api", "server"), ("db", "server"), ("db", "client")):
                        usage.append({"dt": d, "experiment_id": experiment, "cell": cell, "member_id": member,
                                      "service": service, "source": source,
                                      "requests": float(rng.poisson(5)) / 0.1, "sampled_spans": 5,
                                      "work": None if source == "client" else float(rng.gamma(2.0, 0.3)),
                                      "busy": None, "period": period})
                    if period == "post":
                        roots.append({"dt": d, "experiment_id": experiment, "cell": cell, "member_id": member,
                                      "service": "api", "root_requests": float(rng.poisson(3)), "period": "post"})
    # m3 of 'open' turns up in the other cell on day 5: it leaves every sum from then on.
    allocations.append({"experiment_id": "open", "member_id": "m3", "cell": "control",
                        "allocated_at": dt.datetime.combine(DAYS[5], dt.time(9))})
    experiments = pl.DataFrame({
        "experiment_id": list(EXPERIMENTS), "control_cell": ["control"] * 3, "cells": ["control,treatment"] * 3,
        "start_date": [None if start is None else DAYS[start] for start, _ in EXPERIMENTS.values()],
    }, schema_overrides={"start_date": pl.Date})
    coverage = pl.DataFrame([{"dt": d, "service": service, "adjusted_requests": 100.0, "attributed_requests": 90.0}
                             for d in DAYS for service in ("api", "db")])
    return {"raw.experiments": experiments, "raw.allocations": pl.DataFrame(allocations),
            "main.service_coverage": coverage,
            "main.member_service_usage": pl.DataFrame(usage, schema_overrides={"work": pl.Float64, "busy": pl.Float64}),
            "main.member_roots": pl.DataFrame(roots)}


def _scope(conn, day: dt.date, client: float = 0.0):
    # Coverage is 90% everywhere: blind_spot_coverage 1.0 measures 'db' (which has callers) from them.
    return usage_scope(conn, day, blind_spot_coverage=client)


def _kept(conn) -> dict[str, pl.DataFrame]:
    out = {}
    for table in KEPT:
        frame = pl.from_arrow(conn.sql(f"SELECT * FROM {table}").to_arrow_table())
        out[table] = frame.sort([c for c in frame.columns if frame[c].dtype != pl.Float64], nulls_last=True)
    unclaimed = conn.execute(f"SELECT experiment_id, sum(rows) FROM {USAGE_UNCLAIMED} GROUP BY ALL ORDER BY ALL")
    out[USAGE_UNCLAIMED] = pl.DataFrame(unclaimed.fetchall(), schema=["experiment_id", "rows"], orient="row")
    return out


def _forget(conn) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (window_name VARCHAR PRIMARY KEY, as_of DATE, digest VARCHAR)")
    conn.execute(f"DELETE FROM {STATE_TABLE} WHERE window_name = 'usage'")


def _made_again(conn, day: dt.date, client: float = 0.0) -> dict[str, pl.DataFrame]:
    _forget(conn)
    scope = _scope(conn, day, client)
    assert refresh(conn, usage_window(scope), day) == "rebuilt"  # made even of a single day
    return _kept(conn)


@pytest.fixture()
def world():
    return _world()


@pytest.mark.parametrize("client", [0.0, 1.0], ids=["server-measured", "db-from-its-callers"])
def test_day_by_day_totals_equal_the_totals_made_again(world, client):
    carried, fresh = warehouse_of(world), warehouse_of(world)
    seen = []
    for day in DAYS:
        seen.append(refresh_usage(carried, _scope(carried, day, client)))
        if seen[-1] != NOT_KEPT:
            assert_same_tables(_kept(carried), _made_again(fresh, day, client))
    # The first day's totals are its rows: staged as they are, not kept (usage_window.NOT_KEPT).
    assert seen == [NOT_KEPT, "rebuilt"] + ["advanced"] * (len(DAYS) - 2)
    assert refresh_usage(carried, _scope(carried, DAYS[-1], client)) == "kept"
    totals = _kept(carried)
    # What they hold: the members allocated by the day, 'late' only from its start less the
    # pre-period, the member in two cells in none of 'open''s sums from day 5 on.
    assert totals[USAGE_TOTALS].filter(pl.col("experiment_id") == "late").height > 0
    assert totals[USAGE_PRE].filter(pl.col("experiment_id") == "ramp")["pre_requests"].sum() > 0
    assert totals[USAGE_TOTALS].filter(pl.col("experiment_id") == "open", pl.col("member_id") == "m3").height == 0
    assert totals[USAGE_UNCLAIMED].filter(pl.col("experiment_id") == "open")["rows"].sum() > 0
    assert totals[USAGE_ROOTS]["root_requests"].sum() > 0
    measured = set(totals[USAGE_TOTALS].filter(pl.col("service") == "db")["measured_from"].to_list())
    assert measured == {"client" if client else "server"}


def test_the_totals_are_the_statistics_rows_summed(world):
    """Against the member rows summed directly: an experiment's treated usage per member,
    cell and service (its allocation by the day, the allocation day's 'post' half)."""
    conn = warehouse_of(world)
    for day in DAYS[:6]:
        refresh_usage(conn, _scope(conn, day))
    day = DAYS[5]
    allocated = (world["raw.allocations"].filter(pl.col("allocated_at").dt.date() <= day)
                 .group_by("experiment_id", "member_id").agg(pl.col("cell").n_unique().alias("cells"))
                 .filter(pl.col("cells") == 1))
    rows = (world["main.member_service_usage"]
            .filter(pl.col("dt") <= day, pl.col("period") == "post", pl.col("experiment_id") == "ramp",
                    pl.col("dt") >= DAYS[2], pl.col("source") == "server")
            .join(allocated, on=["experiment_id", "member_id"]))
    expected = rows.group_by("member_id", "cell", "service").agg(pl.col("requests").sum())
    kept = _kept(conn)[USAGE_TOTALS].filter(pl.col("experiment_id") == "ramp").select("member_id", "cell", "service",
                                                                                       "requests")
    joined = expected.join(kept, on=["member_id", "cell", "service"], how="full", coalesce=True)
    assert joined.height == expected.height == kept.height
    np.testing.assert_allclose(joined["requests"].to_numpy(), joined["requests_right"].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("change", ["a day re-ingested", "a late allocation", "a start moved", "sources changed"])
def test_a_change_to_what_the_totals_were_made_of_makes_them_again(world, change):
    conn = warehouse_of(world)
    for day in DAYS[:4]:
        refresh_usage(conn, _scope(conn, day))
    client = 0.0
    if change == "a day re-ingested":
        conn.execute("UPDATE main.member_service_usage SET requests = requests + 1 WHERE dt = ? AND member_id = 'm1'",
                     [DAYS[2]])
    elif change == "a late allocation":
        conn.execute("INSERT INTO raw.allocations VALUES ('ramp', 'm999', 'control', ?)",
                     [dt.datetime.combine(DAYS[0], dt.time(1))])
        conn.execute("INSERT INTO main.member_service_usage SELECT * REPLACE ('m999' AS member_id) "
                     "FROM main.member_service_usage WHERE member_id = 'm1' AND experiment_id = 'ramp'")
    elif change == "a start moved":
        conn.execute("UPDATE raw.experiments SET start_date = ? WHERE experiment_id = 'ramp'", [DAYS[1]])
    else:
        client = 1.0
    assert refresh_usage(conn, _scope(conn, DAYS[4], client)) == "rebuilt"
    assert_same_tables(_kept(conn), _made_again(warehouse_of({name: pl.from_arrow(conn.sql(f"SELECT * FROM {name}")
                                                                              .to_arrow_table())
                                                        for name in world}), DAYS[4], client))


def test_a_skipped_or_earlier_day_makes_them_again(world):
    conn = warehouse_of(world)
    refresh_usage(conn, _scope(conn, DAYS[2]))
    assert refresh_usage(conn, _scope(conn, DAYS[4])) == "rebuilt"  # DAYS[3] skipped
    assert refresh_usage(conn, _scope(conn, DAYS[1])) == "rebuilt"
    assert_same_tables(_kept(conn), _made_again(warehouse_of(world), DAYS[1]))


@pytest.mark.slow  # runs the small live world through the pipeline
def test_on_the_span_models_tables_day_by_day_equals_made_again(small_live_world_run, tmp_path):
    """On the warehouse a run over the small live world leaves (ramps during the traces,
    three cells, member rows from the views over member_day_usage and same_day_usage): the
    run's carried totals are the totals made again, and so is every day carried anew."""
    import shutil

    _, warehouse, _ = small_live_world_run
    copy = tmp_path / "w.duckdb"
    shutil.copyfile(warehouse, copy)
    with duckdb.connect(str(copy)) as conn:
        [(as_of,)] = conn.execute(f"SELECT as_of FROM {STATE_TABLE} WHERE window_name = 'usage'").fetchall()
        days = [d for (d,) in conn.execute("SELECT DISTINCT dt FROM main.member_day_usage WHERE dt <= ? ORDER BY dt",
                                           [as_of]).fetchall()]
        assert len(days) >= 3
        carried_by_the_run = _kept(conn)
        made_again = _made_again(conn, as_of, client=0.5)
        assert_same_tables(carried_by_the_run, made_again)
        _forget(conn)
        seen = [refresh_usage(conn, _scope(conn, day, 0.5)) for day in days]
        assert seen[0] == NOT_KEPT and "rebuilt" in seen and seen[-1] == "advanced"
        assert_same_tables(_kept(conn), made_again)
