"""raw.spans lives in files: each day's cleaned spans are Parquet files in the lake beside
the warehouse, and raw.spans is a view over the current files of every day.

    <warehouse file>.lake/spans/dt=YYYY-MM-DD/<uuid>.parquet

The day is the directory's, not a column of the files (the layout Spark and Hive partition
by: spark_target links the files as they are); the view reads it from there.

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

A clean flat-Parquet delivery is not rewritten (parquet_sql.py): once validation has
shown its accepted rows are already in the lake's normal form, the delivered files are
copied into the day's directory byte for byte. raw.span_files says how to read each file:
which of the span columns it has (`source_columns`: the view casts them to the lake's
types and fills the others; NULL for a file written before the day left the files, which
has them all, dt too) and which rows validation left out (`skip_rows`, by row number in
the file: quarantined or duplicate; NULL for none).

raw.span_files holds absolute paths: a warehouse copied elsewhere still reads the lake it
was written with (and never deletes from it: a replaced day's new file goes to the copy's
own lake); one moved with its lake reads the new place once each day is ingested again.
An in-memory database (tests) keeps its lake in a temporary directory, removed when the
process exits.
"""

from __future__ import annotations

import atexit
import datetime
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cost_attribution.ingest.spans import SPAN_SCHEMA, duckdb_type
from cost_attribution.warehouse import qualified, quote_ident, quote_literal, relation_columns, relation_type, table_exists

SPANS_VIEW = "raw.spans"
SPAN_FILES_TABLE = "raw.span_files"
LAKE_SUFFIX = ".lake"
# snappy: 4.3 s for the 10M-span day against 5.3 s for zstd (0.48 vs 0.29 GB on disk) and
# 3.4 s uncompressed (0.64 GB); the span models read each day once or twice.
COMPRESSION = "snappy"

def span_columns() -> list[str]:
    return list(SPAN_SCHEMA)


# What a file the lake writes holds: every span column but the day.
FILE_COLUMNS = tuple(c for c in SPAN_SCHEMA if c != "dt")


@dataclass(frozen=True)
class DayFile:
    """One file of a day in the lake: the span columns it has (a delivered file copied in
    as it came may lack the optional ones) and the row numbers the view leaves out."""
    path: Path
    source_columns: tuple[str, ...] = FILE_COLUMNS
    skip_rows: tuple[int, ...] = ()


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
    # An in-memory database ends with the process: so does its lake.
    lake = Path(tempfile.mkdtemp(prefix="cost-attribution-lake-"))
    atexit.register(shutil.rmtree, lake, ignore_errors=True)
    return lake


def day_dir(lake: Path, dt: datetime.date) -> Path:
    return lake / "spans" / f"dt={dt.isoformat()}"


def write_day_file(conn: duckdb.DuckDBPyConnection, dt: datetime.date, select_sql: str,
                   params: dict | None = None, lake: Path | None = None) -> tuple[Path, int]:
    """Write the rows of `select_sql` (with the span columns) as a new, not yet visible
    file of day `dt`: the lake's columns and types, without dt. Returns (file, rows written)."""
    path = _new_file(lake or lake_dir(conn), dt)
    columns = ", ".join(f"CAST({quote_ident(c)} AS {duckdb_type(SPAN_SCHEMA[c])}) AS {quote_ident(c)}" for c in FILE_COLUMNS)
    written = conn.execute(
        f"COPY (SELECT {columns} FROM ({select_sql})) TO {quote_literal(str(path))} "
        f"(FORMAT parquet, COMPRESSION {COMPRESSION})",
        params or {},
    ).fetchall()[0][0]
    return path, int(written)


def copy_in(dt: datetime.date, source: Path, lake: Path) -> Path:
    """A delivered file copied byte for byte as a new, not yet visible file of day `dt`."""
    path = _new_file(lake, dt)
    shutil.copyfile(source, path)
    return path


def _new_file(lake: Path, dt: datetime.date) -> Path:
    """A name no file of day `dt` has yet, its directory made."""
    folder = day_dir(lake, dt)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex}.parquet"


_SPAN_FILES_COLUMNS = "dt DATE NOT NULL, path VARCHAR NOT NULL, source_columns VARCHAR[], skip_rows BIGINT[]"


