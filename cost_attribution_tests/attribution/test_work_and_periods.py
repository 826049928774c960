"""The span models on hand-built traces with known answers: a SERVER span's busy time
(duration minus the union of its own child calls), pre-/post-allocation periods, and
root activity per member. Runs the real dbt models on a throwaway DuckDB file."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution.member_usage import usage_scope
from cost_attribution.dbt_project import dbt_resource
from cost_attribution.resources import AnalysisSettings
from cost_attribution_tests.shift_left.synthetic_world import run_dbt

DAY = dt.date(2026, 3, 2)
T0 = int(dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp() * 1e9)
MS = 1_000_000
ALLOCATED_AT = dt.datetime(2026, 3, 2, 12, tzinfo=dt.timezone.utc)


def _span(trace, span, parent, service, kind, start_ms, end_ms, peer=None, member=None, p=0.5):
    return {"dt": DAY, "trace_id": trace, "span_id": span, "parent_span_id": parent, "service": service,
            "kind": kind, "name": "op", "start_unix_nano": T0 + start_ms * MS, "end_unix_nano": T0 + end_ms * MS,
            "peer_service": peer, "member_id": member, "sampling_probability": p}


def _spans() -> pl.DataFrame:
    hour = 3_600_000
    rows = [
        # Trace t1 at 01:00 (before m1's allocation at 12:00): api works 100 ms, of which
        # its calls cover [10,50] (two overlapping calls) + [60,70] + [95,100] (clipped): 55 ms.
        _span("t1", "a", None, "api", "SERVER", hour, hour + 100, member="m1"),
        _span("t1", "b", "a", "api", "CLIENT", hour + 10, hour + 30, peer="svc"),
        _span("t1", "c", "a", "api", "CLIENT", hour + 20, hour + 50, peer="svc"),
        _span("t1", "d", "a", "api", "CLIENT", hour + 60, hour + 70, peer="svc"),
        _span("t1", "e", "a", "api", "CLIENT", hour + 95, hour + 120, peer="svc"),
        _span("t1", "f", "b", "svc", "SERVER", hour + 11, hour + 29),  # a leaf: busy its whole 18 ms
        # In-process work inside a (between its calls): an INTERNAL span, never a unit of work
        # or a wait; it counts only as a span with a parent.
        _span("t1", "s", "a", "api", "INTERNAL", hour + 52, hour + 58),
        # Trace t2 at 13:00 (after the allocation): api 40 ms with one 10 ms call.
        _span("t2", "g", None, "api", "SERVER", 13 * hour, 13 * hour + 40, member="m1"),
        _span("t2", "h", "g", "api", "CLIENT", 13 * hour + 5, 13 * hour + 15, peer="svc"),
        _span("t2", "i", "h", "svc", "SERVER", 13 * hour + 6, 13 * hour + 14),
        _span("t2", "t", "i", "svc", "INTERNAL", 13 * hour + 7, 13 * hour + 9),
        # m2, never allocated: counts for root activity only.
        _span("t3", "j", None, "api", "SERVER", 14 * hour, 14 * hour + 30, member="m2", p=0.25),
        # Trace t4, no member: a call inside an earlier, longer one, then one overlapping
        # only the longer: the calls cover [10,60] + [70,80], so api is busy 40 of 100 ms.
        _span("t4", "k", None, "api", "SERVER", 15 * hour, 15 * hour + 100),
        _span("t4", "l", "k", "api", "CLIENT", 15 * hour + 10, 15 * hour + 50, peer="svc"),
        _span("t4", "m", "k", "api", "CLIENT", 15 * hour + 20, 15 * hour + 30, peer="svc"),
        _span("t4", "n", "k", "api", "CLIENT", 15 * hour + 40, 15 * hour + 60, peer="svc"),
        _span("t4", "o", "k", "api", "CLIENT", 15 * hour + 70, 15 * hour + 80, peer="svc"),
        # Trace t5, no member: svc span q's parent never arrived (an orphan); r's parent is q.
        # Span k of t4 arrives twice (a retried export): its children are still not orphans.
        _span("t5", "q", "gone", "svc", "SERVER", 16 * hour, 16 * hour + 10),
        _span("t5", "r", "q", "svc", "CLIENT", 16 * hour + 2, 16 * hour + 4, peer="db"),
        _span("t5", "u", "lost", "svc", "INTERNAL", 16 * hour + 5, 16 * hour + 6),  # an INTERNAL orphan
        _span("t4", "k", None, "api", "SERVER", 15 * hour, 15 * hour + 100),
    ]
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    work = tmp_path_factory.mktemp("work-periods")
    path = work / "w.duckdb"
    allocations = pl.DataFrame({
        "experiment_id": ["x"], "member_id": ["m1"], "cell": ["treatment"], "allocated_at": [ALLOCATED_AT],
        "allocated_at_unix_nano": [int(ALLOCATED_AT.timestamp() * 1e9)], "allocated_date": [DAY],
    })
    experiments = pl.DataFrame({"experiment_id": ["x"], "name": ["x"], "control_cell": ["control"],
                                "cells": ["control,treatment"], "start_date": [dt.date(2026, 3, 1)], "owner": ["o"]})
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE SCHEMA raw")
        for name, frame in (("spans", _spans()), ("allocations", allocations), ("experiments", experiments)):
            conn.register("_f", frame.to_arrow())
            conn.execute(f'CREATE TABLE raw."{name}" AS SELECT * FROM _f')
            conn.unregister("_f")
    run_dbt(path, work, "+usage_by_cell +member_activity +service_coverage", busy_time=True)
    return path


def _frame(warehouse, sql) -> pl.DataFrame:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return pl.from_arrow(conn.sql(sql).to_arrow_table())


def test_busy_time_is_duration_minus_the_union_of_own_calls(warehouse):
    # enriched_spans keeps no span ids: a span is found by its service, kind and start.
    work = dict(_frame(
        warehouse,
        "SELECT DISTINCT r.span_id, e.busy_nano / 1e6 AS ms FROM main.enriched_spans AS e JOIN raw.spans AS r "
        "ON r.service = e.service AND r.kind = e.kind AND r.start_unix_nano = e.start_unix_nano",
    ).iter_rows())
    assert len(work) == 17  # every SERVER and CLIENT span of the fixture (k arrives twice), each matched once
    assert work["a"] == pytest.approx(100 - 55)
    assert work["f"] == pytest.approx(18)  # leaf SERVER: all of it
    assert work["g"] == pytest.approx(30)
    assert work["k"] == pytest.approx(40)  # nested and chained overlaps count once
    assert work["b"] == pytest.approx(20)  # CLIENT: the call's duration as the caller saw it


def test_internal_spans_stay_out_of_the_span_grain_table(warehouse):
    """The method counts SERVER spans (work) and CLIENT spans (calls); the span models write
    only those at span grain. INTERNAL spans stay in raw.spans, and service_coverage still
    counts them among the spans with a parent (and the orphans)."""
    kinds = _frame(warehouse, "SELECT kind, count(*) AS n FROM main.enriched_spans GROUP BY kind ORDER BY kind")
    assert dict(kinds.iter_rows()) == {"CLIENT": 10, "SERVER": 8}  # k arrives twice
    raw = _frame(warehouse, "SELECT count(*) AS n FROM raw.spans WHERE kind = 'INTERNAL'")
    assert raw["n"][0] == 3


def test_usage_before_the_allocation_is_pre_period_never_treated(warehouse):
    usage = _frame(
        warehouse,
        "SELECT period, service, source, requests, work, busy FROM main.member_service_usage "
        "ORDER BY period, service, source",
    )
    rows = {(r["period"], r["service"], r["source"]): r for r in usage.iter_rows(named=True)}
    # Adjusted count 2 (p = 0.5): work = 2 x duration seconds, busy = 2 x busy seconds.
    assert rows[("pre", "api", "server")]["requests"] == 2
    assert rows[("pre", "api", "server")]["work"] == pytest.approx(2 * 0.100)
    assert rows[("pre", "api", "server")]["busy"] == pytest.approx(2 * 0.045)
    assert rows[("pre", "svc", "client")]["requests"] == 8  # four calls
    assert rows[("pre", "svc", "client")]["work"] is None  # a caller's view is not the callee's work
    assert rows[("post", "api", "server")]["busy"] == pytest.approx(2 * 0.030)
    assert rows[("post", "svc", "server")]["work"] == pytest.approx(2 * 0.008)
    cells = _frame(warehouse, "SELECT sum(requests) AS r FROM main.usage_by_cell WHERE service = 'api' AND source = 'server'")
    assert cells["r"][0] == 2  # usage_by_cell counts only treated (post) traffic


def test_root_activity_counts_every_member(warehouse):
    activity = dict(_frame(warehouse, "SELECT member_id, root_requests FROM main.member_activity").iter_rows())
    assert activity == {"m1": 4.0, "m2": 4.0}


def test_orphans_are_spans_whose_parent_never_arrived(warehouse):
    coverage = _frame(warehouse, "SELECT service, spans_with_parent, orphan_spans FROM main.service_coverage")
    assert {r["service"]: (r["spans_with_parent"], r["orphan_spans"]) for r in coverage.iter_rows(named=True)} == {
        "api": (10, 0),  # b-e and INTERNAL s under a, h under g, l-o under k (k twice)
        "svc": (6, 2),  # f, i, r, INTERNAL t have their parents; q's `gone` and INTERNAL u's `lost` never arrived
    }


def _raw_copy(warehouse, tmp_path):
    """A new warehouse holding the fixture's raw tables only."""
    copy = tmp_path / "w.duckdb"
    with duckdb.connect(str(copy)) as conn:
        conn.execute(f"ATTACH '{warehouse}' AS built (READ_ONLY)")
        conn.execute("CREATE SCHEMA raw")
        for name in ("spans", "allocations", "experiments"):
            conn.execute(f"CREATE TABLE raw.{name} AS SELECT * FROM built.raw.{name}")
    return copy


