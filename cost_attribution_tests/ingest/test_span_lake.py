"""raw.spans as files (ingest/span_lake.py): a day is replaced atomically with its
quarantine, nothing is left behind, and a warehouse written before the lake moves in."""

from __future__ import annotations

import datetime

import duckdb
import pytest

from cost_attribution.ingest import span_lake
from cost_attribution.ingest.parquet_sql import begin_day_replacement

DAY = datetime.date(2026, 5, 28)
OTHER = datetime.date(2026, 5, 29)


def _spans(dt: datetime.date, n: int) -> str:
    """A select of n spans of day dt with the lake's columns."""
    return (f"SELECT DATE '{dt.isoformat()}' AS dt, lpad(i::VARCHAR, 32, '0') AS trace_id, lpad(i::VARCHAR, 16, '0') AS span_id, "
            "NULL::VARCHAR AS parent_span_id, 'api' AS service, 'SERVER' AS kind, 'GET' AS name, i::BIGINT AS start_unix_nano, "
            f"i::BIGINT + 5 AS end_unix_nano, NULL::VARCHAR AS peer_service, 'm' || i AS member_id, 1.0 AS sampling_probability "
            f"FROM range({n}) t(i)")


def _replace(conn, dt: datetime.date, n: int, fail: bool = False):
    """What the ingest does for a day: begin, write the file, publish, commit (or fail), clean up."""
    lake = begin_day_replacement(conn, dt)
    try:
        path, written = span_lake.write_day_file(conn, dt, _spans(dt, n), lake=lake)
        span_lake.publish_day(conn, dt, path)
        if fail:
            raise RuntimeError("the run died here")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    span_lake.remove_unreferenced(conn, dt, lake)
    return path, written


def _files(warehouse) -> list:
    return sorted(p.name for p in (warehouse.parent / (warehouse.name + ".lake")).rglob("*.parquet"))


def test_a_rerun_replaces_the_day_and_removes_the_old_file(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    conn = duckdb.connect(str(warehouse))
    first, _ = _replace(conn, DAY, 3)
    _replace(conn, OTHER, 2)
    second, written = _replace(conn, DAY, 5)
    assert written == 5
    assert conn.execute("SELECT dt, count(*) FROM raw.spans GROUP BY dt ORDER BY dt").fetchall() == [(DAY, 5), (OTHER, 2)]
    assert not first.exists() and second.exists()
    assert len(_files(warehouse)) == 2
    assert second.parent == tmp_path / "w.duckdb.lake" / "spans" / f"dt={DAY.isoformat()}"


def test_a_run_that_dies_before_commit_keeps_the_old_day_and_its_file_is_removed_next_time(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    conn = duckdb.connect(str(warehouse))
    kept, _ = _replace(conn, DAY, 3)
    with pytest.raises(RuntimeError, match="died"):
        _replace(conn, DAY, 7, fail=True)
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]
    assert kept.exists() and len(_files(warehouse)) == 2  # the dead run's file is still there, unreferenced
    newest, _ = _replace(conn, DAY, 4)
    assert _files(warehouse) == [newest.name]
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(4,)]


def test_an_empty_lake_is_a_typed_empty_view_and_a_day_without_spans_has_no_file(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute("BEGIN")
    span_lake.ensure_span_files(conn)
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(0,)]
    types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_schema = 'raw' AND table_name = 'spans'").fetchall())
    assert list(types) == span_lake.span_columns()
    assert (types["dt"], types["start_unix_nano"], types["sampling_probability"]) == ("DATE", "BIGINT", "DOUBLE")
    _replace(conn, DAY, 2)
    conn.execute("BEGIN")
    span_lake.publish_day(conn, DAY, None)
    conn.execute("COMMIT")
    span_lake.remove_unreferenced(conn, DAY, span_lake.lake_dir(conn))
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(0,)]
    assert _files(tmp_path / "w.duckdb") == []


def test_a_warehouse_whose_spans_are_a_table_moves_them_into_the_lake(tmp_path):
    warehouse = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(warehouse))
    conn.execute("CREATE SCHEMA raw")
    conn.execute(f"CREATE TABLE raw.spans AS {_spans(DAY, 3)} UNION ALL {_spans(OTHER, 4)}")
    before = conn.execute("SELECT * FROM raw.spans ORDER BY dt, span_id").fetchall()
    _replace(conn, OTHER, 6)  # the first ingest after the upgrade
    assert conn.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'spans'").fetchall() == [("VIEW",)]
    assert conn.execute("SELECT * FROM raw.spans WHERE dt = ? ORDER BY span_id", [DAY]).fetchall() == [r for r in before if r[0] == DAY]
    assert conn.execute("SELECT count(*) FROM raw.spans WHERE dt = ?", [OTHER]).fetchall() == [(6,)]
    assert len(_files(warehouse)) == 2


def test_a_path_with_a_quote_is_a_literal_not_sql(tmp_path):
    folder = tmp_path / "it's here; DROP TABLE x"
    folder.mkdir()
    conn = duckdb.connect(str(folder / "w.duckdb"))
    _replace(conn, DAY, 2)
    _replace(conn, DAY, 3)
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]
    assert len(_files(folder / "w.duckdb")) == 1


