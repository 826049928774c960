"""Every started experiment's latency histograms through an as-of day, carried from one day
to the next instead of summed again over every day of the experiment.

latency_impact compares each experiment's request-weighted duration histograms per group
of members from the experiment's start through the as-of day. Summed from the member rows
every day, that reads every day of every running experiment's latency rows again: with
10M spans a day it took 3.4, 7.4, 10.1 and 13.6 s on an experiment's first four days
(bench/README.md, `--days`). The window keeps the sums (per member group: small) and who
is in them in the warehouse, with the as-of day they are for and a digest of what they
were made of (per input and day that can count, from the earliest start: its rows and a
hash of them): 4.1, 6.7, 5.7 and 5.9 s.
The next day's sums are the kept ones plus that day's rows, when nothing they were made
of has changed since; anything else (a re-ingested day, a late allocation row, an
experiment's start moved, a day skipped or an older day asked for, other member groups)
sums them again from the member rows, as does a kept table gone missing. Either way they
are the same (tests: test_latency_window.py).

A day adds exactly its own rows because latency has no pre-period: a row counts from the
experiment's start and the member's allocation on, and neither depends on a later day.
The window machinery (digest, kept state, build or advance) is carried_window.py's; the
usage statistics' member totals are carried the same way (usage_window.py).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from cost_attribution.attribution.carried_window import STATE_TABLE, Inputs, Window, digest, refresh
from cost_attribution.attribution.member_rows import MEMBER_ROWS
from cost_attribution.attribution.member_usage import started_experiments
from cost_attribution.warehouse import qualified, quote_ident, relation_type

__all__ = ["LATENCY_HISTOGRAMS", "LATENCY_MEMBERS", "STATE_TABLE", "digest", "latency_window", "refresh_latency"]

LATENCY_HISTOGRAMS = "main.latency_window_histograms"
LATENCY_MEMBERS = "main.latency_window_members"
# The latency rows an as-of analysis counts (params: as_of): from the experiment's start
# through the day. There is no pre-period, so a day adds exactly its own rows.
LATENCY_ROWS = """
    FROM main.member_service_latency l JOIN raw.experiments e USING (experiment_id)
    WHERE l.dt <= ? AND (e.start_date IS NULL OR l.dt >= e.start_date)