def test_a_day_built_again_replaces_all_of_its_rows(warehouse, tmp_path):
    """A build replaces every day of its window, the days it has no rows for included: with
    m1's allocation moved to the day before, the day has no same-day rows any more and all
    of it is m1's treated traffic. (dbt's delete+insert deleted only the days in its new rows:
    the old same-day rows stayed, and the day counted twice.)"""
    copy = _raw_copy(warehouse, tmp_path)
    usage = "SELECT period, service, source, requests FROM main.member_service_usage ORDER BY ALL"
    run_dbt(copy, tmp_path, "+usage_by_cell")
    assert _frame(copy, usage).equals(_frame(warehouse, usage))
    day_before = ALLOCATED_AT - dt.timedelta(days=1)
    with duckdb.connect(str(copy)) as conn:
        conn.execute("UPDATE raw.allocations SET allocated_at = ?, allocated_at_unix_nano = ?, allocated_date = ?",
                     [day_before, int(day_before.timestamp() * 1e9), day_before.date()])
    run_dbt(copy, tmp_path, "+usage_by_cell")
    assert _frame(copy, "SELECT count(*) AS n FROM main.same_day_usage")["n"][0] == 0
    rows = {(r["period"], r["service"], r["source"]): r["requests"] for r in _frame(copy, usage).iter_rows(named=True)}
    # The whole day is after the allocation now: t1 (before 12:00 until now) and t2.
    assert rows == {("post", "api", "server"): 4.0, ("post", "svc", "server"): 4.0, ("post", "svc", "client"): 10.0}
    cells = _frame(copy, "SELECT sum(requests) AS r FROM main.usage_by_cell WHERE service = 'api' AND source = 'server'")
    assert cells["r"][0] == 4


