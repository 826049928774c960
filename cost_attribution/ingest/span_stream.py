"""A day of trace files of any format -> raw.spans (the day's file of the span lake) /
raw.span_quarantine in bounded memory.

    ingest_span_day(conn, files, dt, chunk_spans, sampling_floor) -> {"spans": n, <quarantine reason>: n, ...}

Same rows as ``read_span_files(files, dt, partition=True, sampling_floor=...)`` + ``replace_rows`` (the
in-memory path, kept for one-file reads and tests), but the day is never held whole:
every file is read in chunks of about ``chunk_spans`` spans (readers.stream_partition_file),
each validated chunk is written as one Parquet file to a staging directory (under
TMPDIR, about 250 bytes of disk a span, removed afterwards), and DuckDB (under the
connection's memory_limit) then finds the cross-file duplicates and writes the rest as
the day's file of the span lake (span_lake.py). Python memory is bounded by the chunk
size (plus, for one huge OTLP document, its largest resourceSpans entry), not by the day
or the file.

Duplicates, (trace_id, span_id, service, kind) seen again in the same or a later file:
only the keys whose hash repeats are read back (normally none or few) and ranked by
``split_duplicates`` itself, so the kept copy and the quarantine text are those of the
in-memory path. One transaction (the quarantine rows and the lake's pointer to the day's
file): a rerun replaces the day, a failure keeps the old one.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from cost_attribution.ingest.parquet_sql import (
    QUARANTINE_TABLE,
    _qualified,
    _restore,
    _settings,
    begin_day_replacement,
)
from cost_attribution.ingest import span_lake
from cost_attribution.ingest.readers import stream_partition_file
from cost_attribution.ingest.readers.collector import DEFAULT_CHUNK_SIZE
from cost_attribution.ingest.readers.raw_spans import split_duplicates
from cost_attribution.ingest.spans import DEFAULT_SAMPLING_PROBABILITY_FLOOR, QUARANTINE_SCHEMA, SPAN_SCHEMA
from cost_attribution.warehouse import quote_ident, rollback_quietly

_KEY = ("trace_id", "span_id", "service", "kind")
_STAGED_SCHEMA = {"_file_idx": pl.Int64, "_row": pl.Int64, "_source_file": pl.Utf8, "_line_no": pl.Int64, "_key_hash": pl.UInt64} | SPAN_SCHEMA


class _Stager:
    """Writes each validated chunk of the day to its own Parquet file, in file order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.chunks = 0
        self.span_files = 0
        self.quarantine_files = 0
        self.file_idx = 0
        self.row = 0

    def next_file(self, file_idx: int) -> None:
        self.file_idx, self.row = file_idx, 0

    def __call__(self, spans: pl.DataFrame, quarantine: pl.DataFrame) -> None:
        if spans.height:
            staged = spans.select(
                pl.lit(self.file_idx, dtype=pl.Int64).alias("_file_idx"),
                pl.int_range(self.row, self.row + spans.height, dtype=pl.Int64).alias("_row"),
                pl.col("_source_file"),
                pl.col("_line_no"),
                pl.struct(_KEY).hash(seed=0).alias("_key_hash"),  # same seed in every chunk of the day
                *SPAN_SCHEMA,
            ).cast(_STAGED_SCHEMA)
            staged.write_parquet(self.folder / f"spans-{self.chunks:08d}.parquet", compression="uncompressed", statistics=False)
            self.row += spans.height
            self.span_files += 1
        if quarantine.height:
            quarantine.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA).write_parquet(
                self.folder / f"quarantine-{self.chunks:08d}.parquet", compression="lz4", statistics=False
            )
            self.quarantine_files += 1
        self.chunks += 1


def ingest_span_day(
    conn: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    dt: datetime.date,
    chunk_spans: int = DEFAULT_CHUNK_SIZE,
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> dict[str, int]:
    """Replace the day's raw.spans / raw.span_quarantine rows by what `files` (trace files
    of any format, in this order) hold. Returns {"spans": rows inserted, reason: quarantined}."""
    with tempfile.TemporaryDirectory(prefix="span_stream_") as tmp:
        stager = _Stager(Path(tmp))
        for file_idx, path in enumerate(files):
            stager.next_file(file_idx)
            stream_partition_file(Path(path), dt, stager, chunk_spans, sampling_floor)
        return _load_day(conn, stager, dt)


def _load_day(conn: duckdb.DuckDBPyConnection, stager: _Stager, dt: datetime.date) -> dict[str, int]:
    quarantine_table = _qualified(QUARANTINE_TABLE)
    span_columns = ", ".join(quote_ident(c) for c in SPAN_SCHEMA)
    quarantine_columns = ", ".join(quote_ident(c) for c in QUARANTINE_SCHEMA)
    staged_spans = str(stager.folder / "spans-*.parquet")
    staged_quarantine = str(stager.folder / "quarantine-*.parquet")
    previous = _settings(conn, ["preserve_insertion_order"])
    conn.execute("SET preserve_insertion_order = false")  # file order is in (_file_idx, _row)
    registered = False
    try:
        try:
            lake = begin_day_replacement(conn, dt)
            inserted, day_file = 0, None
            if stager.span_files:
                # Rows whose key hash (hashed by polars when staged) repeats (8 bytes a span in DuckDB),
                # then the exact ranking of just those rows by split_duplicates.
                candidates = pl.from_arrow(conn.sql(
                    """SELECT * FROM read_parquet($spans) WHERE _key_hash IN (
                            SELECT _key_hash FROM read_parquet($spans) GROUP BY _key_hash HAVING count(*) > 1)
                        ORDER BY _file_idx, _row""",
                    params={"spans": staged_spans},
                ).to_arrow_table()).cast(_STAGED_SCHEMA)
                if candidates.height:
                    kept, duplicates = split_duplicates(candidates.drop("_key_hash"))
                    losers = candidates.select("_file_idx", "_row").join(kept.select("_file_idx", "_row"), on=["_file_idx", "_row"], how="anti")
                else:
                    duplicates = pl.DataFrame(schema=QUARANTINE_SCHEMA)
                    losers = pl.DataFrame(schema={"_file_idx": pl.Int64, "_row": pl.Int64})
                conn.register("_ss_losers", losers.to_arrow())
                conn.register("_ss_duplicates", duplicates.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA).to_arrow())
                registered = True
                keep = ("true" if losers.is_empty() else
                        "NOT EXISTS (SELECT 1 FROM _ss_losers AS l WHERE l._file_idx = s._file_idx AND l._row = s._row)")
                day_file, inserted = span_lake.write_day_file(
                    conn, dt, f"SELECT {span_columns} FROM read_parquet($spans) AS s WHERE {keep}", {"spans": staged_spans}, lake)
                conn.execute(f"INSERT INTO {quarantine_table} ({quarantine_columns}) SELECT {quarantine_columns} FROM _ss_duplicates")
            if stager.quarantine_files:
                conn.execute(
                    f"INSERT INTO {quarantine_table} ({quarantine_columns}) SELECT {quarantine_columns} FROM read_parquet($q)",
                    {"q": staged_quarantine},
                )
            counts = conn.execute(
                f"SELECT reason, count(*) FROM {quarantine_table} WHERE dt = ? GROUP BY reason ORDER BY reason", [dt]
            ).fetchall()
            span_lake.publish_day(conn, dt, day_file)
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        span_lake.remove_unreferenced(conn, dt, lake)
    finally:
        if registered:
            conn.unregister("_ss_losers")
            conn.unregister("_ss_duplicates")
        _restore(conn, previous)
    return {"spans": int(inserted), **{str(reason): int(n) for reason, n in counts}}
