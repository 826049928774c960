"""Latency sums carried from day to day (latency_window) are the sums made again from the
member rows: on every day of a world where members are allocated on many days (before
and after the start), an experiment starts late and one has no start, and whenever what
they were made of changes under them."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution import latency_window
from cost_attribution.attribution.latency import MEMBER_GROUPS
from cost_attribution.attribution.latency_window import LATENCY_HISTOGRAMS, LATENCY_MEMBERS, STATE_TABLE, refresh_latency
from cost_attribution_tests.worlds import assert_same_tables, warehouse_of

DAY0 = dt.date(2026, 5, 1)
DAYS = [DAY0 + dt.timedelta(days=i) for i in range(8)]
# experiment -> start day index (None: no start date) and the day indexes members are allocated on
EXPERIMENTS = {"ramp": (2, range(0, 6)), "late": (5, range(3, 8)), "open": (None, range(1, 7))}
GROUPS = 16


def _world(seed: int = 3) -> dict[str, pl.DataFrame]:
    """Latency rows as the span models write them: a member's rows from its allocation day on."""
    rng = np.random.default_rng(seed)
    allocations, latency = [], []
    for experiment, (_, alloc_days) in EXPERIMENTS.items():
        for m in range(60):
            member = f"m{m}"
            day = DAYS[rng.choice(list(alloc_days))]
            cell = ("control", "treatment")[m % 2]
            allocations.append({"experiment_id": experiment, "member_id": member, "cell": cell,
                                "allocated_at": dt.datetime.combine(day, dt.time(12))})
            for d in DAYS:
                if d < day or rng.random() < 0.3:
                    continue
                for service in ("api", "db"):
                    for bucket in rng.choice(40, size=3, replace=False):
                        latency.append({"dt": d, "experiment_id": experiment, "cell": cell, "member_id": member,
                                        "service": service, "duration_bucket": int(bucket),
                                        "requests": float(rng.poisson(4)) / 0.1, "sampled_spans": 4})
    experiments = pl.DataFrame({
        "experiment_id": list(EXPERIMENTS), "control_cell": ["control"] * 3, "cells": ["control,treatment"] * 3,
        "start_date": [None if start is None else DAYS[start] for start, _ in EXPERIMENTS.values()],
    }, schema_overrides={"start_date": pl.Date})
    return {"raw.experiments": experiments, "raw.allocations": pl.DataFrame(allocations),
            "main.member_service_latency": pl.DataFrame(latency)}


def _frames(conn) -> dict[str, pl.DataFrame]:
    return {name: pl.from_arrow(conn.sql(f"SELECT * FROM {name}").to_arrow_table()) for name in world_tables()}


def world_tables() -> tuple[str, ...]:
    return "raw.experiments", "raw.allocations", "main.member_service_latency"


def _sums(conn) -> dict[str, pl.DataFrame]:
    out = {}
    for table in (LATENCY_HISTOGRAMS, LATENCY_MEMBERS):
        frame = pl.from_arrow(conn.sql(f"SELECT * FROM {table}").to_arrow_table())
        out[table] = frame.sort([c for c in frame.columns if frame[c].dtype != pl.Float64])
    return out


def _made_again(conn, as_of: dt.date, groups: int = GROUPS) -> dict[str, pl.DataFrame]:
    conn.execute(f"DROP TABLE IF EXISTS {STATE_TABLE}")
    assert refresh_latency(conn, as_of, groups) == "rebuilt"
    return _sums(conn)


@pytest.fixture()
def world():
    return _world()


def test_day_by_day_sums_equal_the_sums_made_again(world):
    carried, fresh = warehouse_of(world), warehouse_of(world)
    seen = []
    for day in DAYS:
        seen.append(refresh_latency(carried, day, GROUPS))
        assert_same_tables(_sums(carried), _made_again(fresh, day))
    assert seen == ["rebuilt"] + ["advanced"] * (len(DAYS) - 1)
    assert refresh_latency(carried, DAYS[-1], GROUPS) == "kept"
    members = _sums(carried)[LATENCY_MEMBERS]
    assert members.height == members.unique().height > 0
    # Who is in them: the distinct members with a counted row, per experiment cell and service.
    starts = world["raw.experiments"].select("experiment_id", "start_date")
    counted = (world["main.member_service_latency"].join(starts, on="experiment_id")
               .filter(pl.col("start_date").is_null() | (pl.col("dt") >= pl.col("start_date"))))
    expected = counted.group_by("experiment_id", "cell", "service").agg(pl.col("member_id").n_unique().alias("n"))
    kept = members.group_by("experiment_id", "cell", "service").agg(pl.len().cast(pl.UInt32).alias("n"))
    assert kept.sort(pl.all()).equals(expected.sort(pl.all()))
    # Rows before an experiment's start never count; one without a start counts them all.
    late = _sums(carried)[LATENCY_HISTOGRAMS].filter(pl.col("experiment_id") == "late")["requests"].sum()
    rows = world["main.member_service_latency"]
    assert late == pytest.approx(rows.filter(pl.col("experiment_id") == "late", pl.col("dt") >= DAYS[5])["requests"].sum())
    assert refresh_latency(carried, DAYS[-1], groups=32) == "rebuilt"  # other member groups


