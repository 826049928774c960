"""Reads the per-member usage an as-of analysis needs out of the warehouse.

One place decides which rows count for an experiment on a given day (`usage_scope`,
`CHOSEN_ROWS`, `PRE_PERIOD`), so the deltas and the dollar-interval covariance always see
the same members and volumes. The statistics never read all member rows into Python: they
read per-cell sums that DuckDB computes from these rows, or stream them a batch of members at
a time (`usage_moments`, `member_vectors`).
`experiment_usage` reads one experiment's member rows themselves, for a person looking
into an experiment and as the in-memory reference the warehouse sums are tested against.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import polars as pl

from cost_attribution.warehouse import quote_ident, read_frame, table_exists


@dataclass
class ExperimentUsage:
    experiments: pl.DataFrame  # experiment_id, control_cell, start_date, ... (the experiment's row)
    allocations: pl.DataFrame  # experiment_id, member_id, cell (allocated by the as-of day)
    member_usage: pl.DataFrame  # experiment_id, cell, member_id, service, requests, work, measured_from
    pre_usage: pl.DataFrame  # experiment_id, member_id, service, pre_requests, pre_work (untreated: CUPED covariate)
    roots: pl.DataFrame  # experiment_id, member_id, service, root_requests (treated period: activity covariate)


def _service_coverage(conn, start: dt.date, as_of: dt.date) -> pl.DataFrame:
    return read_frame(
        conn,
        """
        SELECT service,
               sum(attributed_requests) / nullif(sum(adjusted_requests), 0) AS coverage,
               sum(adjusted_requests) AS adjusted_requests
        FROM main.service_coverage
        WHERE dt BETWEEN ? AND ?
        GROUP BY service
        """,
        [start, as_of],
    )


BUSY_TIME = "busy"
WORK_MEASURES = {"duration": "work", BUSY_TIME: "busy"}


def missing_busy_days(conn: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> list[dt.date]:
    """The days in [start, end] whose span models were built without busy time (the work
    measure was the duration then: macros/busy_time.sql), so their busy column is null."""
    return read_frame(
        conn,
        """
        SELECT DISTINCT dt FROM main.member_day_usage
        WHERE dt BETWEEN ? AND ? AND source = 'server' AND busy IS NULL AND work IS NOT NULL
        ORDER BY dt
        """,
        [start, end],
    )["dt"].to_list()


def started_experiments(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> pl.DataFrame:
    """raw.experiments' rows of the experiments started by `as_of` (or without a start
    date): the ones every as-of analysis reads, in experiment_id order."""
    return read_frame(
        conn,
        "SELECT * FROM raw.experiments WHERE start_date IS NULL OR start_date <= ? ORDER BY experiment_id",
        [as_of],
    )


# How many days before an experiment's start a member's rows count as its pre-period (the
# CUPED covariate): AnalysisSettings.pre_period_days. The analysis reads no older day, so
# its cost does not grow with the warehouse's history.
PRE_PERIOD_DAYS = 14

# The member x service rows of experiments running on an as-of day: as of ?, of
# experiments started by ?, from ? days before the start on (params 1-3: UsageScope.running),
# from either source. Without a start date, every day through the as-of day.
_RUNNING = ("u.dt <= ? AND (e.start_date IS NULL OR "
            "(e.start_date <= ? AND u.dt >= e.start_date - CAST(? AS INTEGER)))")
RUNNING_ROWS = f"""
    FROM main.member_service_usage u
    JOIN raw.experiments e USING (experiment_id)
    WHERE {_RUNNING}
"""
# The rows an as-of analysis counts: each service measured from one source (param 4: the
# services measured from CLIENT spans; every other service from its SERVER spans).
CHOSEN_ROWS = RUNNING_ROWS + """
      AND u.source = CASE WHEN list_contains(CAST(? AS VARCHAR[]), u.service) THEN 'client' ELSE 'server' END