def test_busy_time_is_computed_only_when_the_work_measure_reads_it(warehouse, tmp_path):
    """span_models computes busy time when AnalysisSettings.work_measure is "busy" (it is
    the costliest part of enriched_spans); built without it, the usage statistics refuse to
    read those days as busy time and say which days and what to do."""
    from cost_attribution.attribution.dbt_assets import build_span_models

    copy = _raw_copy(warehouse, tmp_path)

    def build(work_measure):
        result = dg.materialize(
            [build_span_models()], partition_key=DAY.isoformat(), raise_on_error=False,
            resources={"dbt": dbt_resource(), "warehouse": DuckDBResource(database=str(copy)),
                       "settings": AnalysisSettings(work_measure=work_measure)})
        assert result.success
        return _frame(copy, "SELECT period, service, source, work, busy FROM main.member_service_usage "
                            "ORDER BY ALL")

    without = build("duration")
    assert without.filter(pl.col("busy").is_not_null()).is_empty()
    with duckdb.connect(str(copy), read_only=True) as conn:
        assert usage_scope(conn, DAY, 0.5, "duration").work_column == "work"
        with pytest.raises(ValueError, match=r"2026-03-02 \.\. 2026-03-02\) were built without busy time.*work_measure: busy"):
            usage_scope(conn, DAY, 0.5, "busy")

    with_busy = build("busy")
    expected = _frame(warehouse, "SELECT period, service, source, work, busy FROM main.member_service_usage "
                                 "ORDER BY ALL")
    assert with_busy.equals(expected)
    assert without.drop("busy").equals(expected.drop("busy"))
    with duckdb.connect(str(copy), read_only=True) as conn:
        assert usage_scope(conn, DAY, 0.5, "busy").work_column == "busy"