def ensure_span_files(conn: duckdb.DuckDBPyConnection) -> None:
    """raw.span_files and the raw.spans view exist; a warehouse whose raw.spans is still a
    table (written before the lake) has every day of it moved into the lake first, and
    one whose raw.span_files has one file a day (before delivered files were kept as
    they are) gets the newer table. Call inside the transaction that replaces a day:
    the move commits or rolls back with it."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
    table = qualified(SPAN_FILES_TABLE)
    one_a_day = table_exists(conn, SPAN_FILES_TABLE) and "source_columns" not in relation_columns(conn, SPAN_FILES_TABLE)
    if one_a_day:
        conn.execute(f"ALTER TABLE {table} RENAME TO span_files_one_a_day")
        conn.execute(f"CREATE TABLE {table} ({_SPAN_FILES_COLUMNS})")
        conn.execute(f"INSERT INTO {table} (dt, path) SELECT dt, path FROM raw.span_files_one_a_day")
        conn.execute("DROP TABLE raw.span_files_one_a_day")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_SPAN_FILES_COLUMNS})")
    spans = relation_type(conn, SPANS_VIEW)
    if spans == "BASE TABLE":
        columns = ", ".join(quote_ident(c) for c in span_columns())
        lake = lake_dir(conn)
        days = [row[0] for row in conn.execute(f"SELECT DISTINCT dt FROM {qualified(SPANS_VIEW)} ORDER BY dt").fetchall()]
        for dt in days:
            path, _ = write_day_file(conn, dt, f"SELECT {columns} FROM {qualified(SPANS_VIEW)} WHERE dt = $dt", {"dt": dt}, lake)
            _record(conn, dt, DayFile(path))
        conn.execute(f"DROP TABLE {qualified(SPANS_VIEW)}")
        render_view(conn)
    elif one_a_day or spans is None:
        render_view(conn)


def _record(conn: duckdb.DuckDBPyConnection, dt: datetime.date, file: DayFile) -> None:
    conn.execute(f"INSERT INTO {qualified(SPAN_FILES_TABLE)} VALUES (?, ?, ?, ?)",
                 [dt, str(file.path), list(file.source_columns), list(file.skip_rows) or None])


def publish_day(conn: duckdb.DuckDBPyConnection, dt: datetime.date, files: Path | Sequence[DayFile] | None) -> None:
    """Point day `dt` of raw.spans at `files` (a file the lake wrote, or DayFiles; None or
    none: the day has no spans). Inside the caller's transaction, after ensure_span_files."""
    if files is None:
        files = []
    elif isinstance(files, Path):
        files = [DayFile(files)]
    conn.execute(f"DELETE FROM {qualified(SPAN_FILES_TABLE)} WHERE dt = ?", [dt])
    for file in files:
        _record(conn, dt, file)
    render_view(conn)


