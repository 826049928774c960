"""Idempotent writes into the DuckDB warehouse.

Every partitioned Python asset writes with `replace_rows`: inside one transaction it
deletes the rows of its window and inserts the new ones, so re-materializing a
partition (or a run killed halfway and rerun) never duplicates or half-writes data.
Identifiers are always quoted; values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb
import polars as pl


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    """'schema.table' -> quoted "schema"."table" (a bare name stays in main)."""
    return ".".join(quote_ident(part) for part in table.split("."))


def ensure_schema(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    if "." in table:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.split('.')[0])}")


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, _, name = table.rpartition(".")
    # fetchall, not fetchone: DuckDB 2 refuses new work while a result is unfinished.
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema or "main", name],
    ).fetchall()
    return bool(rows and rows[0][0])


def replace_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    frame: pl.DataFrame,
    where: Mapping[str, Any] | None = None,
) -> int:
    """Replace the rows of `table` matching `where` (column = value, ANDed) by `frame`.

    `where=None` replaces the whole table. The table is created from the frame's
    schema the first time. Returns the number of rows inserted.
    """
    with _staged(conn, table, frame) as target, _transaction(conn):
        if where:
            clause = " AND ".join(f"{quote_ident(col)} = ?" for col in where)
            conn.execute(f"DELETE FROM {target} WHERE {clause}", list(where.values()))
        else:
            conn.execute(f"DELETE FROM {target}")
        columns = ", ".join(quote_ident(c) for c in frame.columns)
        conn.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM _incoming")
    return frame.height


@contextmanager
def _staged(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> Iterator[str]:
    """`frame` registered as _incoming and `table` existing with its columns; yields the
    quoted table name."""
    target = qualified(table)
    ensure_schema(conn, table)
    conn.register("_incoming", frame.to_arrow())
    try:
        if not table_exists(conn, table):
            # Created in its own transaction: DuckDB 2.0 loses sight of rows inserted into a
            # table created earlier in the same transaction once they pass ~122,880 (one row
            # group): SELECT * then sees none in this process.
            conn.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM _incoming LIMIT 0")
        else:
            _add_new_columns(conn, target)
        yield target
    finally:
        conn.unregister("_incoming")


@contextmanager
def _transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def _add_new_columns(conn: duckdb.DuckDBPyConnection, target: str) -> None:
    """A warehouse written by an older version gains the columns a newer one writes
    (NULL in its old rows) instead of failing the insert."""
    existing = {row[0] for row in conn.execute(f"SELECT * FROM {target} LIMIT 0").description}
    for name, column_type, *_ in conn.execute("DESCRIBE SELECT * FROM _incoming").fetchall():
        if name not in existing:
            conn.execute(f"ALTER TABLE {target} ADD COLUMN {quote_ident(name)} {column_type}")


def read_frame(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    return pl.from_arrow(conn.sql(sql, params=params or None).to_arrow_table())


def markdown_table(frame: pl.DataFrame, max_rows: int = 50, float_digits: int = 3) -> str:
    """A frame as a markdown table for Dagster metadata (what a person reads in the UI)."""
    if frame.is_empty():
        return "_(no rows)_"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    lines = [header, rule]
    for row in shown.iter_rows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f"{value:,.{float_digits}f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > max_rows:
        lines.append(f"\n_{frame.height - max_rows} more rows_")
    return "\n".join(lines)


def append_new_rows(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, key: list[str]) -> int:
    """Append-only write: insert the rows of `frame` whose `key` columns are not in `table`
    yet; rows already there are never rewritten (a log of decisions). Returns the number
    inserted. Idempotent, so a re-run or a backfill adds nothing it already holds."""
    with _staged(conn, table, frame) as target, _transaction(conn):
        columns = ", ".join(quote_ident(c) for c in frame.columns)
        match = " AND ".join(f"t.{quote_ident(c)} IS NOT DISTINCT FROM i.{quote_ident(c)}" for c in key)
        before = conn.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]
        conn.execute(
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM _incoming i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {match})"
        )
        inserted = conn.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0] - before
    return int(inserted)
