"""One experiment's member-level sums, computed in the warehouse.

Every comparison of the deltas (`deltas.deltas_from_moments`) and the dollar interval's
correlation needs only per-cell sums over members (n, sums of y, y^2, x, x^2, xy, and
cross products between services). DuckDB computes them from the experiment's member rows,
so Python holds a few rows per (cell, service), never a row per member: memory does not
grow with the number of members. The rows counted are the same as `member_usage`'s
(`experiment_usage`), cleaned as `stats_inputs` cleans member rows in memory:
- a member allocated to more than one cell of the experiment is left out of both;
- a usage row is counted under its member's allocated cell, and left out when it names
  another cell;
- a value that is null, NaN, infinite or negative is left out.
The tests check both give the same sums (`attribution/test_per_experiment.py`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import duckdb
import numpy as np
import polars as pl

from cost_attribution.attribution.deltas import COVARIATES, MOMENT_SCHEMA, ROOTS
from cost_attribution.attribution.member_usage import (
    ALLOCATED_ROWS, CHOSEN_ROWS, PRE_PERIOD, TREATED_ROOTS, UsageScope)
from cost_attribution.attribution.stats import relative_covariance
from cost_attribution.warehouse import quote_ident, read_frame, table_exists

_METRICS = ("requests", "work")
_tables = itertools.count()


def _valid(column: str) -> str:
    return f"({column} IS NOT NULL AND isfinite({column}) AND {column} >= 0)"


_SUMS = "sum(y) AS sum_y, sum(y * y) AS sum_y2, sum(x) AS sum_x, sum(x * x) AS sum_x2, sum(x * y) AS sum_xy"


class WarehouseMoments:
    """deltas.MemberMoments of one experiment, summed by DuckDB on `conn`.

    Its member rows are staged once in four temporary tables (clean allocations, outcome
    usage, pre-period usage, root requests) that every sum reads; `close()` drops them.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, scope: UsageScope, experiment_id: str,
                 covariates: bool = True):
        self.conn, self.experiment_id = conn, experiment_id
        self.experiments = scope.experiments.filter(pl.col("experiment_id") == experiment_id)
        k = next(_tables)
        self._alloc, self._rows, self._usage, self._pre, self._roots = (
            quote_ident(f"_moments_{name}_{k}") for name in ("alloc", "rows", "usage", "pre", "roots"))
        self._stage(scope, covariates)
        [(roots,)] = conn.execute(f"SELECT count(*) FROM {self._roots}").fetchall()
        self.has_roots = roots > 0

    def _stage(self, scope: UsageScope, covariates: bool) -> None:
        """covariates=False: without the pre-period and root rows (the outcome's sums only)."""
        as_of, experiment = scope.as_of, self.experiment_id
        self.conn.execute(
            f"""
            CREATE TEMP TABLE {self._alloc} AS
            SELECT member_id, any_value(cell) AS cell, count(*) AS cells
            FROM (
                SELECT DISTINCT CAST(a.member_id AS VARCHAR) AS member_id, CAST(a.cell AS VARCHAR) AS cell
                {ALLOCATED_ROWS} AND a.member_id IS NOT NULL AND a.cell IS NOT NULL
            )
            GROUP BY member_id
            """,
            [experiment, as_of, as_of],
        )
        # Members in two cells stay in the table (cells > 1) only to be counted as excluded.
        allocated = f"(SELECT member_id, cell FROM {self._alloc} WHERE cells = 1)"
        # The experiment's rows are read out of the day's usage once; the outcome, the
        # pre-period and the excluded rows are all taken from that copy.
        rows = self._rows
        work = quote_ident(scope.work_column)
        self.conn.execute(
            f"""
            CREATE TEMP TABLE {rows} AS
            SELECT u.member_id, u.cell, u.service, u.source, {PRE_PERIOD} AS pre_period,
                   u.requests, u.{work} AS work
            {CHOSEN_ROWS} AND u.experiment_id = ? AND (? OR NOT {PRE_PERIOD})
            """,
            [as_of, as_of, scope.client_measured, experiment, covariates],
        )
        self.conn.execute(
            f"""
            CREATE TEMP TABLE {self._usage} AS
            SELECT a.member_id, a.cell, u.service, any_value(u.source) AS measured_from,
                   sum(u.requests) AS requests, sum(u.work) AS work
            FROM {rows} u JOIN {allocated} a ON a.member_id = u.member_id AND (u.cell IS NULL OR u.cell = a.cell)
            WHERE NOT u.pre_period
            GROUP BY ALL
            """
        )
        self.conn.execute(
            f"""
            CREATE TEMP TABLE {self._pre} AS
            SELECT a.member_id, a.cell, u.service,
                   coalesce(sum(u.requests), 0) AS pre_requests, coalesce(sum(u.work), 0) AS pre_work
            FROM {rows} u JOIN {allocated} a USING (member_id)
            WHERE u.pre_period
            GROUP BY ALL
            """
        )
        [(conflicted,)] = self.conn.execute(f"SELECT count(*) FROM {self._alloc} WHERE cells > 1").fetchall()
        [(unattributed,)] = self.conn.execute(
            f"""
            SELECT count(*) FROM {rows} u
            LEFT JOIN {allocated} a ON a.member_id = u.member_id AND (u.cell IS NULL OR u.cell = a.cell)
            WHERE NOT u.pre_period AND a.member_id IS NULL
            """
        ).fetchall()
        self.conn.execute(f"DROP TABLE {rows}")
        self.conn.execute(f"DELETE FROM {self._alloc} WHERE cells > 1")
        if covariates and table_exists(self.conn, "main.member_roots"):
            self.conn.execute(
                f"""
                CREATE TEMP TABLE {self._roots} AS
                SELECT a.member_id, a.cell, r.service, sum(r.root_requests) AS root_requests
                FROM (SELECT r.* {TREATED_ROOTS}) r JOIN {self._alloc} a USING (member_id)
                GROUP BY ALL
                """,
                [experiment, as_of, as_of],
            )
        else:
            self.conn.execute(f"CREATE TEMP TABLE {self._roots} (member_id VARCHAR, cell VARCHAR, service VARCHAR, "
                              "root_requests DOUBLE)")
        [(invalid,)] = self.conn.execute(
            f"SELECT count(*) FROM {self._usage} WHERE NOT {_valid('requests')} OR "
            f"(work IS NOT NULL AND NOT {_valid('work')})"
        ).fetchall()
        self.excluded = {
            "members allocated to more than one cell of the experiment": conflicted,
            "usage rows of members not (unambiguously) allocated to this cell": unattributed,
            "usage rows with a null, NaN, infinite or negative value": invalid,
        }

    def close(self) -> None:
        for table in (self._alloc, self._rows, self._usage, self._pre, self._roots):
            self.conn.execute(f"DROP TABLE IF EXISTS {table}")

    def _frame(self, sql: str, params: list | None = None, schema: dict = MOMENT_SCHEMA) -> pl.DataFrame:
        frame = read_frame(self.conn, sql, [self.experiment_id, *(params or [])])
        return pl.DataFrame(schema=schema) if frame.height == 0 else frame.cast(schema).select(list(schema))

    def cell_counts(self) -> pl.DataFrame:
        return self._frame(f"SELECT ? AS experiment_id, cell, count(*) AS n FROM {self._alloc} GROUP BY cell",
                           schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "n": pl.Int64})

    def measured_from(self) -> pl.DataFrame:
        return self._frame(
            f"SELECT ? AS experiment_id, service, any_value(measured_from) AS measured_from FROM {self._usage} "
            "GROUP BY service",
            schema={"experiment_id": pl.Utf8, "service": pl.Utf8, "measured_from": pl.Utf8},
        )

    def outcome(self, metric: str, covariate: str) -> pl.DataFrame:
        if metric not in _METRICS or covariate not in COVARIATES:
            raise ValueError(f"metric must be one of {_METRICS} and covariate one of {COVARIATES}")
        y = quote_ident(metric)
        outcome = f"SELECT member_id, cell, service, {y} AS y FROM {self._usage} WHERE {_valid(y)}"
        if covariate == "none":
            return self._frame(f"SELECT ? AS experiment_id, cell, service, {_SUMS} "
                               f"FROM (SELECT *, 0.0 AS x FROM ({outcome})) GROUP BY ALL")
        if covariate == "pre-period":
            x = quote_ident(f"pre_{metric}")
            return self._frame(
                f"""
                SELECT ? AS experiment_id, cell, service, {_SUMS}
                FROM (
                    SELECT cell, service, coalesce(o.y, 0.0) AS y, coalesce(p.x, 0.0) AS x
                    FROM ({outcome}) o
                    FULL JOIN (SELECT member_id, cell, service, {x} AS x FROM {self._pre} WHERE {_valid(x)}) p
                    USING (member_id, cell, service)
                )
                GROUP BY ALL
                """
            )
        return self._frame(self._root_ratio_sql(outcome))

    def _root_ratio_sql(self, outcome: str) -> str:
        # x = the member's root requests to services other than this one, for every member
        # with roots and every service the experiment's members used: a dense member x
        # service grid, built and summed inside DuckDB. (Summing R and correcting by the
        # sparse rows would be cheaper, but the root service's x is exactly 0 only when
        # each member's R - o is taken member by member.)
        return f"""
            WITH member_roots AS (SELECT member_id, cell, sum(root_requests) AS r FROM {self._roots} GROUP BY ALL),
            own AS (SELECT member_id, cell, service, sum(root_requests) AS o FROM {self._roots} GROUP BY ALL),
            covariate AS (
                SELECT m.member_id, m.cell, s.service, m.r - coalesce(own.o, 0.0) AS x
                FROM member_roots m
                CROSS JOIN (SELECT DISTINCT service FROM {self._usage}) s
                LEFT JOIN own USING (member_id, cell, service)
            )
            SELECT ? AS experiment_id, cell, service, {_SUMS}
            FROM (
                SELECT cell, service, coalesce(o.y, 0.0) AS y, coalesce(c.x, 0.0) AS x
                FROM ({outcome}) o FULL JOIN (SELECT * FROM covariate WHERE {_valid("x")}) c
                USING (member_id, cell, service)
            )
            GROUP BY ALL
        """

    def work_per_request(self) -> pl.DataFrame:
        return self._frame(
            f"""
            SELECT ? AS experiment_id, cell, service, {_SUMS}
            FROM (
                SELECT cell, service,
                       CASE WHEN {_valid("work")} THEN work ELSE 0.0 END AS y,
                       CASE WHEN {_valid("requests")} THEN requests ELSE 0.0 END AS x
                FROM {self._usage}
                WHERE work IS NOT NULL AND requests IS NOT NULL AND ({_valid("work")} OR {_valid("requests")})
            )
            GROUP BY ALL
            """
        )

    def root_totals(self) -> pl.DataFrame:
        return self._frame(
            f"""
            SELECT ? AS experiment_id, cell, ? AS service, {_SUMS}
            FROM (
                SELECT cell, sum(root_requests) AS y, 0.0 AS x FROM {self._roots} GROUP BY member_id, cell
            )
            WHERE {_valid("y")}
            GROUP BY ALL
            """,
            [ROOTS],
        )

    def service_covariance(self, cell: str, control_cell: str, services: list[str],
                           work_services: list[str]) -> np.ndarray:
        """stats.delta_covariance of `services` (each on work when in `work_services`, else
        requests), from per-cell sums and cross products of the members' values."""
        k = len(services)
        index = {service: i for i, service in enumerate(services)}
        values = f"""
            SELECT member_id, cell, service, v FROM (
                SELECT member_id, cell, service,
                       CASE WHEN list_contains(CAST(? AS VARCHAR[]), service) THEN work ELSE requests END AS v
                FROM {self._usage}
                WHERE cell IN (?, ?) AND list_contains(CAST(? AS VARCHAR[]), service)
            ) WHERE {_valid("v")}
        """
        params = [list(work_services), cell, control_cell, list(services)]
        counts = dict(self.conn.execute(f"SELECT cell, count(*) FROM {self._alloc} WHERE cell IN (?, ?) GROUP BY cell",
                                        [cell, control_cell]).fetchall())
        sums = {c: np.zeros(k) for c in (cell, control_cell)}
        cross = {c: np.zeros((k, k)) for c in (cell, control_cell)}
        for c, service, total in self.conn.execute(f"SELECT cell, service, sum(v) FROM ({values}) GROUP BY ALL",
                                                   params).fetchall():
            sums[c][index[service]] = total
        for c, r, s, total in self.conn.execute(
            f"SELECT a.cell, a.service, b.service, sum(a.v * b.v) FROM ({values}) a JOIN ({values}) b "
            "USING (member_id, cell) GROUP BY ALL",
            params + params,
        ).fetchall():
            cross[c][index[r], index[s]] = total
        n_t, n_c = counts.get(cell, 0), counts.get(control_cell, 0)
        if n_t < 2 or n_c < 2:
            return np.full((k, k), np.nan)

        def mean_and_cov(c: str, n: int):
            mean = sums[c] / n
            return mean, (cross[c] - n * np.outer(mean, mean)) / (n - 1)

        m_t, cov_t = mean_and_cov(cell, n_t)
        m_c, cov_c = mean_and_cov(control_cell, n_c)
        return relative_covariance(m_t, m_c, cov_t, cov_c, n_t, n_c)


