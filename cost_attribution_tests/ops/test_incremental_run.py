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
# row by row; the report of the last day is compared field by field. The as-of tables from
# the first day a run redid: an earlier day's analyses stay what they said then (a run
# from scratch sees allocations made after that day, and usage_scope lets a later
# member's pre-period rows decide the covariate's label: left alone, see bench/README).
TABLES = {
    "main.member_day_usage": "SELECT * FROM main.member_day_usage",
    "main.member_roots": "SELECT * FROM main.member_roots WHERE period = 'post'",
    "main.usage_by_cell": "SELECT * FROM main.usage_by_cell",
    "main.edge_usage_by_cell": "SELECT * FROM main.edge_usage_by_cell",
    "main.service_coverage": "SELECT * FROM main.service_coverage",
    "main.usage_deltas": "SELECT * FROM main.usage_deltas WHERE as_of >= $redone",
    "main.cost_projections": "SELECT * FROM main.cost_projections WHERE as_of >= $redone",
    "main.experiment_costs": "SELECT * FROM main.experiment_costs WHERE as_of >= $redone",
}
# Append-only: a day's decision stays what was logged first, so only a run that analyses
# each day once is compared on it.
DECISIONS = {"main.decision_log": "SELECT * EXCLUDE (logged_at) FROM main.decision_log"}


def _rows(conn, sql: str, redone: dt.date) -> list[tuple]:
    params = {"redone": redone} if "$redone" in sql else {}
    normal = [tuple(None if isinstance(v, float) and v != v else v for v in row)
              for row in conn.execute(sql, params).fetchall()]
    return sorted(normal, key=lambda row: repr(tuple(round(v, 6) if isinstance(v, float) else v for v in row)))


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_as_from_scratch(landing, warehouse, report, tmp_path, redone: str, tables=TABLES):
    scratch = tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}" / "warehouse.duckdb"
    summary, fresh = run_world(landing, scratch)
    assert not summary["failed"] and summary["plan"]["why"] == "no record of an earlier run"
    assert _close(report, fresh)
    with duckdb.connect(str(warehouse), read_only=True) as a, duckdb.connect(str(scratch), read_only=True) as b:
        for table, sql in tables.items():
            kept, fresh = _rows(a, sql, dt.date.fromisoformat(redone)), _rows(b, sql, dt.date.fromisoformat(redone))
            assert _close(kept, fresh), (table, [(x, y) for x, y in zip(kept, fresh) if not _close(x, y)][:2])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cost_attribution.simulator import generate_world, small_world_config

    full = tmp_path_factory.mktemp("incremental") / "full"
    # Ending yesterday, as a deployment that ran its daily schedule: the freshness checks can pass.
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    generate_world(full, dataclasses.replace(small_world_config(seed=5), trace_days=3, pre_period_days=0,
                                             n_members=300, target_spans_per_day=1500, end_date=yesterday))
    return full


def test_each_run_redoes_only_what_changed_and_matches_a_run_from_scratch(world, tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "kept" / "warehouse.duckdb"
    shutil.copytree(world, landing)
    folders = sorted(p.name for p in (landing / "traces").iterdir())
    days = [name.removeprefix("dt=") for name in folders]
    shutil.rmtree(landing / "traces" / folders[-1])  # the day before yesterday's landing zone

    first, _ = run_world(landing, warehouse)
    assert first["plan"]["span_days"] == days[:2] and not first["failed"]

    # Today's day lands: only it is ingested, modelled and analysed.
    shutil.copytree(world / "traces" / folders[-1], landing / "traces" / folders[-1])
    today, report = run_world(landing, warehouse)
    assert today["plan"]["span_days"] == today["plan"]["as_of_days"] == days[2:]
    assert [d["day"] for d in today["days"]] == days[2:] and not today["failed"] and today["stale"] == []

    # Nothing new: no Dagster run but the freshness evaluation, which still finds yesterday's
    # partitions (held by the warehouse, recorded by the runs before): fresh, as it was.
    again, _ = run_world(landing, warehouse)
    assert again["plan"]["span_days"] == again["plan"]["as_of_days"] == [] and len(again["run_ids"]) == 1
    assert again["stale"] == [] and not again["failed"]
    _assert_same_as_from_scratch(landing, warehouse, report, tmp_path, redone=days[0], tables=TABLES | DECISIONS)

    # A trace file of the middle day delivered again (same bytes, new time): it and after.
    again_file = next((landing / "traces" / folders[1]).iterdir())
    os.utime(again_file, ns=(again_file.stat().st_atime_ns, again_file.stat().st_mtime_ns + 10**9))
    redelivered, _ = run_world(landing, warehouse)
    assert redelivered["plan"]["span_days"] == days[1:]

    # A late allocation dated the middle day, of a member active that day: the allocations
    # are ingested first, and the middle and last days are rebuilt with it.
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        member, experiment = conn.execute("""
            SELECT u.member_id, e.experiment_id FROM main.member_day_usage u CROSS JOIN raw.experiments e
            WHERE u.dt = ? AND NOT EXISTS (
                SELECT 1 FROM raw.allocations a WHERE a.member_id = u.member_id AND a.experiment_id = e.experiment_id)
            ORDER BY ALL LIMIT 1""", [dt.date.fromisoformat(days[1])]).fetchall()[0]
        cell = conn.execute("SELECT min(cell) FROM raw.allocations WHERE experiment_id = ?", [experiment]).fetchall()[0][0]
    with open(landing / "allocations" / "allocations.csv", "a") as handle:
        handle.write(f"{member},{experiment},{cell},{days[1]}T12:00:00Z\n")
    late, report = run_world(landing, warehouse)
    assert late["plan"]["span_days"] == days[1:] and f"allocations of {days[1]}" in late["plan"]["why"]
    assert not late["failed"]
    _assert_same_as_from_scratch(landing, warehouse, report, tmp_path, redone=days[1])
    assert report["as_of"] == days[-1]
