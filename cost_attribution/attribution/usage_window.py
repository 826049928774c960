"""Every started experiment's member totals through an as-of day, carried from one day to
the next instead of summed again over every day of the experiment.

The usage statistics (usage_moments) need, per experiment, each allocated member's usage
per cell and service summed over the days it was treated (the outcome), its usage before
(the CUPED pre-period), its root requests while treated (the activity covariate) and a
count of the rows no allocation claims. Summed from the member rows every day, that reads
every day of every running experiment again, and the as-of run grew with the experiments'
age: usage_deltas took 2.6 s on an experiment's first day at 1M spans a day and 7.9-9.4 s
on its 26th-28th, and at 10M spans 6.5 s on the first and 23.4 s on the seventh
(bench/README.md). The window keeps those totals in the warehouse (carried_window.py: the
as-of day they are for and a digest of what they were made of). The next day's totals are
the kept ones plus what that day adds, merged in one experiment at a time:
- the day's rows of the members allocated by then (their treated usage, and the day's
  spans before allocated_at of the members allocated that day);
- the earlier rows of the members allocated that day: until then they were no one's
  pre-period. The kept totals hold only members allocated by their as-of day, so what
  they are does not depend on allocations made later (which a daily run has not seen);
- an experiment that starts that day is summed whole (its pre-period reaches back).
Anything else (a re-ingested day, a late allocation row, a moved start, another choice of
sources, work measure or pre-period, a day skipped) sums them again, as does a member
allocated that day to a second cell of an experiment it was already in (its earlier
rows leave the totals).

What a day adds costs about what its rows cost to sum and write, however old the
experiments: at 10M spans a day 10.4 s for the five experiments (a MERGE an experiment:
every experiment in one MERGE took 26 s; rewriting each experiment's rows took the same as
merging them), so from an experiment's fourth day or so it is cheaper than re-reading,
which grew 2.8 s a day. Sums of the same rows taken in another order differ in the last
bits; the tests compare them to 1e-12 (test_usage_window.py).
"""

from __future__ import annotations

import datetime as dt
import itertools

import duckdb

from cost_attribution.attribution.carried_window import Inputs, Window, refresh
from cost_attribution.attribution.member_rows import MEMBER_ROWS
from cost_attribution.attribution.member_usage import (
    ALLOCATED_ROWS, CHOSEN_ROWS, PRE_PERIOD, TREATED_ROOTS, UsageScope, started_experiments)
from cost_attribution.warehouse import qualified, quote_ident, relation_type, table_exists

USAGE_TOTALS = "main.usage_window_usage"  # the outcome: treated usage per member, cell and service
USAGE_PRE = "main.usage_window_pre"  # the pre-period covariate per member, cell and service
USAGE_ROOTS = "main.usage_window_roots"  # the root requests while treated per member, cell and service
USAGE_UNCLAIMED = "main.usage_window_unclaimed"  # treated rows no single-cell allocation claims

# Columns of each kept table after experiment_id (the staged tables' columns), and which
# of them are summed when a day is merged in.
_COLUMNS = {
    USAGE_TOTALS: ("member_id VARCHAR", "cell VARCHAR", "service VARCHAR", "measured_from VARCHAR",
                   "requests DOUBLE", "work DOUBLE"),
    USAGE_PRE: ("member_id VARCHAR", "cell VARCHAR", "service VARCHAR", "pre_requests DOUBLE", "pre_work DOUBLE"),
    USAGE_ROOTS: ("member_id VARCHAR", "cell VARCHAR", "service VARCHAR", "root_requests DOUBLE"),
    USAGE_UNCLAIMED: ("rows BIGINT",),
}
_KEYS = ("member_id", "cell", "service")
_tables = itertools.count()


def _column_list(table: str, with_experiment: bool = False) -> str:
    return ", ".join((("experiment_id VARCHAR",) if with_experiment else ()) + _COLUMNS[table])