"""
# A member is treated from its allocated_at (and not before the experiment's start):
# that usage is the outcome. Its usage before then (period 'pre' from the span models, or
# trace days before the start) is the same member untreated: the CUPED covariate, never
# counted as treated.
PRE_PERIOD = "(u.period = 'pre' OR (e.start_date IS NOT NULL AND u.dt < e.start_date))"
# One experiment's allocations made by an as-of day, if it has started by then (params:
# experiment_id, as_of, as_of).
ALLOCATED_ROWS = """
    FROM raw.allocations a JOIN raw.experiments e USING (experiment_id)
    WHERE a.experiment_id = ? AND CAST(a.allocated_at AS DATE) <= ? AND (e.start_date IS NULL OR e.start_date <= ?)
"""
# One experiment's root requests over its treated period through an as-of day: the
# activity covariate (params: experiment_id, as_of, as_of).
TREATED_ROOTS = """
    FROM main.member_roots r JOIN raw.experiments e USING (experiment_id)
    WHERE r.experiment_id = ? AND r.dt <= ? AND (e.start_date IS NULL OR e.start_date <= ?)
      AND r.period = 'post' AND (e.start_date IS NULL OR r.dt >= e.start_date)
"""


@dataclass
class UsageScope:
    """What every experiment's rows are read against on one as-of day (small: no member rows)."""

    experiments: pl.DataFrame  # experiment_id, control_cell, start_date, ... (started by as_of)
    coverage: pl.DataFrame  # service, coverage over the analysis window
    client_measured: list[str]  # blind services measured from the CLIENT spans that call them
    has_pre_period: bool  # any experiment has usage before its members' allocation
    window_start: dt.date | None
    as_of: dt.date
    work_column: str
    pre_period_days: int = PRE_PERIOD_DAYS

    def running(self) -> list:
        """The parameters of RUNNING_ROWS and CHOSEN_ROWS' first three placeholders."""
        return [self.as_of, self.as_of, self.pre_period_days]


def usage_scope(
    conn: duckdb.DuckDBPyConnection, as_of: dt.date, blind_spot_coverage: float, work_measure: str = "duration",
    pre_period_days: int = PRE_PERIOD_DAYS,
) -> UsageScope:
    """Which experiments run as of `as_of` and how each service is measured for all of them.

    A service whose own SERVER spans mostly miss the member (coverage below
    `blind_spot_coverage`) is measured from the CLIENT spans that call it inside
    attributed traces instead, when there are any: the caller still knows the member.
    `work_measure` picks the work column: SERVER span duration or busy time;
    `pre_period_days`, how far before an experiment's start its members' rows are read.
    """
    if work_measure not in WORK_MEASURES:
        raise ValueError(f"work_measure must be one of {sorted(WORK_MEASURES)}, got {work_measure!r}")
    experiments = started_experiments(conn, as_of)
    # One pass over the member rows (a view joined when read) for everything the scope
    # needs of them: the first day, which services are seen from CLIENT spans, which rows
    # are before a member's treatment (the conditions evaluated on the few distinct
    # experiment x service x source x day x period combinations, not on every row). Only
    # the days the running experiments read: from the earliest start less the pre-period
    # (every day when one has no start date) through the as-of day.
    starts = experiments["start_date"].to_list()
    earliest = (min(starts) - dt.timedelta(days=pre_period_days)
                if starts and all(d is not None for d in starts) else None)
    running = f"e.experiment_id IS NOT NULL AND {_RUNNING}"
    sources = read_frame(
        conn,
        f"""
        SELECT u.service, u.source, min(u.dt) AS first_day,
               bool_or({running}) AS running,
               bool_or({running} AND {PRE_PERIOD}) AS running_pre_period
        FROM (
            SELECT DISTINCT experiment_id, service, source, dt, period FROM main.member_service_usage
            WHERE dt <= ? AND (CAST(? AS DATE) IS NULL OR dt >= ?)
        ) u
        LEFT JOIN raw.experiments e USING (experiment_id)
        GROUP BY ALL
        """,
        [as_of, as_of, pre_period_days] * 2 + [as_of, earliest, earliest],
    )
    first_day = sources["first_day"].min()
    window_start = first_day
    if experiments.height and first_day is not None:
        starts = [d for d in experiments["start_date"].to_list() if d is not None]
        window_start = min([*starts, first_day]) if starts else first_day
    if work_measure == BUSY_TIME and window_start is not None:
        missing = missing_busy_days(conn, window_start, as_of)
        if missing:
            raise ValueError(
                f"work_measure is 'busy' but the span models of {len(missing)} day(s) ({missing[0]} .. "
                f"{missing[-1]}) were built without busy time (the work measure was 'duration' then): "
                f"materialize span_models again for those partitions in a run whose settings say so "
                f"(Dagster UI: span_models > Materialize > the partitions, launchpad "
                f"`resources: settings: config: work_measure: busy`), or set work_measure back to 'duration'")
    coverage = (
        _service_coverage(conn, window_start, as_of)
        if window_start is not None
        else pl.DataFrame(schema={"service": pl.Utf8, "coverage": pl.Float64, "adjusted_requests": pl.Float64})
    )
    blind = set(coverage.filter(pl.col("coverage").fill_null(0.0) < blind_spot_coverage)["service"].to_list())
    running = sources.filter(pl.col("running"))
    client_measured = set(running.filter(pl.col("source") == "client")["service"].to_list())
    # Server spans for every service we can see directly; client-side calls for the blind ones.
    use_client = sorted(blind & client_measured)
    chosen = pl.when(pl.col("service").is_in(use_client)).then(pl.lit("client")).otherwise(pl.lit("server"))
    has_pre = running.filter((pl.col("source") == chosen) & pl.col("running_pre_period")).height > 0
    return UsageScope(experiments, coverage, use_client, bool(has_pre), window_start, as_of,
                      WORK_MEASURES[work_measure], pre_period_days)


