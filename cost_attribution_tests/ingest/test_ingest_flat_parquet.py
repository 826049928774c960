"""Flat span Parquet: a round trip through the contract's columns, bad rows quarantined."""

from __future__ import annotations

import datetime

import polars as pl

from cost_attribution.ingest.readers import read_span_file, read_span_files
from cost_attribution.ingest.spans import SPAN_SCHEMA
from ingest_span_builders import START, request, span, write_lines

DT = datetime.date(2026, 5, 28)
CONTRACT_COLUMNS = ["trace_id", "span_id", "parent_span_id", "service", "kind", "start_unix_nano", "end_unix_nano",
                    "peer_service", "member_id", "sampling_probability"]
T1 = "ab" * 16


def test_otlp_to_parquet_round_trip(tmp_path):
    spans = [span(T1, "a" * 16, attributes={"enduser.id": "m1", "sampling.probability": 0.5}),
             span(T1, "b" * 16, kind=3, parent="a" * 16, attributes={"peer.service": "auth"}, tracestate="ot=th:c"),
             span(T1, "c" * 16, kind=2, parent="b" * 16)]
    from_json = read_span_file(write_lines(tmp_path / "x.json", [request("api", *spans[:2]), request("auth", spans[2])]), DT).spans
    from_json.select(CONTRACT_COLUMNS).write_parquet(tmp_path / "x.parquet")
    from_parquet = read_span_file(tmp_path / "x.parquet", DT)
    assert from_parquet.quarantine.is_empty()
    assert from_parquet.spans.equals(from_json.with_columns(pl.lit(None, dtype=pl.Utf8).alias("name")))
    assert from_parquet.spans["sampling_probability"].to_list() == [0.5, 0.25, 1.0]


def test_bad_parquet_rows_are_quarantined_and_good_rows_survive(tmp_path):
    good = {"trace_id": T1, "span_id": "a" * 16, "parent_span_id": None, "service": "api", "kind": "SERVER",
            "start_unix_nano": START, "end_unix_nano": START + 10, "peer_service": None, "member_id": "m1",
            "sampling_probability": 0.1}
    bad = {
        "bad_ids": {"span_id": "xyz"},
        "bad_kinds": {"kind": "SERVERX"},
        "bad_timestamps": {"start_unix_nano": None},
        "negative_duration_spans": {"end_unix_nano": START - 1},
        "missing_service_name": {"service": None},
        "bad_sampling_probability": {"sampling_probability": 0.0},
        "duplicate_spans": {},
    }
    rows = [good] + [good | {"span_id": f"{i + 1:016x}"} | change for i, change in enumerate(bad.values())]
    rows[-1]["span_id"] = "a" * 16  # the duplicate repeats the good span
    rows.append(good | {"span_id": "c" * 16, "kind": "CLIENT", "peer_service": "auth", "sampling_probability": None})
    pl.DataFrame(rows, schema={c: pl.Utf8 for c in ("trace_id", "span_id", "parent_span_id", "service", "kind", "peer_service", "member_id")}
                 | {"start_unix_nano": pl.Int64, "end_unix_nano": pl.Int64, "sampling_probability": pl.Float64}).write_parquet(tmp_path / "f.parquet")
    batch = read_span_file(tmp_path / "f.parquet", DT)
    assert batch.spans.select("span_id", "kind", "peer_service", "sampling_probability").rows() == [
        ("a" * 16, "SERVER", None, 0.1), ("c" * 16, "CLIENT", "auth", 1.0)]
    assert sorted(batch.quarantine["reason"].to_list()) == sorted(bad)
    assert batch.quarantine["line_no"].null_count() == batch.quarantine.height  # not a line-oriented file
    kind_row = batch.quarantine.filter(pl.col("reason") == "bad_kinds").row(0, named=True)
    assert '"kind":"SERVERX"' in kind_row["raw"] and "SERVERX" in kind_row["detail"]


def test_parquet_with_odd_types_and_missing_columns(tmp_path):
    frame = pl.DataFrame({
        "trace_id": [bytes.fromhex(T1)] * 2,
        "span_id": [bytes.fromhex("a" * 16), bytes.fromhex("b" * 16)],
        "service": ["api", "api"],
        "kind": ["SERVER", "CLIENT"],
        "start_unix_nano": ["1780000000000000000", "1.5e18"],
        "end_unix_nano": [START + 5, START + 5],
        "sampling_probability": ["0.5", "x"],
    })
    frame.write_parquet(tmp_path / "odd.parquet")
    batch = read_span_file(tmp_path / "odd.parquet", DT)
    assert batch.spans.select("trace_id", "span_id", "start_unix_nano", "sampling_probability").rows() == [(T1, "a" * 16, START, 0.5)]
    assert batch.quarantine["reason"].to_list() == ["bad_timestamps"]
    assert dict(batch.spans.schema) == SPAN_SCHEMA
    frame.drop("kind").write_parquet(tmp_path / "nokind.parquet")
    missing = read_span_files([tmp_path / "nokind.parquet"], DT)
    assert missing.quarantine.select("reason").rows() == [("unreadable_files",)] and "kind" in missing.quarantine["detail"][0]


def test_large_multi_row_group_parquet_with_dirty_rows(tmp_path):
    """Regression: polars 2.1 panicked labelling rejected rows read from a Parquet file
    of many row groups (multi-chunk columns)."""
    n = 300_000
    ids = [f"{i + 1:016x}" for i in range(n)]  # an all-zero span id is invalid
    frame = pl.DataFrame({
        "trace_id": [T1] * n, "span_id": ids, "parent_span_id": [None] * n, "service": ["api"] * n,
        "kind": ["SERVER"] * n, "start_unix_nano": [START] * n, "end_unix_nano": [START + 5] * n,
        "peer_service": [None] * n, "member_id": ["m1"] * n, "sampling_probability": [0.5] * n,
    }, schema_overrides={"parent_span_id": pl.Utf8, "peer_service": pl.Utf8})
    dirty = frame.with_row_index().with_columns(
        pl.when(pl.col("index") % 100_000 == 7).then(pl.lit(START - 1)).otherwise(pl.col("end_unix_nano")).alias("end_unix_nano")
    ).drop("index")
    dirty.write_parquet(tmp_path / "big.parquet", row_group_size=20_000)
    batch = read_span_file(tmp_path / "big.parquet", DT)
    assert batch.quarantine["reason"].to_list() == ["negative_duration_spans"] * 3
    assert batch.spans.height == n - 3