def each_experiment_moments(conn: duckdb.DuckDBPyConnection, scope: UsageScope) -> Iterator[WarehouseMoments]:
    """Every running experiment's sums, one experiment at a time, in experiment_id order;
    each one's staged rows are dropped before the next is staged."""
    for experiment_id in scope.experiments["experiment_id"].to_list():
        moments = WarehouseMoments(conn, scope, experiment_id)
        excluded = {reason: n for reason, n in moments.excluded.items() if n}
        if excluded:
            warnings.warn(f"experiment {experiment_id!r} stats excluded " + "; ".join(
                f"{n} {reason}" for reason, n in excluded.items()), stacklevel=2)
        try:
            yield moments
        finally:
            moments.close()


class MomentsByExperiment:
    """The WarehouseMoments of one experiment at a time, for callers that ask experiment
    by experiment (the projection's correlations): asking for another experiment drops the
    previous one's staged rows."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, scope: UsageScope):
        self.conn, self.scope, self.current = conn, scope, None

    def __call__(self, experiment_id: str) -> WarehouseMoments:
        if self.current is None or self.current.experiment_id != experiment_id:
            self.close()
            self.current = WarehouseMoments(self.conn, self.scope, experiment_id, covariates=False)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def __enter__(self) -> MomentsByExperiment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
