"""Flat span Parquet (the landing-zone contract's columns), validated column-wise.

No Python loop per row: columns are cast to the same raw shape the JSON readers produce
and go through the same vectorised rules.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cost_attribution.ingest.readers.collector import SpanCollector
from cost_attribution.ingest.readers.raw_spans import IdEncoding, finalize_frame

REQUIRED_COLUMNS = ("trace_id", "span_id", "service", "kind", "start_unix_nano", "end_unix_nano")
OPTIONAL_COLUMNS = ("parent_span_id", "peer_service", "member_id", "sampling_probability", "name")


def _as_text(column: str, schema: pl.Schema) -> pl.Expr:
    if column not in schema:
        return pl.lit(None, dtype=pl.Utf8).alias(column)
    if schema[column] == pl.Binary:  # raw 16/8-byte ids
        return pl.col(column).bin.encode("hex").alias(column)
    return pl.col(column).cast(pl.Utf8, strict=False).alias(column)


def _as_nanos(column: str, schema: pl.Schema) -> pl.Expr:
    dtype = schema[column]
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64, strict=False)  # UInt64 beyond int64 -> null -> quarantined
    if isinstance(dtype, pl.Datetime):
        return pl.col(column).dt.epoch("ns")
    return pl.col(column).cast(pl.Utf8, strict=False).cast(pl.Int64, strict=False)  # floats fail, not truncate


def _sampling(schema: pl.Schema) -> pl.Expr:
    if "sampling_probability" not in schema:
        return pl.lit(None, dtype=pl.Float64).alias("sampling_attr")
    raw = pl.col("sampling_probability")
    as_float = (raw.cast(pl.Utf8, strict=False) if schema["sampling_probability"] == pl.Boolean else raw).cast(pl.Float64, strict=False)
    # A value that is present but not a number must be quarantined, not read as "absent".
    return pl.when(raw.is_not_null() & as_float.is_null()).then(float("nan")).otherwise(as_float).alias("sampling_attr")


def read_flat_parquet_file(path: Path, collector: SpanCollector) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The whole file is one chunk (a Parquet day of flat files takes the DuckDB path,
    ingest.parquet_sql, which is bounded by DuckDB's memory_limit)."""
    try:
        original = pl.read_parquet(path)
    except Exception as error:  # polars raises several types for corrupt/non-parquet input
        collector.reject("unreadable_files", f"not a readable Parquet file: {error}", None, "")
        return collector.finish()
    schema = original.schema
    missing = [column for column in REQUIRED_COLUMNS if column not in schema]
    if missing:
        collector.reject("unreadable_files", f"flat span Parquet lacks required columns {missing}", None, str(dict(schema)))
        return collector.finish()
    raw = original.select(
        *(_as_text(c, schema) for c in ("trace_id", "span_id", "parent_span_id", "service", "kind", "name")),
        _as_nanos("start_unix_nano", schema),
        _as_nanos("end_unix_nano", schema),
        _as_text("start_unix_nano", schema).alias("start_unix_nano_raw"),
        _as_text("end_unix_nano", schema).alias("end_unix_nano_raw"),
        _as_text("peer_service", schema),
        _as_text("member_id", schema),
        _sampling(schema),
        pl.lit(None, dtype=pl.Utf8).alias("tracestate"),
        pl.lit(None, dtype=pl.Int64).alias("line_no"),
    ).with_row_index("_row")
    printable = original.with_columns(pl.col(c).bin.encode("hex") for c, t in schema.items() if t == pl.Binary)

    def record_texts(indices: list[int]) -> list[str]:
        return printable[indices].select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()

    spans, quarantine = finalize_frame(
        raw, collector.dt, collector.source_file, IdEncoding.HEX, record_texts, collector.sampling_floor
    )
    collector_spans, collector_quarantine = collector.finish()
    if collector.sink is not None:
        collector.sink(spans, quarantine)
        return collector_spans, collector_quarantine
    return spans, pl.concat([quarantine, collector_quarantine])