# ------------------------------------------------------------------- the staging SQL
# One experiment's rows summed per member; usage_moments stages the same SQL's result when
# nothing is kept. `allocated` is a table of the experiment's clean allocations as of the
# day (member_id, cell, cells: made by create_allocations); `rows` one of its member rows
# (member_id, cell, service, source, pre_period, requests, work: made by create_rows).

def create_allocations(conn: duckdb.DuckDBPyConnection, table: str, experiment_id: str, as_of: dt.date) -> None:
    """The experiment's allocations made by `as_of`, one row per member with its number of
    cells (a member in two cells is left out of every sum, and counted)."""
    conn.execute(
        f"""
        CREATE TEMP TABLE {table} AS
        SELECT member_id, any_value(cell) AS cell, count(*) AS cells
        FROM (
            SELECT DISTINCT CAST(a.member_id AS VARCHAR) AS member_id, CAST(a.cell AS VARCHAR) AS cell
            {ALLOCATED_ROWS} AND a.member_id IS NOT NULL AND a.cell IS NOT NULL
        )
        GROUP BY member_id
        """,
        [experiment_id, as_of, as_of],
    )


def single_cell(allocations: str) -> str:
    return f"(SELECT member_id, cell FROM {allocations} WHERE cells = 1)"


def create_rows(conn: duckdb.DuckDBPyConnection, table: str, scope: UsageScope, experiment_id: str,
                where: str = "", params: list | None = None) -> None:
    """The experiment's member rows the scope counts (CHOSEN_ROWS), narrowed by `where`."""
    conn.execute(
        f"""
        CREATE TEMP TABLE {table} AS
        SELECT u.member_id, u.cell, u.service, u.source, {PRE_PERIOD} AS pre_period,
               u.requests, u.{quote_ident(scope.work_column)} AS work
        {CHOSEN_ROWS} AND u.experiment_id = ? {where}
        """,
        [*scope.running(), scope.client_measured, experiment_id, *(params or [])],
    )


def usage_sql(rows: str, allocated: str) -> str:
    """The treated usage per member, cell and service (USAGE_TOTALS' columns)."""
    return f"""
        SELECT a.member_id, a.cell, u.service, any_value(u.source) AS measured_from,
               sum(u.requests) AS requests, sum(u.work) AS work
        FROM {rows} u JOIN {allocated} a ON a.member_id = u.member_id AND (u.cell IS NULL OR u.cell = a.cell)
        WHERE NOT u.pre_period
        GROUP BY ALL
    """


def pre_sql(rows: str, allocated: str) -> str:
    """The usage before treatment per member, cell and service (USAGE_PRE's columns)."""
    return f"""
        SELECT a.member_id, a.cell, u.service,
               coalesce(sum(u.requests), 0) AS pre_requests, coalesce(sum(u.work), 0) AS pre_work
        FROM {rows} u JOIN {allocated} a USING (member_id)
        WHERE u.pre_period
        GROUP BY ALL
    """


def unclaimed_sql(rows: str, allocated: str) -> str:
    """How many treated rows no single-cell allocation of their cell claims."""
    return f"""
        SELECT count(*) AS rows FROM {rows} u
        LEFT JOIN {allocated} a ON a.member_id = u.member_id AND (u.cell IS NULL OR u.cell = a.cell)
        WHERE NOT u.pre_period AND a.member_id IS NULL
    """


def roots_sql(allocated: str, day_only: bool = False) -> str:
    """The root requests while treated per member, cell and service (USAGE_ROOTS' columns;
    params: experiment_id, as_of, as_of[, the day])."""
    return f"""
        SELECT a.member_id, a.cell, r.service, sum(r.root_requests) AS root_requests
        FROM (SELECT r.* {TREATED_ROOTS} {"AND r.dt = ?" if day_only else ""}) r JOIN {allocated} a USING (member_id)
        GROUP BY ALL
    """


