"""`cost-attribution run` every day over a landing zone that keeps its history: each run
redoes only what is new or changed (run_state.py) and leaves the warehouse as a run
over everything from scratch would: a new day, nothing new, a trace file delivered
again, a late allocation of a day already built."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import shutil

import duckdb
import pytest

from cost_attribution_tests.worlds import run_world

pytestmark = pytest.mark.slow

# Tables a day's rows land in (span models, statistics, projections, decisions), compared
# row by row; the report of the last day is compared field by field.
TABLES = {
    "main.member_day_usage": "SELECT * FROM main.member_day_usage",
    "main.member_roots": "SELECT * FROM main.member_roots WHERE period = 'post'",
    "main.usage_by_cell": "SELECT * FROM main.usage_by_cell",
    "main.edge_usage_by_cell": "SELECT * FROM main.edge_usage_by_cell",
    "main.service_coverage": "SELECT * FROM main.service_coverage",
    "main.usage_deltas": "SELECT * FROM main.usage_deltas",
    "main.cost_projections": "SELECT * FROM main.cost_projections",
    "main.experiment_costs": "SELECT * FROM main.experiment_costs",
}
# Append-only: a day's decision stays what was logged first, so only a run that analyses
# each day once is compared on it.
DECISIONS = {"main.decision_log": "SELECT * EXCLUDE (logged_at) FROM main.decision_log"}


def _rows(conn, sql: str) -> list[tuple]:
    normal = [tuple(None if isinstance(v, float) and v != v else v for v in row) for row in conn.execute(sql).fetchall()]
    return sorted(normal, key=lambda row: repr(tuple(round(v, 6) if isinstance(v, float) else v for v in row)))


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_as_from_scratch(landing, warehouse, report, tmp_path, tables=TABLES):
    scratch = tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}" / "warehouse.duckdb"
    summary, fresh = run_world(landing, scratch)
    assert not summary["failed"] and summary["plan"]["why"] == "no record of an earlier run"
    assert _close(report, fresh)
    with duckdb.connect(str(warehouse), read_only=True) as a, duckdb.connect(str(scratch), read_only=True) as b:
        for table, sql in tables.items():
            assert _close(_rows(a, sql), _rows(b, sql)), table


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cost_attribution.simulator import generate_world, small_world_config

    full = tmp_path_factory.mktemp("incremental") / "full"
    generate_world(full, dataclasses.replace(small_world_config(seed=5), trace_days=3, pre_period_days=0,
                                             n_members=300, target_spans_per_day=1500))
    return full


def test_each_run_redoes_only_what_changed_and_matches_a_run_from_scratch(world, tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "kept" / "warehouse.duckdb"
    shutil.copytree(world, landing)
    days = sorted(p.name for p in (landing / "traces").iterdir())
    shutil.rmtree(landing / "traces" / days[-1])  # yesterday's landing zone

    first, _ = run_world(landing, warehouse)
    assert first["plan"]["span_days"] == ["2026-10-29", "2026-10-30"] and not first["failed"]

    # Nothing new: no Dagster run but the freshness evaluation, the report as it was.
    again, _ = run_world(landing, warehouse)
    assert again["plan"]["span_days"] == again["plan"]["as_of_days"] == [] and len(again["run_ids"]) == 1

    # Today's day lands: only it is ingested, modelled and analysed.
    shutil.copytree(world / "traces" / days[-1], landing / "traces" / days[-1])
    today, report = run_world(landing, warehouse)
    assert today["plan"]["span_days"] == today["plan"]["as_of_days"] == ["2026-10-31"]
    assert [d["day"] for d in today["days"]] == ["2026-10-31"] and not today["failed"]
    _assert_same_as_from_scratch(landing, warehouse, report, tmp_path, tables=TABLES | DECISIONS)

    # A trace file of the 30th delivered again (same bytes, new time): the 30th and after.
    again_file = next((landing / "traces" / days[1]).iterdir())
    os.utime(again_file, ns=(again_file.stat().st_atime_ns, again_file.stat().st_mtime_ns + 10**9))
    redelivered, _ = run_world(landing, warehouse)
    assert redelivered["plan"]["span_days"] == ["2026-10-30", "2026-10-31"]

    # A late allocation dated the 30th, of a member active that day: the allocations are
    # ingested first, and the 30th and 31st are rebuilt with it.
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        member, experiment = conn.execute("""
            SELECT u.member_id, e.experiment_id FROM main.member_day_usage u CROSS JOIN raw.experiments e
            WHERE u.dt = DATE '2026-10-30' AND NOT EXISTS (
                SELECT 1 FROM raw.allocations a WHERE a.member_id = u.member_id AND a.experiment_id = e.experiment_id)
            ORDER BY ALL LIMIT 1""").fetchall()[0]
        cell = conn.execute("SELECT min(cell) FROM raw.allocations WHERE experiment_id = ?", [experiment]).fetchall()[0][0]
    with open(landing / "allocations" / "allocations.csv", "a") as handle:
        handle.write(f"{member},{experiment},{cell},2026-10-30T12:00:00Z\n")
    late, report = run_world(landing, warehouse)
    assert late["plan"]["span_days"] == ["2026-10-30", "2026-10-31"] and "allocations of 2026-10-30" in late["plan"]["why"]
    assert not late["failed"]
    _assert_same_as_from_scratch(landing, warehouse, report, tmp_path)
    assert dt.date.fromisoformat(report["as_of"]) == dt.date(2026, 10, 31)