def files_as_they_are(conn: duckdb.DuckDBPyConnection, dt: datetime.date) -> list[Path] | None:
    """The files of day `dt` when another engine can read them as they are: every row
    counts and each file has exactly the lake's columns and types (FILE_COLUMNS; [] for a
    day without spans). None when the day needs the view: rows to skip, a delivered file
    (its own columns and widths), a file with the dt column, or no span lake at all
    (raw.spans is a table)."""
    if not table_exists(conn, SPAN_FILES_TABLE):
        return None
    rows = conn.execute(f"SELECT path, skip_rows IS NULL FROM {qualified(SPAN_FILES_TABLE)} WHERE dt = ? ORDER BY path",
                        [dt]).fetchall()
    if not all(every_row for _, every_row in rows):
        return None
    expected = [(c, duckdb_type(SPAN_SCHEMA[c])) for c in FILE_COLUMNS]
    for path, _ in rows:
        schema = conn.execute("DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [path]).fetchall()
        if [(str(r[0]), str(r[1])) for r in schema] != expected:
            return None
    return [Path(path) for path, _ in rows]


def spans_per_day(conn: duckdb.DuckDBPyConnection, start: datetime.date, end: datetime.date) -> dict[datetime.date, int]:
    """Rows in the lake's current files of each day in [start, end), from the Parquet
    footers (no row is read; a day without files is absent)."""
    if not table_exists(conn, SPAN_FILES_TABLE):
        return {}
    files = conn.execute(f"SELECT dt, path FROM {qualified(SPAN_FILES_TABLE)} WHERE dt >= ? AND dt < ?",
                         [start, end]).fetchall()
    if not files:
        return {}
    rows = dict(conn.execute("SELECT file_name, num_rows FROM parquet_file_metadata(?)",
                             [[path for _, path in files]]).fetchall())
    counts: dict[datetime.date, int] = {}
    for day, path in files:
        counts[day] = counts.get(day, 0) + int(rows.get(path, 0))
    return counts


def render_view(conn: duckdb.DuckDBPyConnection) -> None:
    """raw.spans := the files raw.span_files names (typed and empty when it names none).

    One scan for all the files of a column set, the day read from each file's directory
    (`dt=YYYY-MM-DD`, hive partitioning): a query for some days skips the others' files
    unopened, and a window of many days is one scan. A scan per day and file, as this
    view was before, made a hash join over a long window hold a build buffer per scan:
    the orphan check of 26 one-million-span days ran out of DuckDB's 850 MB in 78 scans,
    and took 5.8 s in one (bench/README.md). The rows validation left out (`skip_rows`)
    are an anti join with raw.span_files, by file and row number, in a scan of only the
    files that have any. Per day, as before, where the lake's path cannot be read as a
    hive layout (a directory above it named `key=value`) and for a file that holds its
    own dt (written before the days left the files). DDL takes no parameters: paths are
    quoted as literals."""
    rows = conn.execute(
        f"SELECT dt, source_columns, path, skip_rows FROM {qualified(SPAN_FILES_TABLE)} ORDER BY dt, path"
    ).fetchall()
    scans: dict[tuple, list[str]] = {}
    by_day: dict[tuple, list[str]] = {}
    for dt, source_columns, path, skip_rows in rows:
        columns = None if source_columns is None else tuple(source_columns)
        if columns is not None and _hive_layout(path):
            scans.setdefault((columns, skip_rows is not None), []).append(path)
        else:  # one scan per day and column set, or per file when it has rows to skip
            skips = tuple(skip_rows) if skip_rows is not None else None
            by_day.setdefault((dt, columns, skips, path if skips else None), []).append(path)
    selects = [_files_select(columns, paths, skips) for (columns, skips), paths in scans.items()]
    selects += [_day_select(dt, columns, paths, skips) for (dt, columns, skips, _), paths in by_day.items()]
    if selects:
        body = " UNION ALL ".join(selects)
    else:
        body = "SELECT " + ", ".join(f"CAST(NULL AS {duckdb_type(dtype)}) AS {quote_ident(c)}" for c, dtype in SPAN_SCHEMA.items()) + " WHERE false"
    conn.execute(f"CREATE OR REPLACE VIEW {qualified(SPANS_VIEW)} AS {body}")


def _hive_layout(path: str) -> bool:
    """Whether the file's day is the only `key=value` directory of its path."""
    folder = Path(path).parent
    return folder.name.startswith("dt=") and "=" not in str(folder.parent)


def _literal_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join(quote_literal(str(p)) for p in paths) + "]"


def _typed_columns(have: set[str], dt_value: str) -> list[str]:
    """The span columns as the lake's types: dt `dt_value`, a column the files lack NULL
    (sampling_probability 1.0, as validation read it)."""
    selected = []
    for column, dtype in SPAN_SCHEMA.items():
        sql_type = duckdb_type(dtype)
        if column == "dt":
            value = dt_value
        elif column in have:
            value = f"CAST({quote_ident(column)} AS {sql_type})"
        else:
            value = f"CAST(NULL AS {sql_type})"
        if column == "sampling_probability":
            value = f"COALESCE({value}, 1.0)"
        selected.append(f"{value} AS {quote_ident(column)}")
    return selected


def _files_select(source_columns: Sequence[str], paths: Sequence[str], skips: bool) -> str:
    """One scan of files of one column set, any days: dt from the directory."""
    selected = ", ".join(_typed_columns(set(source_columns), "dt"))
    # union_by_name: files of one column set may still differ in width (INTEGER / BIGINT times).
    source = (f"read_parquet({_literal_list(paths)}, hive_partitioning = true, hive_types = {{'dt': DATE}}, "
              "union_by_name = true")
    if not skips:
        return f"SELECT {selected} FROM {source})"
    left_out = (f"SELECT path AS filename, unnest(skip_rows) AS file_row_number FROM {qualified(SPAN_FILES_TABLE)} "
                "WHERE skip_rows IS NOT NULL")
    return (f"SELECT {selected} FROM {source}, filename = true, file_row_number = true) "
            f"ANTI JOIN ({left_out}) AS left_out USING (filename, file_row_number)")


def _day_select(dt: datetime.date, source_columns: Sequence[str] | None, paths: Sequence[str],
                skip_rows: Sequence[int] | None) -> str:
    """The span columns of some files of day `dt` (one file when it has rows to skip); row
    numbers are integers."""
    have = set(span_columns() if source_columns is None else source_columns)
    selected = ", ".join(_typed_columns(have, f"CAST({quote_literal(dt.isoformat())} AS DATE)"))
    source = f"read_parquet({_literal_list(paths)}, hive_partitioning = false, union_by_name = true"
    if skip_rows:
        rows = ", ".join(str(int(r)) for r in skip_rows)
        return f"SELECT {selected} FROM {source}, file_row_number = true) WHERE file_row_number NOT IN ({rows})"
    return f"SELECT {selected} FROM {source})"


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