def test_a_copied_warehouse_reads_the_original_lake_and_a_rerun_on_it_leaves_the_original_alone(tmp_path):
    """Tests and benches copy a warehouse file and run again on the copy: the copy reads the
    files it was written with, writes its own, and never deletes the original's."""
    import shutil

    warehouse = tmp_path / "w.duckdb"
    conn = duckdb.connect(str(warehouse))
    original, _ = _replace(conn, DAY, 3)
    conn.close()
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "w.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as conn:
        assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]
        rerun, _ = _replace(conn, DAY, 4)
        assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(4,)]
    assert original.exists() and rerun.parent == tmp_path / "copy" / "w.duckdb.lake" / "spans" / f"dt={DAY.isoformat()}"
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]


def test_an_in_memory_database_keeps_one_lake_and_removes_what_it_replaced():
    conn = duckdb.connect()
    first, _ = _replace(conn, DAY, 2)
    second, _ = _replace(conn, DAY, 3)
    assert second.parent == first.parent and not first.exists()
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]


def test_a_lake_of_one_file_a_day_with_its_dt_column_is_read_as_before_and_moves_to_the_new_table(tmp_path):
    """Warehouses written before a day could hold several files (raw.span_files keyed by
    dt, files with a dt column): their days read the same, and another engine is not
    handed those files as they are (their dt column is not Spark's layout)."""
    warehouse = tmp_path / "w.duckdb"
    conn = duckdb.connect(str(warehouse))
    conn.execute("CREATE SCHEMA raw")
    old_file = tmp_path / "w.duckdb.lake" / "spans" / f"dt={DAY.isoformat()}" / "old.parquet"
    old_file.parent.mkdir(parents=True)
    conn.execute(f"COPY ({_spans(DAY, 3)}) TO '{old_file}' (FORMAT parquet)")
    conn.execute("CREATE TABLE raw.span_files (dt DATE PRIMARY KEY, path VARCHAR NOT NULL)")
    conn.execute("INSERT INTO raw.span_files VALUES (?, ?)", [DAY, str(old_file)])
    conn.execute(f"CREATE VIEW raw.spans AS SELECT * FROM read_parquet('{old_file}', hive_partitioning = false)")
    before = conn.execute("SELECT * FROM raw.spans ORDER BY span_id").fetchall()
    _replace(conn, OTHER, 2)  # the first ingest after the upgrade
    assert conn.execute("SELECT * FROM raw.spans WHERE dt = ? ORDER BY span_id", [DAY]).fetchall() == before
    assert conn.execute("SELECT count(*) FROM raw.spans WHERE dt = ?", [OTHER]).fetchall() == [(2,)]
    assert span_lake.files_as_they_are(conn, DAY) is None
    [new_file] = span_lake.files_as_they_are(conn, OTHER)
    assert "dt" not in [r[0] for r in conn.execute(
        "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [str(new_file)]).fetchall()]
    assert conn.execute("SELECT count(*) FROM raw.span_files").fetchall() == [(2,)]


def _days_with_skipped_rows(conn, days: int) -> list:
    """`days` days of two files each (span ids 0-3 and 0-2), rows 0 and 2 of the first left
    out; returns the (dt, span_id) rows the view must hold, sorted."""
    lake = span_lake.lake_dir(conn)
    span_lake.ensure_span_files(conn)
    expected = []
    for i in range(days):
        dt = DAY + datetime.timedelta(days=i)
        first, _ = span_lake.write_day_file(conn, dt, _spans(dt, 4), lake=lake)
        second, _ = span_lake.write_day_file(conn, dt, _spans(dt, 3), lake=lake)
        span_lake.publish_day(conn, dt, [span_lake.DayFile(first, skip_rows=(0, 2)), span_lake.DayFile(second)])
        expected += [(dt, f"{n:016d}") for n in (1, 3, 0, 1, 2)]
    return sorted(expected)


def test_a_long_window_is_one_scan_of_its_files_and_skipped_rows_stay_out(tmp_path):
    """One scan per column set, whatever the days: a scan per day and file made a hash join
    over 26 days hold a buffer per scan and run out of memory (bench/README.md)."""
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    expected = _days_with_skipped_rows(conn, 30)
    view = conn.execute("SELECT sql FROM duckdb_views() WHERE schema_name = 'raw' AND view_name = 'spans'").fetchall()[0][0]
    assert view.count("read_parquet(") == 2  # the files with rows to skip, and the others
    assert conn.execute("SELECT dt, span_id FROM raw.spans ORDER BY ALL").fetchall() == expected
    one_day = DAY + datetime.timedelta(days=7)
    assert conn.execute("SELECT count(*), min(dt), max(dt) FROM raw.spans WHERE dt = ?", [one_day]).fetchall() == [
        (5, one_day, one_day)]


def test_a_lake_below_a_key_value_directory_is_read_day_by_day(tmp_path):
    """Hive partitioning would read `dt=...` above the lake as a column: such a lake keeps a
    scan per day (and per file with rows to skip), with the same rows."""
    folder = tmp_path / "dt=2020-01-01"
    folder.mkdir()
    conn = duckdb.connect(str(folder / "w.duckdb"))
    expected = _days_with_skipped_rows(conn, 3)
    view = conn.execute("SELECT sql FROM duckdb_views() WHERE schema_name = 'raw' AND view_name = 'spans'").fetchall()[0][0]
    assert view.count("read_parquet(") == 6
    assert conn.execute("SELECT dt, span_id FROM raw.spans ORDER BY ALL").fetchall() == expected
