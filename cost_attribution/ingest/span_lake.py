"""raw.spans lives in files: each day's cleaned spans are one Parquet file in the lake beside
the warehouse, and raw.spans is a view over the current file of every day.

    <warehouse file>.lake/spans/dt=YYYY-MM-DD/<uuid>.parquet

The span models (dbt, on DuckDB) read the view; the same files are what an engine that
reads Parquet (Spark, Trino) would query. Why not a table: at 10M spans, appending the day
to the DuckDB file cost ~8 s of the ingest (and the file grew by the spans every day),
writing it as Parquet ~4 s, and the span models read the files as fast as the table
(bench/README.md, "The span lake").

Replacing a day is atomic with the day's quarantine rows: the new file is written first
(invisible: nothing refers to it), then, in the caller's transaction, raw.span_files points
the day at it and the view is rewritten; after COMMIT the files no row refers to any more
are deleted. A crash before COMMIT leaves the old day and an unreferenced file, a crash
after it the new day and an unreferenced file: both are removed by the next replacement of
that day (`remove_unreferenced`).

raw.span_files holds absolute paths: a warehouse copied elsewhere still reads the lake it
was written with (and never deletes from it: a replaced day's new file goes to the copy's
own lake); one moved with its lake reads the new place once each day is ingested again.
An in-memory database (tests) keeps its lake in a temporary directory.
"""

from __future__ import annotations

import datetime
import tempfile
import uuid
from pathlib import Path

import duckdb

from cost_attribution.ingest.spans import SPAN_SCHEMA, duckdb_type
from cost_attribution.warehouse import qualified, quote_ident, quote_literal, table_exists

SPANS_VIEW = "raw.spans"
SPAN_FILES_TABLE = "raw.span_files"
LAKE_SUFFIX = ".lake"
# snappy: 4.3 s for the 10M-span day against 5.3 s for zstd (0.48 vs 0.29 GB on disk) and
# 3.4 s uncompressed (0.64 GB); the span models read each day once or twice.
COMPRESSION = "snappy"

def span_columns() -> list[str]:
    return list(SPAN_SCHEMA)


def lake_dir(conn: duckdb.DuckDBPyConnection) -> Path:
    """This database's own lake: beside its file; for an in-memory database the temporary
    directory its earlier days went to, else a new one."""
    path = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
    if path:
        return Path(str(Path(path).absolute()) + LAKE_SUFFIX)
    if table_exists(conn, SPAN_FILES_TABLE):
        known = conn.execute(f"SELECT path FROM {qualified(SPAN_FILES_TABLE)} LIMIT 1").fetchall()
        if known:
            return Path(known[0][0]).parents[2]  # <lake>/spans/dt=.../<file>
    return Path(tempfile.mkdtemp(prefix="cost-attribution-lake-"))


def day_dir(lake: Path, dt: datetime.date) -> Path:
    return lake / "spans" / f"dt={dt.isoformat()}"


def write_day_file(conn: duckdb.DuckDBPyConnection, dt: datetime.date, select_sql: str,
                   params: dict | None = None, lake: Path | None = None) -> tuple[Path, int]:
    """Write the rows of `select_sql` (the span columns, in order) as a new, not yet visible
    file of day `dt`. Returns (file, rows written)."""
    folder = day_dir(lake or lake_dir(conn), dt)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.parquet"
    written = conn.execute(
        f"COPY ({select_sql}) TO {quote_literal(str(path))} (FORMAT parquet, COMPRESSION {COMPRESSION})",
        params or {},
    ).fetchall()[0][0]
    return path, int(written)


def ensure_span_files(conn: duckdb.DuckDBPyConnection) -> None:
    """raw.span_files and the raw.spans view exist; a warehouse whose raw.spans is still a
    table (written before the lake) has every day of it moved into the lake first. Call
    inside the transaction that replaces a day: the move commits or rolls back with it."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {qualified(SPAN_FILES_TABLE)} (dt DATE PRIMARY KEY, path VARCHAR NOT NULL)")
    kind = conn.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = 'raw' AND table_name = 'spans'"
    ).fetchall()
    if kind and kind[0][0] == "BASE TABLE":
        columns = ", ".join(quote_ident(c) for c in span_columns())
        lake = lake_dir(conn)
        days = [row[0] for row in conn.execute(f"SELECT DISTINCT dt FROM {qualified(SPANS_VIEW)} ORDER BY dt").fetchall()]
        for dt in days:
            path, _ = write_day_file(conn, dt, f"SELECT {columns} FROM {qualified(SPANS_VIEW)} WHERE dt = $dt", {"dt": dt}, lake)
            conn.execute(f"INSERT INTO {qualified(SPAN_FILES_TABLE)} VALUES (?, ?)", [dt, str(path)])
        conn.execute(f"DROP TABLE {qualified(SPANS_VIEW)}")
        render_view(conn)
    elif not kind:
        render_view(conn)


def publish_day(conn: duckdb.DuckDBPyConnection, dt: datetime.date, path: Path | None) -> None:
    """Point day `dt` of raw.spans at `path` (None: the day has no spans). Inside the
    caller's transaction, after ensure_span_files."""
    conn.execute(f"DELETE FROM {qualified(SPAN_FILES_TABLE)} WHERE dt = ?", [dt])
    if path is not None:
        conn.execute(f"INSERT INTO {qualified(SPAN_FILES_TABLE)} VALUES (?, ?)", [dt, str(path)])
    render_view(conn)


def render_view(conn: duckdb.DuckDBPyConnection) -> None:
    """raw.spans := the files raw.span_files names (typed and empty when it names none).
    DDL takes no parameters: the paths are quoted as string literals."""
    paths = [row[0] for row in conn.execute(f"SELECT path FROM {qualified(SPAN_FILES_TABLE)} ORDER BY dt").fetchall()]
    columns = ", ".join(quote_ident(c) for c in span_columns())
    if paths:
        files = "[" + ", ".join(quote_literal(p) for p in paths) + "]"
        body = f"SELECT {columns} FROM read_parquet({files}, hive_partitioning = false)"
    else:
        body = "SELECT " + ", ".join(f"CAST(NULL AS {duckdb_type(dtype)}) AS {quote_ident(c)}" for c, dtype in SPAN_SCHEMA.items()) + " WHERE false"
    conn.execute(f"CREATE OR REPLACE VIEW {qualified(SPANS_VIEW)} AS {body}")


def remove_unreferenced(conn: duckdb.DuckDBPyConnection, dt: datetime.date, lake: Path) -> list[Path]:
    """After COMMIT: delete the files of day `dt` in this database's own `lake` that
    raw.span_files does not name: the file the day had before, or one a crashed run left.
    Never a file elsewhere: a copied warehouse names its original's files until it
    replaces a day, and they are the original's. Returns what was deleted."""
    folder = day_dir(lake, dt)
    if not folder.is_dir():
        return []
    current = {row[0] for row in conn.execute(f"SELECT path FROM {qualified(SPAN_FILES_TABLE)} WHERE dt = ?", [dt]).fetchall()}
    removed = sorted(p for p in folder.glob("*.parquet") if str(p) not in current)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
