"""Idempotent writes into the DuckDB warehouse.

Every partitioned Python asset writes with `replace_rows`: inside one transaction it
deletes the rows of its window and inserts the new ones, so re-materializing a
partition (or a run killed halfway and rerun) never duplicates or half-writes data.
Identifiers are always quoted; values are always bound parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A SQL string literal, for the few places DuckDB takes no parameter (DDL: a view's
    file list, COPY ... TO)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(table: str) -> str:
    """'schema.table' -> quoted "schema"."table" (a bare name stays in main)."""
    return ".".join(quote_ident(part) for part in table.split("."))


def ensure_schema(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    if "." in table:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.split('.')[0])}")


def relation_type(conn: duckdb.DuckDBPyConnection, relation: str) -> str | None:
    """'BASE TABLE', 'VIEW' (information_schema's words) or None when there is no such relation."""
    schema, _, name = relation.rpartition(".")
    # fetchall, not fetchone: DuckDB 2 refuses new work while a result is unfinished.
    rows = conn.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema or "main", name],
    ).fetchall()
    return rows[0][0] if rows else None


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return relation_type(conn, table) is not None


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
    with _registered(conn, frame) as relation:
        replace_rows_from(conn, table, relation, where)
    return frame.height


def replace_rows_from(
    conn: duckdb.DuckDBPyConnection, table: str, relation: str, where: Mapping[str, Any] | None = None
) -> None:
    """replace_rows for rows that are already in DuckDB: `relation` (the name of a table,
    view or registered frame, quoted here) holds them, so they are copied by one
    INSERT ... SELECT inside the warehouse and never pass through Python."""
    with _staged(conn, table, relation) as target, transaction(conn):
        if where:
            clause = " AND ".join(f"{quote_ident(col)} = ?" for col in where)
            conn.execute(f"DELETE FROM {target} WHERE {clause}", list(where.values()))
        else:
            conn.execute(f"DELETE FROM {target}")
        columns = ", ".join(quote_ident(c) for c in relation_columns(conn, relation))
        conn.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {qualified(relation)}")


def replace_day(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, day: dt.date,
                column: str = "as_of") -> int:
    """replace_rows for one partition: `frame` stamped with the day in `column` (first),
    replacing that day's rows."""
    stamped = frame.with_columns(pl.lit(day).alias(column)).select(column, pl.all().exclude(column))
    return replace_rows(conn, table, stamped, where={column: day})


@contextlib.contextmanager
def _registered(conn: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> Iterator[str]:
    """`frame` visible to SQL as _incoming while the block runs."""
    conn.register("_incoming", frame.to_arrow())
    try:
        yield "_incoming"
    finally:
        conn.unregister("_incoming")


@contextlib.contextmanager
def _staged(conn: duckdb.DuckDBPyConnection, table: str, relation: str) -> Iterator[str]:
    """`table` existing with the columns of `relation` (a registered frame, a table or a
    view); yields the quoted table name."""
    target = qualified(table)
    ensure_schema(conn, table)
    if not table_exists(conn, table):
        # Created in its own transaction: DuckDB 2.0 loses sight of rows inserted into a
        # table created earlier in the same transaction once they pass ~122,880 (one row
        # group): SELECT * then sees none in this process.
        conn.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM {qualified(relation)} LIMIT 0")
    else:
        _add_new_columns(conn, target, relation)
    yield target


def relation_columns(conn: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [row[0] for row in conn.execute(f"SELECT * FROM {qualified(relation)} LIMIT 0").description]


@contextlib.contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back (quietly: the first error is the one raised) on any error."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except Exception:
        rollback_quietly(conn)
        raise


def _add_new_columns(conn: duckdb.DuckDBPyConnection, target: str, relation: str) -> None:
    """A warehouse written by an older version gains the columns a newer one writes
    (NULL in its old rows) instead of failing the insert."""
    existing = {row[0] for row in conn.execute(f"SELECT * FROM {target} LIMIT 0").description}
    for name, column_type, *_ in conn.execute(f"DESCRIBE SELECT * FROM {qualified(relation)}").fetchall():
        if name not in existing:
            conn.execute(f"ALTER TABLE {target} ADD COLUMN {quote_ident(name)} {column_type}")


def rollback_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failed write without hiding why it failed: when the rollback
    fails too (disk full, no transaction left), the original error is the one raised."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass


class WarehouseBusy(RuntimeError):
    """Another run holds the warehouse's writer lock; the message says who."""


def _lock_holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # gone, or being written this instant


def _holder_is_gone(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here: only its owner or a person may clear it
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


@contextlib.contextmanager
def writer_lock(warehouse: Path, landing: Path, wait_seconds: float = 0.0, poll_seconds: float = 0.5) -> Iterator[Path]:
    """One warehouse, one writer: hold `<warehouse>.lock` (pid, host, landing zone, start
    time) while the block runs. A second writer waits up to `wait_seconds`, then raises
    WarehouseBusy naming the holder. A lock left by a process that died on this host is
    taken over."""
    lock = warehouse.with_name(warehouse.name + ".lock")
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "landing": str(landing),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and _holder_is_gone(holder):
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() >= deadline:
                who = ("pid {pid} on {host}, landing zone {landing}, since {started_at}".format_map(
                    {k: holder.get(k, "?") for k in ("pid", "host", "landing", "started_at")}) if holder else "another run")
                raise WarehouseBusy(
                    f"{warehouse} is being written by {who}. Fix: wait for that run to finish (or pass a longer "
                    f"wait); if that process is gone, delete {lock}."
                ) from None
            time.sleep(poll_seconds)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        break
    try:
        yield lock
    finally:
        if _lock_holder(lock) == mine:
            lock.unlink(missing_ok=True)


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
    with _registered(conn, frame) as relation, _staged(conn, table, relation) as target, transaction(conn):
        columns = ", ".join(quote_ident(c) for c in frame.columns)
        match = " AND ".join(f"t.{quote_ident(c)} IS NOT DISTINCT FROM i.{quote_ident(c)}" for c in key)
        before = conn.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]
        conn.execute(
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM _incoming i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {match})"
        )
        inserted = conn.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0] - before
    return int(inserted)