@pytest.mark.parametrize("change", ["a day re-ingested", "a late allocation", "a start moved"])
def test_a_change_to_what_the_sums_were_made_of_makes_them_again(world, change):
    conn = warehouse_of(world)
    for day in DAYS[:4]:
        refresh_latency(conn, day, GROUPS)
    if change == "a day re-ingested":
        conn.execute("UPDATE main.member_service_latency SET requests = requests + 1 WHERE dt = ? AND member_id = "
                     "(SELECT min(member_id) FROM main.member_service_latency WHERE dt = ?)", [DAYS[2]] * 2)
    elif change == "a late allocation":
        conn.execute("INSERT INTO raw.allocations VALUES ('ramp', 'm999', 'control', ?)",
                     [dt.datetime.combine(DAYS[0], dt.time(1))])
        conn.execute("INSERT INTO main.member_service_latency SELECT * REPLACE ('m999' AS member_id) "
                     "FROM main.member_service_latency WHERE member_id = 'm1' AND experiment_id = 'ramp'")
    else:
        conn.execute("UPDATE raw.experiments SET start_date = ? WHERE experiment_id = 'ramp'", [DAYS[1]])
    assert refresh_latency(conn, DAYS[4], GROUPS) == "rebuilt"
    assert_same_tables(_sums(conn), _made_again(warehouse_of(_frames(conn)), DAYS[4]))


def test_a_skipped_or_earlier_day_makes_them_again(world):
    conn = warehouse_of(world)
    refresh_latency(conn, DAYS[2], GROUPS)
    assert refresh_latency(conn, DAYS[4], GROUPS) == "rebuilt"  # DAYS[3] skipped
    assert refresh_latency(conn, DAYS[1], GROUPS) == "rebuilt"
    assert_same_tables(_sums(conn), _made_again(warehouse_of(world), DAYS[1]))


def test_the_digest_sees_any_changed_row_and_only_days_through_the_as_of_day(world):
    conn = warehouse_of(world)
    inputs = {"main.member_service_latency": ("dt", None)}
    before = latency_window.digest(conn, inputs, DAYS[3])
    assert {p[1] for p in before} == {d.isoformat() for d in DAYS[:4]}
    since = latency_window.digest(conn, {"main.member_service_latency": ("dt", DAYS[2])}, DAYS[3])
    assert since == [p for p in before if p[1] >= DAYS[2].isoformat()]
    conn.execute("UPDATE main.member_service_latency SET duration_bucket = duration_bucket + 1 WHERE dt = ? AND "
                 "member_id = (SELECT min(member_id) FROM main.member_service_latency WHERE dt = ?)", [DAYS[2]] * 2)
    after = latency_window.digest(conn, inputs, DAYS[3])
    assert [p[1] for p in before if p not in after] == [DAYS[2].isoformat()]
    conn.execute("DELETE FROM main.member_service_latency WHERE dt = ?", [DAYS[5]])
    assert latency_window.digest(conn, inputs, DAYS[3]) == after


@pytest.mark.slow  # runs the small live world through the pipeline
def test_on_the_span_models_tables_day_by_day_equals_made_again(small_live_world_run, tmp_path):
    """The same on the warehouse a run over the small live world leaves (ramps during the
    traces, three cells): latency rows from the views over member_day_latency and
    same_day_latency, joined with the allocations. The run's carried sums are the sums made
    again, and so is every day carried anew from the first."""
    import shutil

    _, warehouse, _ = small_live_world_run
    copy = tmp_path / "w.duckdb"
    shutil.copyfile(warehouse, copy)
    with duckdb.connect(str(copy)) as conn:
        assert conn.execute("SELECT table_type FROM information_schema.tables "
                            "WHERE table_name = 'member_service_latency'").fetchall() == [("VIEW",)]
        [(as_of,)] = conn.execute(f"SELECT as_of FROM {STATE_TABLE} WHERE window_name = 'latency'").fetchall()
        days = [d for (d,) in conn.execute("SELECT DISTINCT dt FROM main.member_day_latency WHERE dt <= ? ORDER BY dt",
                                           [as_of]).fetchall()]
        assert len(days) >= 3
        carried_by_the_run = _sums(conn)
        made_again = _made_again(conn, as_of, groups=MEMBER_GROUPS)
        assert_same_tables(carried_by_the_run, made_again)
        conn.execute(f"DELETE FROM {STATE_TABLE} WHERE window_name = 'latency'")
        seen = [refresh_latency(conn, day, MEMBER_GROUPS) for day in days]
        assert seen == ["rebuilt"] + ["advanced"] * (len(days) - 1)
        assert_same_tables(_sums(conn), made_again)


def test_days_before_every_start_are_not_read_and_lost_tables_are_made_again(world):
    """Only the started experiments' days are digested (a long history costs nothing), and
    a kept table that went missing is made again rather than read."""
    world["raw.experiments"] = world["raw.experiments"].with_columns(start_date=pl.lit(DAYS[3]))
    conn = warehouse_of(world)
    refresh_latency(conn, DAYS[4], GROUPS)
    conn.execute("UPDATE main.member_service_latency SET requests = requests + 1 WHERE dt < ?", [DAYS[3]])
    assert refresh_latency(conn, DAYS[5], GROUPS) == "advanced"  # the changed days count for nothing
    conn.execute(f"DROP TABLE {LATENCY_MEMBERS}")
    assert refresh_latency(conn, DAYS[5], GROUPS) == "rebuilt"
    assert_same_tables(_sums(conn), _made_again(warehouse_of(_frames(conn)), DAYS[5]))
