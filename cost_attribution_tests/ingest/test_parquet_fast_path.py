"""The DuckDB fast path for flat span Parquet writes exactly what the polars path writes."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cost_attribution.ingest import span_lake
from cost_attribution.ingest.parquet_sql import fast_path_schema, ingest_parquet_day
from cost_attribution.ingest.readers import read_span_files
from cost_attribution.warehouse import replace_rows
from ingest_span_builders import START

DT = datetime.date(2026, 5, 28)
T1 = "ab" * 16
STRING_COLUMNS = ("trace_id", "span_id", "parent_span_id", "service", "kind", "peer_service", "member_id")
FRAME_SCHEMA = {c: pl.Utf8 for c in STRING_COLUMNS} | {
    "start_unix_nano": pl.Int64, "end_unix_nano": pl.Int64, "sampling_probability": pl.Float64}
GOOD = {"trace_id": T1, "span_id": "a" * 16, "parent_span_id": None, "service": "api", "kind": "SERVER",
        "start_unix_nano": START, "end_unix_nano": START + 10, "peer_service": "db", "member_id": "m1",
        "sampling_probability": 0.1}
QUARANTINE_KEY = ["dt", "source_file", "reason", "trace_id", "span_id"]


def _write(path, rows, schema=FRAME_SCHEMA, **options):
    pl.DataFrame(rows, schema=schema).write_parquet(path, **options)
    return path


def _polars_path(files, **floor):
    """read_span_files + replace_rows, as raw_spans wrote a day before the fast path.

    The rows are compared from the batch itself: DuckDB 2.0 returns no rows from a table
    that `replace_rows` created (CREATE TABLE AS ... LIMIT 0 then INSERT, in one
    transaction) and filled with more than one row group, when read on the same database
    instance; the schema it created is still the reference."""
    conn = duckdb.connect()
    batch = read_span_files(files, DT, partition=True, **floor)
    replace_rows(conn, "raw.spans", batch.spans, where={"dt": DT})
    replace_rows(conn, "raw.span_quarantine", batch.quarantine, where={"dt": DT})
    return conn, batch


def _tables(conn):
    spans = pl.from_arrow(conn.sql("SELECT * FROM raw.spans").to_arrow_table())
    quarantine = pl.from_arrow(conn.sql("SELECT * FROM raw.span_quarantine").to_arrow_table())
    return spans.sort(pl.all()), quarantine


def _describe(conn, table):
    return conn.execute(f"DESCRIBE {table}").fetchall()


def assert_same_as_polars(files, **floor):
    """Both paths into fresh warehouses: identical spans, schemas and quarantine keys.
    floor: sampling_floor=... for both, else their defaults."""
    old, batch = _polars_path(files, **floor)
    new = duckdb.connect()
    counts = ingest_parquet_day(new, files, DT, **floor)
    for table in ("raw.spans", "raw.span_quarantine"):
        assert _describe(new, table) == _describe(old, table)
    old_spans, old_quarantine = batch.spans.sort(pl.all()), batch.quarantine
    new_spans, new_quarantine = _tables(new)
    assert new_spans.equals(old_spans)
    assert Counter(new_quarantine.select(QUARANTINE_KEY).rows()) == Counter(old_quarantine.select(QUARANTINE_KEY).rows())
    assert counts["spans"] == old_spans.height
    assert {k: v for k, v in counts.items() if k != "spans"} == dict(
        old_quarantine.group_by("reason").len().iter_rows())
    return new, new_quarantine


def test_clean_file_with_every_spelling(tmp_path):
    rows = [
        GOOD,
        GOOD | {"span_id": "B" * 16, "parent_span_id": "A" * 16, "kind": " span_kind_client ", "sampling_probability": None},
        GOOD | {"trace_id": T1.upper(), "span_id": "c" * 16, "parent_span_id": "0" * 16, "kind": "3", "service": " auth\u3000"},
        GOOD | {"span_id": "d" * 16, "parent_span_id": "", "kind": "Producer", "peer_service": "queue", "sampling_probability": 1.0},
        GOOD | {"span_id": "e" * 16, "parent_span_id": "  ", "kind": "consumer", "name": None, "member_id": None},
        GOOD | {"span_id": "f" * 16, "kind": "clıent"},  # dotless i upper-cases to I in both engines
    ]
    spans, quarantine = _tables(assert_same_as_polars([_write(tmp_path / "clean.parquet", rows)])[0])
    assert quarantine.is_empty() and spans.height == len(rows)


def test_one_row_per_quarantine_reason(tmp_path):
    bad = [
        {"trace_id": "xyz"}, {"trace_id": "0" * 32}, {"span_id": "xyz"}, {"span_id": "0" * 16},
        {"span_id": "a" * 15 + "g"}, {"parent_span_id": "nothex"}, {"kind": "SERVERX"}, {"kind": None},
        {"start_unix_nano": None}, {"end_unix_nano": 0}, {"start_unix_nano": -5},
        {"end_unix_nano": START - 1}, {"service": None}, {"service": " \t"},
        {"sampling_probability": 0.0}, {"sampling_probability": 1.5}, {"sampling_probability": float("nan")},
        {"sampling_probability": -0.2}, {"sampling_probability": 1e-300},
        {"start_unix_nano": 1000, "end_unix_nano": 2000}, {"start_unix_nano": 4_102_444_800 * 10**9, "end_unix_nano": 4_102_444_801 * 10**9},
    ]
    rows = [GOOD] + [GOOD | {"span_id": f"{i + 1:016x}"} | change for i, change in enumerate(bad)]
    rows.append(dict(GOOD))  # duplicate of the first span
    path = _write(tmp_path / "dirty.parquet", rows)
    _, quarantine = assert_same_as_polars([path])
    assert set(quarantine["reason"]) == {"bad_ids", "bad_kinds", "bad_timestamps", "negative_duration_spans",
                                         "missing_service_name", "bad_sampling_probability", "duplicate_spans",
                                         "sampling_probability_below_floor", "timestamp_outside_partition"}
    kind_row = quarantine.filter(pl.col("reason") == "bad_kinds").row(0, named=True)
    assert '"kind":"SERVERX"' in kind_row["raw"] and "SERVERX" in kind_row["detail"]
    assert quarantine["line_no"].null_count() == quarantine.height
    assert quarantine["raw"].str.len_chars().max() <= 2000


def test_duplicates_across_files_keep_the_first_file(tmp_path):
    first = [GOOD, GOOD | {"span_id": "b" * 16}, GOOD | {"span_id": "b" * 16}]  # also within a file
    second = [GOOD | {"member_id": "other"}, GOOD | {"span_id": "c" * 16}, GOOD | {"kind": "CLIENT"}]
    files = [_write(tmp_path / "part-0000.parquet", first), _write(tmp_path / "part-0001.parquet", second)]
    conn, quarantine = assert_same_as_polars(files)
    assert quarantine.filter(pl.col("reason") == "duplicate_spans")["source_file"].sort().to_list() == [
        str(files[0]), str(files[1])]
    kept = conn.execute("SELECT member_id FROM raw.spans WHERE span_id = ? AND kind = 'SERVER'", ["a" * 16]).fetchall()
    assert kept == [("m1",)]
    # Files in the other order: the other copy wins.
    assert_same_as_polars(files[::-1])


def test_files_with_different_optional_columns(tmp_path):
    full = _write(tmp_path / "a.parquet", [GOOD | {"span_id": "1" * 16}, GOOD])
    narrow = pl.DataFrame([GOOD], schema=FRAME_SCHEMA).drop("peer_service", "member_id", "sampling_probability", "parent_span_id")
    narrow.with_columns(pl.lit("op").alias("name"), pl.lit(7).alias("extra")).write_parquet(tmp_path / "b.parquet")
    assert_same_as_polars([full, tmp_path / "b.parquet"])


def test_large_multi_row_group_file_with_dirty_rows(tmp_path):
    n = 300_000
    frame = pl.DataFrame({
        "trace_id": [T1] * n, "span_id": [f"{i + 1:016x}" for i in range(n)], "parent_span_id": [None] * n,
        "service": ["api"] * n, "kind": ["SERVER"] * n, "start_unix_nano": [START] * n, "end_unix_nano": [START + 5] * n,
        "peer_service": [None] * n, "member_id": ["m1"] * n, "sampling_probability": [0.5] * n,
    }, schema=FRAME_SCHEMA).with_row_index()
    dirty = frame.with_columns(
        pl.when(pl.col("index") % 100_000 == 7).then(pl.lit(START - 1)).otherwise(pl.col("end_unix_nano")).alias("end_unix_nano"),
        pl.when(pl.col("index") % 70_001 == 3).then(pl.lit("bogus")).otherwise(pl.col("kind")).alias("kind"),
        pl.when(pl.col("index") % 90_001 == 5).then(pl.lit("f" * 16)).otherwise(pl.col("span_id")).alias("span_id"),
    ).drop("index")
    path = tmp_path / "big.parquet"
    dirty.write_parquet(path, row_group_size=20_000)
    _, quarantine = assert_same_as_polars([path])
    assert quarantine.height > 6


def test_rerunning_a_day_replaces_it(tmp_path):
    files = [_write(tmp_path / "a.parquet", [GOOD, GOOD, GOOD | {"kind": "nope"}])]
    conn = duckdb.connect()
    other_day = pl.DataFrame([GOOD], schema=FRAME_SCHEMA)
    first = ingest_parquet_day(conn, files, DT)
    other = datetime.date(2026, 5, 27)  # another day in the lake, which the rerun must leave alone
    other_file, _ = span_lake.write_day_file(conn, other, "SELECT DATE '2026-05-27' AS dt, * EXCLUDE (dt) FROM raw.spans")
    span_lake.publish_day(conn, other, other_file)
    settings = "SELECT current_setting('preserve_insertion_order'), current_setting('memory_limit')"
    before = conn.execute(settings).fetchall()
    second = ingest_parquet_day(conn, files, DT, memory_limit="1GB")
    assert conn.execute(settings).fetchall() == before  # the connection's own settings come back
    assert first == second == {"spans": 1, "bad_kinds": 1, "duplicate_spans": 1}
    assert conn.execute("SELECT dt, count(*) FROM raw.spans GROUP BY dt ORDER BY dt").fetchall() == [
        (datetime.date(2026, 5, 27), 1), (DT, 1)]
    assert conn.execute("SELECT count(*) FROM raw.span_quarantine").fetchall() == [(2,)]
    assert other_day.height == 1


def test_files_off_the_fast_path_fall_back_to_the_polars_reader(tmp_path):
    binary = pl.DataFrame({
        "trace_id": [bytes.fromhex(T1)] * 3,
        "span_id": [bytes.fromhex("a" * 16), bytes.fromhex("b" * 16), bytes.fromhex("b" * 16)],
        "service": ["api"] * 3, "kind": ["SERVER", "CLIENT", "CLIENT"],
        "start_unix_nano": [START] * 3, "end_unix_nano": [START + 5, START + 5, START - 5],
    })
    binary.write_parquet(tmp_path / "a-binary.parquet")
    string_times = pl.DataFrame({"trace_id": [T1], "span_id": ["d" * 16], "service": ["api"], "kind": ["SERVER"],
                                 "start_unix_nano": [str(START)], "end_unix_nano": [str(START + 1)]})
    string_times.write_parquet(tmp_path / "b-strings.parquet")
    (tmp_path / "c-broken.parquet").write_bytes(b"PAR1 not really")
    fast = _write(tmp_path / "d-fast.parquet", [GOOD, GOOD | {"span_id": "b" * 16, "kind": "CLIENT"}])
    files = [tmp_path / "a-binary.parquet", tmp_path / "b-strings.parquet", tmp_path / "c-broken.parquet", fast]
    conn = duckdb.connect()
    assert [fast_path_schema(conn, f) is not None for f in files] == [False, False, False, True]
    _, quarantine = assert_same_as_polars(files)
    assert sorted(quarantine["reason"]) == ["duplicate_spans", "duplicate_spans", "negative_duration_spans", "unreadable_files"]
    # The duplicates are the fast file's copies: the binary (fallback) file came first.
    assert quarantine.filter(pl.col("reason") == "duplicate_spans")["source_file"].to_list() == [str(fast)] * 2


@pytest.mark.parametrize("floor", [None, 1e-4])
def test_sampling_floor_is_the_setting_on_the_fast_path_and_its_fallback(tmp_path, floor):
    """p = 1e-5 is trusted under the default floor (1e-6) and quarantined under a configured
    1e-4, by the SQL rules and by the polars reader a file off the fast path goes to."""
    fast = _write(tmp_path / "a-fast.parquet", [GOOD | {"sampling_probability": 1e-5}, GOOD | {"span_id": "b" * 16}])
    off_path = pl.DataFrame({"trace_id": [T1], "span_id": ["c" * 16], "service": ["api"], "kind": ["SERVER"],
                             "start_unix_nano": [START], "end_unix_nano": [START + 1], "sampling_probability": ["1e-5"]})
    off_path.write_parquet(tmp_path / "b-string-probability.parquet")
    files = [fast, tmp_path / "b-string-probability.parquet"]
    assert [fast_path_schema(duckdb.connect(), f) is not None for f in files] == [True, False]
    conn, quarantine = assert_same_as_polars(files, **({} if floor is None else {"sampling_floor": floor}))
    rare = conn.execute("SELECT span_id FROM raw.spans WHERE sampling_probability < 1e-4 ORDER BY span_id").fetchall()
    if floor is None:
        assert quarantine.is_empty() and rare == [("a" * 16,), ("c" * 16,)]
    else:
        assert rare == [] and quarantine.sort("span_id").select("reason", "span_id").rows() == [
            ("sampling_probability_below_floor", "a" * 16), ("sampling_probability_below_floor", "c" * 16)]
        assert quarantine["detail"].str.ends_with("is below the floor 0.0001").all()


@pytest.mark.parametrize("kinds", [["SERVER"], ["UNSPECIﬁED", "span_kind_internal\u2003"]])
def test_kind_spellings_follow_polars_exactly(tmp_path, kinds):
    rows = [GOOD | {"span_id": f"{i + 1:016x}", "kind": k} for i, k in enumerate(kinds)]
    assert_same_as_polars([_write(tmp_path / "k.parquet", rows)])


def test_raw_spans_asset_takes_the_fast_path_for_parquet_only_days(tmp_path):
    """Through Dagster: a Parquet-only day and a mixed day (OTLP JSON + Parquet) land the
    same rows either way, under the settings' sampling floor; the asset's metadata counts
    what was written."""
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from cost_attribution.ingest.assets import raw_spans
    from cost_attribution.resources import AnalysisSettings, LandingZone
    from ingest_span_builders import request, span, write_lines

    parquet_day, mixed_day = datetime.date(2026, 5, 27), DT
    for day in (parquet_day, mixed_day):
        folder = tmp_path / "landing" / "traces" / f"dt={day.isoformat()}"
        folder.mkdir(parents=True)
        rows = [GOOD, GOOD, GOOD | {"span_id": "b" * 16, "kind": "CLIENT"}, GOOD | {"kind": "x"},
                GOOD | {"span_id": "e" * 16, "sampling_probability": 1e-5}]  # under the configured floor
        # Each day its own file (the same bytes on two days would be a duplicate delivery).
        _write(folder / "part-0000.parquet", [row | {"member_id": str(day)} for row in rows])
    write_lines(tmp_path / "landing" / "traces" / f"dt={mixed_day.isoformat()}" / "part-0001.json",
                [request("api", span(T1, "c" * 16, kind=3))])
    warehouse = str(tmp_path / "w.duckdb")
    resources = {"landing": LandingZone(root=str(tmp_path / "landing")), "warehouse": DuckDBResource(database=warehouse),
                 "settings": AnalysisSettings(sampling_probability_floor=1e-4)}
    for day in (parquet_day, mixed_day):
        result = dg.materialize([raw_spans], partition_key=day.isoformat(), resources=resources)
        materializations = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
        metadata = {m.asset_key.path[0]: m.metadata for m in materializations}
        assert metadata["raw_spans"]["dagster/row_count"].value == (2 if day == parquet_day else 3)
        assert metadata["span_quarantine"]["by_reason"].value == {
            "bad_kinds": 1, "duplicate_spans": 1, "sampling_probability_below_floor": 1}
        assert "| api | CLIENT |" in metadata["raw_spans"]["spans_by_service"].value
    with duckdb.connect(warehouse, read_only=True) as conn:
        assert conn.execute("SELECT dt, count(*) FROM raw.spans GROUP BY dt ORDER BY dt").fetchall() == [
            (parquet_day, 2), (mixed_day, 3)]


# A span the lake stores exactly as delivered: lowercase ids, a canonical kind, a trimmed
# service, no peer on a SERVER span. GOOD is not (its peer_service).
CLEAN = GOOD | {"peer_service": None}


def _day_files(conn):
    return conn.execute("SELECT path, source_columns, skip_rows FROM raw.span_files ORDER BY path").fetchall()


def test_a_clean_delivery_is_copied_into_the_lake_not_rewritten(tmp_path):
    """Accepted rows already in normal form: the files are copied byte for byte, the view
    leaves out the quarantined and duplicate rows by row number, and reads exactly what
    the polars path would have stored (assert_same_as_polars)."""
    first = [CLEAN, CLEAN | {"span_id": "b" * 16, "kind": "CLIENT", "peer_service": "db", "parent_span_id": "a" * 16},
             CLEAN | {"span_id": "c" * 16, "kind": "nope"}]
    second = [CLEAN | {"span_id": "d" * 16, "sampling_probability": None}, dict(CLEAN)]  # row 1 repeats first[0]
    files = [_write(tmp_path / "part-0000.parquet", first), _write(tmp_path / "part-0001.parquet", second)]
    conn, quarantine = assert_same_as_polars(files)
    assert sorted(quarantine["reason"]) == ["bad_kinds", "duplicate_spans"]
    day_files = _day_files(conn)
    assert len(day_files) == 2
    by_content = {Path(path).read_bytes(): (columns, skipped) for path, columns, skipped in day_files}
    assert by_content[files[0].read_bytes()] == (list(FRAME_SCHEMA), [2])  # the file's columns, its row 2 left out
    assert by_content[files[1].read_bytes()] == (list(FRAME_SCHEMA), [1])
    assert conn.execute("SELECT sampling_probability FROM raw.spans WHERE span_id = ?", ["d" * 16]).fetchall() == [(1.0,)]
    # A day's spans come back the same from the lake's files alone (the delivered files may go).
    for path in files:
        path.unlink()
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(3,)]


@pytest.mark.parametrize("change", [
    {"trace_id": T1.upper()}, {"span_id": "A" * 16}, {"parent_span_id": ""}, {"parent_span_id": "0" * 16},
    {"parent_span_id": "B" * 16}, {"service": " api"}, {"kind": "server"}, {"kind": "SPAN_KIND_SERVER"},
    {"peer_service": "db"},  # a peer on a SERVER span is dropped
], ids=lambda change: next(iter(change)) + "=" + repr(next(iter(change.values()))))
def test_one_row_to_normalise_makes_the_day_a_rewritten_file(tmp_path, change):
    rows = [CLEAN, CLEAN | {"span_id": "b" * 16} | change]
    conn, _ = assert_same_as_polars([_write(tmp_path / "a.parquet", rows)])
    [(path, columns, skipped)] = _day_files(conn)
    assert (columns, skipped) == (list(span_lake.FILE_COLUMNS), None)  # a file the lake wrote
    assert Path(path).read_bytes() != (tmp_path / "a.parquet").read_bytes()


def test_narrow_and_wide_deliveries_are_read_through_the_lake_types(tmp_path):
    """Files without the optional columns, with an extra one, with INTEGER times and
    FLOAT probabilities: copied in, and the view casts and fills them as the rewrite did."""
    narrow = pl.DataFrame([CLEAN], schema=FRAME_SCHEMA).drop("peer_service", "member_id", "sampling_probability",
                                                               "parent_span_id")
    narrow.with_columns(pl.lit("op").alias("name"), pl.lit(7).alias("extra")).write_parquet(tmp_path / "a.parquet")
    narrow_types = pl.DataFrame([CLEAN | {"span_id": "b" * 16}], schema=FRAME_SCHEMA | {"sampling_probability": pl.Float32})
    narrow_types.write_parquet(tmp_path / "b.parquet")
    conn, _ = assert_same_as_polars([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert sorted(columns for _, columns, _ in _day_files(conn)) == sorted([
        ["trace_id", "span_id", "service", "kind", "start_unix_nano", "end_unix_nano", "name"], list(FRAME_SCHEMA)])


@pytest.mark.parametrize("limit", ["_EXCLUDED_LIST_MAX", "_SKIPPING_FILES_MAX"])
def test_more_rows_left_out_than_a_view_should_list_make_a_rewritten_file(tmp_path, monkeypatch, limit):
    import cost_attribution.ingest.parquet_sql as parquet_sql

    monkeypatch.setattr(parquet_sql, limit, 1)
    rows = [CLEAN, CLEAN | {"span_id": "b" * 16, "kind": "x"}]
    other = [CLEAN | {"span_id": "c" * 16}, CLEAN | {"span_id": "d" * 16, "kind": "y"}]
    conn, _ = assert_same_as_polars([_write(tmp_path / "a.parquet", rows), _write(tmp_path / "b.parquet", other)])
    assert [columns for _, columns, _ in _day_files(conn)] == [list(span_lake.FILE_COLUMNS)]


def test_a_file_that_changes_while_the_day_is_ingested_fails_the_day_and_keeps_the_last_one(tmp_path, monkeypatch):
    import os

    path = _write(tmp_path / "a.parquet", [CLEAN])
    conn = duckdb.connect()
    assert ingest_parquet_day(conn, [path], DT) == {"spans": 1}
    real_copy = span_lake.copy_in

    def redelivered_meanwhile(dt, source, lake):
        _write(source, [CLEAN, CLEAN | {"span_id": "b" * 16}])
        os.utime(source, ns=(1, 1))
        return real_copy(dt, source, lake)

    monkeypatch.setattr(span_lake, "copy_in", redelivered_meanwhile)
    with pytest.raises(RuntimeError, match="changed while being ingested"):
        ingest_parquet_day(conn, [path], DT)
    assert conn.execute("SELECT count(*) FROM raw.spans").fetchall() == [(1,)]
