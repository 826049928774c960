"""Tables an as-of analysis keeps from one day to the next instead of summing every day of
its experiments again (attribution/latency_window.py: latency histograms;
attribution/usage_window.py: the usage statistics' member totals).

A window is a set of kept tables, the relations they are made of and two ways to bring
them to an as-of day: `build` sums them from the member rows, `advance` adds one day to
the day before's. The warehouse keeps, per window, the as-of day its tables are for and a
digest of what they were made of (per input and day that can count: its rows and a hash
of them). `refresh` advances them when they are for the day before and nothing under them
has changed since, and builds them otherwise (a re-ingested day, a late allocation, a
moved start, a skipped or an earlier day, other parameters, a kept table gone missing).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from cost_attribution.warehouse import qualified, quote_ident, relation_columns, table_exists, transaction

STATE_TABLE = "main.latency_window_state"


# An input of a window: relation -> (its day column, the first day that can count as of
# the as-of day; None: every day).
Inputs = dict[str, tuple[str, dt.date | None]]


@dataclass(frozen=True)
class Window:
    """A set of kept tables (`build` writes them as of a day from the member rows,
    `advance` adds one day to them) and the relations they are made of (`inputs`, given
    the connection and the as-of day)."""

    name: str
    tables: tuple[str, ...]
    inputs: Callable[[duckdb.DuckDBPyConnection, dt.date], Inputs]
    build: Callable[[duckdb.DuckDBPyConnection, dt.date], None]
    advance: Callable[[duckdb.DuckDBPyConnection, dt.date], None]
    params: str = ""  # anything else the kept tables depend on (e.g. latency's member groups)


def digest(conn: duckdb.DuckDBPyConnection, inputs: Inputs, as_of: dt.date) -> list[list]:
    """[relation, day, rows, hash] for every day of every input that can count through
    `as_of` (and its rows without a day): one scan of those days, hashing whole rows, so any
    change to a row shows and older days cost nothing."""
    parts = []
    for relation, (day, since) in sorted(inputs.items()):
        columns = ", ".join(quote_ident(c) for c in relation_columns(conn, relation))
        rows = conn.execute(
            f"""
            SELECT CAST({day} AS DATE) AS day, count(*) AS n, CAST(sum(hash({columns})) AS VARCHAR) AS h
            FROM {qualified(relation)}
            WHERE (CAST({day} AS DATE) <= ? AND (CAST(? AS DATE) IS NULL OR CAST({day} AS DATE) >= ?)) OR {day} IS NULL
            GROUP BY ALL
            """,
            [as_of, since, since],
        ).fetchall()
        parts += [[relation, day.isoformat() if day else None, n, h] for day, n, h in rows]
    return sorted(parts, key=lambda p: (p[0], p[1] or ""))


def _through(parts: list[list], day: dt.date) -> list[list]:
    return [p for p in parts if p[1] is None or p[1] <= day.isoformat()]


def _kept(conn: duckdb.DuckDBPyConnection, name: str) -> tuple[dt.date, str] | None:
    if not table_exists(conn, STATE_TABLE):
        return None
    rows = conn.execute(f"SELECT as_of, digest FROM {qualified(STATE_TABLE)} WHERE window_name = ?", [name]).fetchall()
    return rows[0] if rows else None


def _fingerprint(window: Window, parts: list[list]) -> str:
    return json.dumps({"params": window.params, "inputs": parts}, sort_keys=True)


def refresh(conn: duckdb.DuckDBPyConnection, window: Window, as_of: dt.date) -> str:
    """Bring the window's tables to `as_of`: 'kept' (they are for that day and made of the
    same rows), 'advanced' (they were for the day before and nothing they were made of has
    changed: one day added) or 'rebuilt' (summed from the member rows)."""
    parts = digest(conn, window.inputs(conn, as_of), as_of)
    now = _fingerprint(window, parts)
    kept = _kept(conn, window.name) if all(table_exists(conn, table) for table in window.tables) else None
    if kept is not None and kept == (as_of, now):
        return "kept"
    day_before = as_of - dt.timedelta(days=1)
    advance = kept is not None and kept == (day_before, _fingerprint(window, _through(parts, day_before)))
    with transaction(conn):
        (window.advance if advance else window.build)(conn, as_of)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {qualified(STATE_TABLE)} "
                     "(window_name VARCHAR PRIMARY KEY, as_of DATE, digest VARCHAR)")
        conn.execute(f"INSERT OR REPLACE INTO {qualified(STATE_TABLE)} VALUES (?, ?, ?)", [window.name, as_of, now])
    return "advanced" if advance else "rebuilt"