def experiment_usage(conn: duckdb.DuckDBPyConnection, scope: UsageScope, experiment_id: str,
                     covariates: bool = True) -> ExperimentUsage:
    """One experiment's member-level usage from its start through the scope's as-of day
    (`covariates=False`: without the pre-period and root rows). Only this experiment's
    rows are read: memory grows with its members, not with every running test's."""
    as_of = scope.as_of
    experiments = scope.experiments.filter(pl.col("experiment_id") == experiment_id)
    allocations = read_frame(
        conn,
        f"SELECT a.experiment_id, a.member_id, a.cell {ALLOCATED_ROWS} ORDER BY ALL",
        [experiment_id, as_of, as_of],
    )
    chosen = read_frame(
        conn,
        f"""
        SELECT u.experiment_id, u.cell, u.member_id, u.service, u.source AS measured_from,
               {PRE_PERIOD} AS pre_period,
               sum(u.requests) AS requests,
               sum(u.{quote_ident(scope.work_column)}) AS work
        {CHOSEN_ROWS} AND u.experiment_id = ?
        {"" if covariates else f"AND NOT {PRE_PERIOD}"}
        GROUP BY ALL
        ORDER BY ALL
        """,
        [*scope.running(), scope.client_measured, experiment_id],
    )
    outcome = chosen.filter(~pl.col("pre_period")).drop("pre_period")
    pre_usage = (
        chosen.filter(pl.col("pre_period"))
        .group_by("experiment_id", "member_id", "service")
        .agg(pl.col("requests").sum().alias("pre_requests"), pl.col("work").sum().alias("pre_work"))
    )
    roots = read_frame(
        conn,
        f"SELECT r.experiment_id, r.member_id, r.service, sum(r.root_requests) AS root_requests {TREATED_ROOTS} "
        "GROUP BY ALL ORDER BY ALL",
        [experiment_id, as_of, as_of],
    ) if covariates and table_exists(conn, "main.member_roots") else pl.DataFrame(
        schema={"experiment_id": pl.Utf8, "member_id": pl.Utf8, "service": pl.Utf8, "root_requests": pl.Float64}
    )
    return ExperimentUsage(experiments, allocations, outcome, pre_usage, roots)


def each_experiment_usage(conn: duckdb.DuckDBPyConnection, scope: UsageScope) -> Iterator[ExperimentUsage]:
    """Every running experiment's usage, one experiment at a time, in experiment_id order."""
    for experiment_id in scope.experiments["experiment_id"].to_list():
        yield experiment_usage(conn, scope, experiment_id)