"""


def _latency_inputs(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> Inputs:
    """The member rows from the earliest start of a started experiment (every day when one
    has no start; none when none has started), every allocation and experiment."""
    latency = MEMBER_ROWS[1]
    member_rows = ([latency.member_days, latency.same_days] if relation_type(conn, latency.joined) == "VIEW"
                   else [latency.joined])
    starts = started_experiments(conn, as_of)["start_date"]
    since = as_of + dt.timedelta(days=1) if starts.is_empty() else None if starts.null_count() else starts.min()
    return {relation: ("dt", since) for relation in member_rows} | {
        "raw.allocations": ("allocated_at", None), "raw.experiments": ("start_date", None)}


# A member's key: a 64-bit hash of its id (its group is the key modulo the groups).
MEMBER_KEY = "hash(l.member_id)"


def _latency_sums(groups: int, rows: str, member_key: str = MEMBER_KEY) -> str:
    # One experiment's rows, its id the first parameter: grouped without the id, which is the
    # same on every row (10M spans, five experiments: ~0.15 s less to group). The divisor
    # typed: with an untyped parameter DuckDB's modulo made this query twice as slow (10M
    # spans: 2.0 vs 1.0 s).
    return f"""
        SELECT CAST(? AS VARCHAR) AS experiment_id, *
        FROM (
            SELECT l.cell, l.service,
                   CAST({member_key} % CAST({int(groups)} AS UBIGINT) AS INTEGER) AS member_group,
                   l.duration_bucket, CAST(sum(l.requests) AS DOUBLE) AS requests,
                   CAST(sum(l.sampled_spans) AS BIGINT) AS sampled_spans
            {rows}
            GROUP BY ALL
        )
    """


def _latency_members(rows: str, member_key: str = MEMBER_KEY) -> str:
    # Members by a 64-bit hash of their id (as the span models key spans: macros/id_keys.sql):
    # the kept set is written and compared every day, and random-looking id strings are its
    # cost (10M spans: 0.29 against 0.35-0.42 s an experiment). Two members of one cell and
    # service share a hash with probability ~n^2 / 2^65 (1e-8 for 700,000): one member
    # fewer in a count of hundreds of thousands. One experiment's rows, its id the first
    # parameter, as in _latency_sums (10M spans, five experiments: 0.82 against 1.0 s).
    return (f"SELECT CAST(? AS VARCHAR) AS experiment_id, * "
            f"FROM (SELECT DISTINCT l.cell, l.service, {member_key} AS member_key {rows})")


def latency_window(groups: int) -> Window:
    """LATENCY_HISTOGRAMS (experiment_id, cell, service, member_group, duration_bucket,
    requests, sampled_spans: every started experiment's latency rows through the day, per
    group of members, `groups` groups by a hash of the member) and LATENCY_MEMBERS
    (experiment_id, cell, service, member_key: who is in them, by a hash of the member)."""
    histograms, members = qualified(LATENCY_HISTOGRAMS), qualified(LATENCY_MEMBERS)
    one = f"{LATENCY_ROWS} AND l.experiment_id = ?"

    # One experiment at a time: with one experiment's allocations the view's join and the
    # sums fit the memory budget that every experiment's at once spilled out of (30M
    # spans, 2M members: 12.5 s against 15 s; a day's advance at 10M spans: 4.5 s against
    # about 9).
    def build(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
        conn.execute(f"CREATE OR REPLACE TABLE {histograms} AS {_latency_sums(groups, one)} LIMIT 0", ["", as_of, ""])
        conn.execute(f"CREATE OR REPLACE TABLE {members} AS {_latency_members(one)} LIMIT 0", ["", as_of, ""])
        for experiment_id in started_experiments(conn, as_of)["experiment_id"]:
            params = [experiment_id, as_of, experiment_id]
            conn.execute(f"INSERT INTO {histograms} {_latency_sums(groups, one)}", params)
            conn.execute(f"INSERT INTO {members} {_latency_members(one)}", params)

    def advance(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
        day = f"{one} AND l.dt = ?"
        added, rows = quote_ident("_latency_window_day"), quote_ident("_latency_window_rows")
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {added} AS SELECT * FROM {histograms} LIMIT 0")
        # The day's rows of one experiment are read out of the member rows (a view joined
        # with the allocations) once, for both the sums and the members (10M spans, the
        # five experiments: 3.2-3.6 against 4.4-5.2 s reading them twice).
        day_rows = f"FROM {rows} l"
        for experiment_id in started_experiments(conn, as_of)["experiment_id"]:
            conn.execute(
                f"CREATE OR REPLACE TEMP TABLE {rows} AS SELECT l.cell, l.service, "
                f"{MEMBER_KEY} AS member_key, l.duration_bucket, l.requests, l.sampled_spans {day}",
                [as_of, experiment_id, as_of],
            )
            conn.execute(f"INSERT INTO {added} {_latency_sums(groups, day_rows, 'l.member_key')}", [experiment_id])
            conn.execute(
                f"INSERT INTO {members} {_latency_members(day_rows, 'l.member_key')} "
                f"EXCEPT SELECT * FROM {members} WHERE experiment_id = ?",
                [experiment_id, experiment_id],
            )
        conn.execute(f"DROP TABLE IF EXISTS {rows}")
        conn.execute(
            f"""
            CREATE OR REPLACE TABLE {histograms} AS
            SELECT experiment_id, cell, service, member_group, duration_bucket,
                   CAST(sum(requests) AS DOUBLE) AS requests, CAST(sum(sampled_spans) AS BIGINT) AS sampled_spans
            FROM (SELECT * FROM {histograms} UNION ALL SELECT * FROM {added})
            GROUP BY ALL
            """
        )
        conn.execute(f"DROP TABLE {added}")

    # `members=key`: kept sets of member ids (before they were hashed) are made again.
    return Window("latency", (LATENCY_HISTOGRAMS, LATENCY_MEMBERS), _latency_inputs, build, advance,
                  params=f"groups={int(groups)};members=key")


def refresh_latency(conn: duckdb.DuckDBPyConnection, as_of: dt.date, groups: int) -> str:
    """LATENCY_HISTOGRAMS and LATENCY_MEMBERS as of `as_of` (latency_window); see `refresh`."""
    return refresh(conn, latency_window(groups), as_of)
