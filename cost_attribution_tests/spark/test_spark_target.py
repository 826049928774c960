"""The spark target's glue without Spark: where the lake is, the raw-source export and
the copy of Spark's partitions back into DuckDB (Spark's table layout is written here
by DuckDB: Parquet files under dt=YYYY-MM-DD/ without the dt column); the span lake's
files placed for Spark by hard link."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from cost_attribution import environment
from cost_attribution.attribution import spark_target
from cost_attribution.dbt_project import DBT_PROJECT_DIR
from cost_attribution.ingest import span_lake
from cost_attribution.ingest.parquet_sql import begin_day_replacement

DAYS = [dt.date(2026, 10, 29), dt.date(2026, 10, 30), dt.date(2026, 10, 31)]


def test_lake_dir_follows_the_warehouse_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(environment.SPARK_DIR_ENV, raising=False)
    warehouse = str(tmp_path / "w.duckdb")
    assert spark_target.lake_dir(warehouse) == tmp_path / "w.duckdb.spark"
    monkeypatch.setenv(environment.SPARK_DIR_ENV, str(tmp_path / "lake"))
    assert spark_target.lake_dir(warehouse) == tmp_path / "lake"
    monkeypatch.setenv(environment.SPARK_DIR_ENV, "relative")
    assert spark_target.lake_dir(warehouse, DBT_PROJECT_DIR) == DBT_PROJECT_DIR / "relative"


def test_profile_and_macro_use_the_same_lake_rule():
    rule = (
        "env_var('COST_ATTRIBUTION_SPARK_DIR', var('warehouse_path', "
        "env_var('COST_ATTRIBUTION_WAREHOUSE', 'warehouse.duckdb')) ~ '.spark')"
    )
    profile = (DBT_PROJECT_DIR / "profiles.yml").read_text()
    assert profile.count(rule) == 3  # warehouse dir, metastore, derby home
    assert rule in (DBT_PROJECT_DIR / "macros" / "spark_sources.sql").read_text()


def test_dbt_target_from_env(monkeypatch):
    monkeypatch.delenv("DBT_TARGET", raising=False)
    assert environment.dbt_target() == "duckdb"
    monkeypatch.setenv("DBT_TARGET", "spark")
    assert environment.dbt_target() == "spark"


def test_export_raw_sources_writes_the_window_days_only(tmp_path):
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA raw")
    conn.execute("CREATE TABLE raw.spans AS SELECT DATE '2026-10-29' + (i % 3)::INTEGER AS dt, i AS span_no FROM range(30) t(i)")
    conn.execute("CREATE TABLE raw.allocations AS SELECT 'm' || i AS member_id FROM range(4) t(i)")
    conn.execute("CREATE TABLE raw.experiments AS SELECT 'e1' AS experiment_id")
    lake = tmp_path / "lake"
    stale = lake / "raw" / "spans" / "dt=2026-10-30" / "stale.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    written = spark_target.export_raw_sources(conn, lake, DAYS[1:])
    assert written == {"spans": 20, "allocations": 4, "experiments": 1}
    assert sorted(p.name for p in (lake / "raw" / "spans").iterdir()) == ["dt=2026-10-30", "dt=2026-10-31"]
    assert not stale.exists()
    day = conn.execute(
        f"SELECT count(*), count(DISTINCT span_no % 3) FROM read_parquet('{lake}/raw/spans/dt=2026-10-31/*.parquet')"
    ).fetchall()
    assert day == [(10, 1)]
    columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet('{lake}/raw/spans/dt=2026-10-31/*.parquet', hive_partitioning = false)").fetchall()]
    assert columns == ["span_no"]  # dt lives in the directory name, as Spark partitions it


def test_export_links_the_span_lake_files_instead_of_copying_them(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    for day, n in ((DAYS[0], 3), (DAYS[1], 5)):
        lake = begin_day_replacement(conn, day)
        path, _ = span_lake.write_day_file(conn, day, _lake_spans(day, n), lake=lake)
        span_lake.publish_day(conn, day, path)
        conn.execute("COMMIT")
    begin_day_replacement(conn, DAYS[2])
    span_lake.publish_day(conn, DAYS[2], None)  # a day without spans: no file
    conn.execute("COMMIT")
    conn.execute("CREATE TABLE raw.allocations AS SELECT 'm1' AS member_id")
    conn.execute("CREATE TABLE raw.experiments AS SELECT 'e1' AS experiment_id")
    spark_lake = tmp_path / "spark"
    written = spark_target.export_raw_sources(conn, spark_lake, DAYS)
    assert written == {"spans": 8, "allocations": 1, "experiments": 1}
    [placed] = (spark_lake / "raw" / "spans" / f"dt={DAYS[1].isoformat()}").iterdir()
    [current] = span_lake.files_as_they_are(conn, DAYS[1])
    assert placed.samefile(current)  # the same file, not a copy
    assert list((spark_lake / "raw" / "spans" / f"dt={DAYS[2].isoformat()}").iterdir()) == []
    # The span lake replacing the day later leaves the placed file readable until the next export.
    lake = begin_day_replacement(conn, DAYS[1])
    path, _ = span_lake.write_day_file(conn, DAYS[1], _lake_spans(DAYS[1], 7), lake=lake)
    span_lake.publish_day(conn, DAYS[1], path)
    conn.execute("COMMIT")
    span_lake.remove_unreferenced(conn, DAYS[1], lake)
    assert not current.exists()
    assert conn.execute(f"SELECT count(*) FROM read_parquet('{placed}')").fetchall() == [(5,)]


def _lake_spans(day: dt.date, n: int) -> str:
    return (f"SELECT DATE '{day.isoformat()}' AS dt, lpad(i::VARCHAR, 32, '0') AS trace_id, lpad(i::VARCHAR, 16, '0') AS span_id, "
            "NULL::VARCHAR AS parent_span_id, 'api' AS service, 'SERVER' AS kind, 'GET' AS name, i::BIGINT + 1 AS start_unix_nano, "
            "i::BIGINT + 5 AS end_unix_nano, NULL::VARCHAR AS peer_service, 'm' || i AS member_id, 1.0 AS sampling_probability "
            f"FROM range({n}) t(i)")


def _spark_partition(lake: Path, model: str, day: dt.date, rows: list[tuple[str, float]]) -> None:
    part = spark_target.spark_table_dir(lake, model) / f"dt={day.isoformat()}"
    part.mkdir(parents=True, exist_ok=True)
    values = ", ".join(f"('{s}', {r})" for s, r in rows)
    duckdb.execute(f"COPY (SELECT * FROM (VALUES {values}) t(service, requests)) TO '{part}/part-00000.c000.snappy.parquet'")


def test_import_replaces_exactly_the_window_days(tmp_path):
    lake = tmp_path / "lake"
    for day in DAYS:
        _spark_partition(lake, "usage", day, [("a", 1.5), ("b", 2.5)])
    (spark_target.spark_table_dir(lake, "usage") / "_SUCCESS").touch()
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE main.usage AS SELECT * FROM (VALUES (DATE '2026-10-29', 'old', 9.0), (DATE '2026-10-30', 'old', 9.0), "
        "(DATE '2026-10-31', 'old', 9.0)) t(dt, service, requests)"
    )
    # A day in the window that Spark computed no rows for must end up empty too.
    window = (DAYS[1], DAYS[2] + dt.timedelta(days=2))
    copied = spark_target.import_model_tables(conn, lake, ["usage"], *window)
    assert copied == {"usage": 4}
    rows = conn.execute("SELECT dt, service, requests FROM main.usage ORDER BY ALL").fetchall()
    assert rows == [(DAYS[0], "old", 9.0), (DAYS[1], "a", 1.5), (DAYS[1], "b", 2.5), (DAYS[2], "a", 1.5), (DAYS[2], "b", 2.5)]

    emptied = spark_target.spark_table_dir(lake, "usage") / f"dt={DAYS[2].isoformat()}"
    for f in emptied.iterdir():
        f.unlink()
    emptied.rmdir()
    assert spark_target.import_model_tables(conn, lake, ["usage"], DAYS[2], DAYS[2] + dt.timedelta(days=1)) == {"usage": 0}
    assert conn.execute("SELECT count(*) FROM main.usage WHERE dt = ?", [DAYS[2]]).fetchall() == [(0,)]


def test_import_creates_the_table_with_dt_first(tmp_path):
    lake = tmp_path / "lake"
    _spark_partition(lake, "coverage", DAYS[0], [("a", 1.0)])
    conn = duckdb.connect()
    spark_target.import_model_tables(conn, lake, ["coverage"], DAYS[0], DAYS[1])
    assert [(r[0], r[1]) for r in conn.execute("DESCRIBE main.coverage").fetchall()] == [
        ("dt", "DATE"), ("service", "VARCHAR"), ("requests", "DECIMAL(2,1)")
    ]


def test_import_of_a_model_spark_never_wrote_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Spark table"):
        spark_target.import_model_tables(duckdb.connect(), tmp_path, ["missing"], DAYS[0], DAYS[1])


def test_only_aggregates_leave_spark():
    run_results = {"results": [
        {"unique_id": "model.cost_attribution.enriched_spans", "status": "success"},
        {"unique_id": "model.cost_attribution.usage_by_cell", "status": "success"},
        {"unique_id": "model.cost_attribution.trace_edges", "status": "error"},
        {"unique_id": "test.cost_attribution.not_null_x", "status": "pass"},
        {"unique_id": "operation.cost_attribution.on-run-start.0", "status": "success"},
    ]}
    built = spark_target.built_models(run_results)
    assert built == ["enriched_spans", "usage_by_cell"]
    assert spark_target.aggregate_models(built) == ["usage_by_cell"]