def experiment_sums(alloc: str, rows: str, experiment_id: str, as_of: dt.date, has_roots: bool,
                    day: dt.date | None = None) -> list[tuple[str, str, list]]:
    """(kept table, the SQL of its rows for one experiment, its params) for each kept table:
    summed from `rows` and the allocations `alloc` (single-cell members only), the root
    requests of the whole window or (`day`) of that day. Without main.member_roots, none."""
    allocated = single_cell(alloc)
    sums = [(USAGE_TOTALS, usage_sql(rows, allocated), []), (USAGE_PRE, pre_sql(rows, allocated), []),
            (USAGE_UNCLAIMED, unclaimed_sql(rows, allocated), [])]
    if has_roots:
        sums.append((USAGE_ROOTS, roots_sql(allocated, day_only=day is not None),
                     [experiment_id, as_of, as_of] + ([day] if day is not None else [])))
    return sums


# ------------------------------------------------------------------------ the window

def _member_row_relations(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Where member_service_usage's rows are: the per-member days and allocation days its
    view joins, or the table itself (the Spark target's copy)."""
    usage = MEMBER_ROWS[0]
    return [usage.member_days, usage.same_days] if relation_type(conn, usage.joined) == "VIEW" else [usage.joined]


def _usage_inputs(conn: duckdb.DuckDBPyConnection, as_of: dt.date, pre_period_days: int) -> Inputs:
    """The member rows from the earliest start less the pre-period (every day when a started
    experiment has no start; none when none has started), the root requests from the
    earliest start, every allocation and experiment."""
    member_rows = _member_row_relations(conn)
    starts = started_experiments(conn, as_of)["start_date"]
    first = as_of + dt.timedelta(days=1) if starts.is_empty() else None if starts.null_count() else starts.min()
    since = None if first is None else first - dt.timedelta(days=pre_period_days)
    inputs: Inputs = {relation: ("dt", since) for relation in member_rows}
    if table_exists(conn, "main.member_roots"):
        inputs["main.member_roots"] = ("dt", first)
    return inputs | {"raw.allocations": ("allocated_at", None), "raw.experiments": ("start_date", None)}


def usage_window(scope: UsageScope) -> Window:
    """USAGE_TOTALS, USAGE_PRE, USAGE_ROOTS and USAGE_UNCLAIMED of every experiment started
    by the day, as the scope counts rows (its sources, work measure and pre-period)."""
    kept = (USAGE_TOTALS, USAGE_PRE, USAGE_ROOTS, USAGE_UNCLAIMED)

    def create_kept(conn: duckdb.DuckDBPyConnection) -> None:
        for table in kept:
            conn.execute(f"CREATE OR REPLACE TABLE {qualified(table)} ({_column_list(table, with_experiment=True)})")

    def add(conn: duckdb.DuckDBPyConnection, experiment_id: str, as_of: dt.date, day: dt.date | None) -> None:
        """The experiment's totals as of `as_of` (day None) or what `day` (= as_of) adds to
        the day before's, merged into the kept tables."""
        k = next(_tables)
        alloc, rows, part = (quote_ident(f"_usage_window_{name}_{k}") for name in ("alloc", "rows", "part"))
        create_allocations(conn, alloc, experiment_id, as_of)
        if day is None:
            create_rows(conn, rows, scope, experiment_id)
        else:
            create_rows(conn, rows, scope, experiment_id, "AND u.dt = ?", [day])
            # The members allocated this day: their earlier rows become their pre-period.
            newly = (f"SELECT member_id FROM {alloc} WHERE member_id IN "
                     f"(SELECT a.member_id {ALLOCATED_ROWS} AND CAST(a.allocated_at AS DATE) = ?)")
            [(n,)] = conn.execute(f"SELECT count(*) FROM ({newly})", [experiment_id, as_of, as_of, day]).fetchall()
            if n:
                conn.execute(
                    f"""
                    INSERT INTO {rows}
                    SELECT u.member_id, u.cell, u.service, u.source, {PRE_PERIOD} AS pre_period,
                           u.requests, u.{quote_ident(scope.work_column)} AS work
                    {CHOSEN_ROWS} AND u.experiment_id = ? AND u.dt < ? AND {PRE_PERIOD}
                      AND u.member_id IN ({newly})
                    """,
                    [*scope.running(), scope.client_measured, experiment_id, day, experiment_id, as_of, as_of, day],
                )
        has_roots = table_exists(conn, "main.member_roots")
        for table, sql, params in experiment_sums(alloc, rows, experiment_id, as_of, has_roots, day):
            if day is None:
                conn.execute(f"INSERT INTO {qualified(table)} SELECT CAST(? AS VARCHAR), * FROM ({sql})",
                             [experiment_id, *params])
                continue
            conn.execute(f"CREATE TEMP TABLE {part} AS {sql}", params)
            _merge(conn, table, part, experiment_id)
            conn.execute(f"DROP TABLE {part}")
        for table in (alloc, rows):
            conn.execute(f"DROP TABLE {table}")

    def build(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
        create_kept(conn)
        for experiment_id in started_experiments(conn, as_of)["experiment_id"]:
            add(conn, experiment_id, as_of, None)

    def advance(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
        started = started_experiments(conn, as_of)
        for experiment_id, start in started.select("experiment_id", "start_date").iter_rows():
            if start == as_of or _cell_added(conn, experiment_id, as_of):
                for table in kept:
                    conn.execute(f"DELETE FROM {qualified(table)} WHERE experiment_id = ?", [experiment_id])
                add(conn, experiment_id, as_of, None)
            else:
                add(conn, experiment_id, as_of, as_of)

    params = (f"work={scope.work_column};client={','.join(sorted(scope.client_measured))};"
              f"pre_period_days={int(scope.pre_period_days)}")
    return Window("usage", kept, lambda conn, as_of: _usage_inputs(conn, as_of, scope.pre_period_days),
                  build, advance, params=params)


def _cell_added(conn: duckdb.DuckDBPyConnection, experiment_id: str, day: dt.date) -> bool:
    """Whether a member allocated before `day` is allocated again on it (to another cell:
    the member leaves every sum, its earlier rows included)."""
    [(n,)] = conn.execute(
        """
        SELECT count(*) FROM raw.allocations a
        WHERE a.experiment_id = ? AND CAST(a.allocated_at AS DATE) = ?
          AND a.member_id IN (SELECT member_id FROM raw.allocations
                              WHERE experiment_id = ? AND CAST(allocated_at AS DATE) < ?)
        """,
        [experiment_id, day, experiment_id, day],
    ).fetchall()
    return n > 0


def _merge(conn: duckdb.DuckDBPyConnection, table: str, part: str, experiment_id: str) -> None:
    """`part` (one experiment's day, the kept table's columns without experiment_id) added
    to `table`: sums added where the member, cell and service are kept (a null sum stays
    what the other is, as SQL's sum skips nulls), new rows inserted."""
    names = [c.split()[0] for c in _COLUMNS[table]]
    target = qualified(table)
    if table == USAGE_UNCLAIMED:
        conn.execute(f"INSERT INTO {target} SELECT CAST(? AS VARCHAR), rows FROM {part}", [experiment_id])
        return
    measures = [n for n in names if n not in _KEYS and n != "measured_from"]
    on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM p.{k}" for k in _KEYS)
    columns, values = ", ".join(names), ", ".join(f"p.{n}" for n in names)
    summed = ", ".join(f"{m} = coalesce(t.{m} + p.{m}, t.{m}, p.{m})" for m in measures)
    conn.execute(
        f"""
        MERGE INTO {target} AS t
        USING (SELECT CAST(? AS VARCHAR) AS experiment_id, * FROM {part}) AS p
        ON t.experiment_id = p.experiment_id AND {on}
        WHEN MATCHED THEN UPDATE SET {summed}
        WHEN NOT MATCHED THEN INSERT (experiment_id, {columns}) VALUES (p.experiment_id, {values})
        """,
        [experiment_id],
    )


NOT_KEPT = "one day: not kept"


def refresh_usage(conn: duckdb.DuckDBPyConnection, scope: UsageScope) -> str:
    """The kept totals brought to the scope's as-of day ('kept', 'advanced' or 'rebuilt':
    carried_window.refresh), or NOT_KEPT when the experiments' member rows hold a single
    day through it (an experiment's first day, a one-day warehouse): the totals are that
    day's rows, which the statistics stage as they are; writing them into the warehouse
    would cost more than the whole staging (10M spans: 4 s against 7)."""
    if _member_days(conn, scope) <= 1:
        return NOT_KEPT
    return refresh(conn, usage_window(scope), scope.as_of)


def _member_days(conn: duckdb.DuckDBPyConnection, scope: UsageScope) -> int:
    """How many days of member rows the window holds through the as-of day (2: more than one)."""
    inputs = _usage_inputs(conn, scope.as_of, scope.pre_period_days)
    days = set()
    for relation in _member_row_relations(conn):
        since = inputs[relation][1]
        [ends] = conn.execute(f"SELECT min(dt), max(dt) FROM {qualified(relation)} "
                              "WHERE dt <= ? AND (CAST(? AS DATE) IS NULL OR dt >= ?)",
                              [scope.as_of, since, since]).fetchall()
        days |= {d for d in ends if d is not None}
    return min(len(days), 2)


def stage_experiment(conn: duckdb.DuckDBPyConnection, scope: UsageScope, experiment_id: str, kept: bool,
                     alloc: str, usage: str, pre: str, roots: str) -> tuple[int, int]:
    """One experiment's allocations (`alloc`, single-cell members only), treated usage, pre-period
    usage and root requests staged as temporary tables for the statistics, from the kept
    totals (`kept`) or summed from its rows. Returns (members in more than one cell, treated
    rows no single-cell allocation claims)."""
    create_allocations(conn, alloc, experiment_id, scope.as_of)
    [(conflicted,)] = conn.execute(f"SELECT count(*) FROM {alloc} WHERE cells > 1").fetchall()
    staged = {USAGE_TOTALS: usage, USAGE_PRE: pre, USAGE_ROOTS: roots}
    if kept:
        conn.execute(f"DELETE FROM {alloc} WHERE cells > 1")
        for table, name in staged.items():
            conn.execute(f"CREATE TEMP TABLE {name} AS SELECT * EXCLUDE (experiment_id) FROM {qualified(table)} "
                         "WHERE experiment_id = ?", [experiment_id])
        [(unclaimed,)] = conn.execute(f"SELECT coalesce(sum(rows), 0) FROM {qualified(USAGE_UNCLAIMED)} "
                                      "WHERE experiment_id = ?", [experiment_id]).fetchall()
        return conflicted, int(unclaimed)
    rows = quote_ident(f"_usage_window_rows_{next(_tables)}")
    create_rows(conn, rows, scope, experiment_id)
    conn.execute(f"CREATE TEMP TABLE {roots} ({_column_list(USAGE_ROOTS)})")  # filled when there are roots
    unclaimed = 0
    for table, sql, params in experiment_sums(alloc, rows, experiment_id, scope.as_of,
                                              table_exists(conn, "main.member_roots")):
        if table == USAGE_UNCLAIMED:
            [(unclaimed,)] = conn.execute(sql, params).fetchall()
        elif table == USAGE_ROOTS:
            conn.execute(f"INSERT INTO {roots} {sql}", params)
        else:
            conn.execute(f"CREATE TEMP TABLE {staged[table]} AS {sql}", params)
    conn.execute(f"DROP TABLE {rows}")
    conn.execute(f"DELETE FROM {alloc} WHERE cells > 1")
    return conflicted, int(unclaimed)
