"""One experiment's member-level sums, computed in the warehouse.

Every comparison of the deltas (`deltas.deltas_from_moments`) and the dollar interval's
correlation needs only per-cell sums over members (n, sums of y, y^2, x, x^2, xy, and
cross products between services). DuckDB computes them from the experiment's member rows,
so Python holds a few rows per (cell, service); the sums pairing a member's services are
made from one row per member that numpy sums a batch at a time (`member_vectors`). Either
way memory does not grow with the number of members. The rows counted are the same as `member_usage`'s
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
from cost_attribution.attribution.member_vectors import (
    CellSums, MemberVectors, cross_moment_rows, root_ratio_frame, rows_per_batch, sum_members, valid_value)
from cost_attribution.attribution.member_usage import UsageScope
from cost_attribution.attribution.stats import relative_covariance
from cost_attribution.attribution.usage_window import NOT_KEPT, refresh_usage, stage_experiment
from cost_attribution.warehouse import quote_ident, read_frame

_METRICS = ("requests", "work")
_tables = itertools.count()


_SUMS = "sum(y) AS sum_y, sum(y * y) AS sum_y2, sum(x) AS sum_x, sum(x * x) AS sum_x2, sum(x * y) AS sum_xy"
_SUM_NAMES = ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy")


class WarehouseMoments:
    """deltas.MemberMoments of one experiment, summed by DuckDB on `conn`.

    Its member rows are staged once in four temporary tables (clean allocations, outcome
    usage, pre-period usage, root requests) that every sum reads; the sums pairing a
    member's services (cross moments, root covariate) are made from them in one pass
    (member_vectors), with a fifth table of the services' positions; `close()` drops them.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, scope: UsageScope, experiment_id: str,
                 totals: str | None = None):
        self.conn, self.experiment_id = conn, experiment_id
        # each_experiment_moments brings the kept totals to the day once for all (`totals`: its answer)
        self._kept = (totals or refresh_usage(conn, scope)) != NOT_KEPT
        self.experiments = scope.experiments.filter(pl.col("experiment_id") == experiment_id)
        k = next(_tables)
        self._alloc, self._usage, self._pre, self._roots, self._services = (
            quote_ident(f"_moments_{name}_{k}") for name in ("alloc", "usage", "pre", "roots", "services"))
        self._stage(scope)
        [(roots,)] = conn.execute(f"SELECT count(*) FROM {self._roots}").fetchall()
        self.has_roots = roots > 0
        self._member_sums: tuple[MemberVectors, list[CellSums]] | None = None

    def _stage(self, scope: UsageScope) -> None:
        experiment = self.experiment_id
        conflicted, unclaimed = stage_experiment(self.conn, scope, experiment, self._kept, self._alloc, self._usage,
                                                 self._pre, self._roots)
        [(invalid,)] = self.conn.execute(
            f"SELECT count(*) FROM {self._usage} WHERE NOT {valid_value('requests')} OR "
            f"(work IS NOT NULL AND NOT {valid_value('work')})"
        ).fetchall()
        self.excluded = {
            "members allocated to more than one cell of the experiment": conflicted,
            "usage rows of members not (unambiguously) allocated to this cell": unclaimed,
            "usage rows with a null, NaN, infinite or negative value": invalid,
        }

    def close(self) -> None:
        for table in (self._alloc, self._usage, self._pre, self._roots, self._services):
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
        outcome = f"SELECT member_id, cell, service, {y} AS y FROM {self._usage} WHERE {valid_value(y)}"
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
                    FULL JOIN (SELECT member_id, cell, service, {x} AS x FROM {self._pre} WHERE {valid_value(x)}) p
                    USING (member_id, cell, service)
                )
                GROUP BY ALL
                """
            )
        layout, sums = self._vectors()
        ratio = root_ratio_frame(sums, layout, _ROOT_RATIO_SCHEMA)
        sums_of = [f"{metric}_{name}" if name in ("sum_y", "sum_y2", "sum_xy") else name for name in _SUM_NAMES]
        return ratio.filter(pl.col(f"{metric}_rows")).select(
            pl.lit(self.experiment_id, dtype=pl.Utf8).alias("experiment_id"), "cell", "service",
            *(pl.col(a).alias(b) for a, b in zip(sums_of, _SUM_NAMES)))

    def _vectors(self) -> tuple[MemberVectors, list[CellSums]]:
        """The sums that pair a member's services (member_vectors): the cross moments and
        the root covariate's, in one pass over one row per member, made once."""
        if self._member_sums is None:
            self.conn.execute(
                f"CREATE TEMP TABLE {self._services} AS SELECT service, "
                f"CAST(row_number() OVER (ORDER BY service) - 1 AS INTEGER) AS s "
                f"FROM (SELECT DISTINCT service FROM {self._usage} WHERE service IS NOT NULL)"
            )
            services = [s for (s,) in self.conn.execute(f"SELECT service FROM {self._services} ORDER BY s").fetchall()]
            cells = [c for (c,) in
                     self.conn.execute(f"SELECT DISTINCT cell FROM {self._alloc} ORDER BY cell").fetchall()]
            layout = MemberVectors(services, cells)
            batches = []
            if services:
                batches = self.conn.sql(layout.sql(self._usage, self._roots, self._services),
                                        params=layout.params()).to_arrow_reader(rows_per_batch(len(services)))
            self._member_sums = layout, sum_members(batches, layout)
        return self._member_sums

    def work_per_request(self) -> pl.DataFrame:
        return self._frame(
            f"""
            SELECT ? AS experiment_id, cell, service, {_SUMS}
            FROM (
                SELECT cell, service,
                       CASE WHEN {valid_value("work")} THEN work ELSE 0.0 END AS y,
                       CASE WHEN {valid_value("requests")} THEN requests ELSE 0.0 END AS x
                FROM {self._usage}
                WHERE work IS NOT NULL AND requests IS NOT NULL
                  AND ({valid_value("work")} OR {valid_value("requests")})
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
            WHERE {valid_value("y")}
            GROUP BY ALL
            """,
            [ROOTS],
        )

    def cross_moments(self) -> pl.DataFrame:
        """Everything the dollar interval's correlation between services needs (CROSS_MOMENT_SCHEMA):
        per cell, its members, and per pair of services (a, b) the sum of a's requests and
        work and the cross products of a's and b's (requests x requests, requests x work,
        work x requests, work x work) over the members with both values; a pair once, with
        a <= b (the products are symmetric). A null, NaN,
        infinite or negative value is left out, as in every other sum. A few rows per cell
        and pair; usage_deltas stores them (main.usage_cross_moments) so cost_projections
        does not stage the experiment's members again."""
        layout, sums = self._vectors()
        members = dict(self.cell_counts().select("cell", "n").iter_rows())
        rows = cross_moment_rows(sums, layout, members)
        return (pl.DataFrame(rows, schema={n: t for n, t in CROSS_MOMENT_SCHEMA.items() if n != "experiment_id"})
                .select(pl.lit(self.experiment_id, dtype=pl.Utf8).alias("experiment_id"), pl.all())
                .sort("cell", "service_a", "service_b", nulls_last=True))

    def service_covariance(self, cell: str, control_cell: str, services: list[str],
                           work_services: list[str]) -> np.ndarray:
        """stats.delta_covariance of `services` (each on work when in `work_services`, else requests)."""
        return covariance_from_cross_moments(self.cross_moments(), cell, control_cell, services, work_services)


# The root-requests covariate's sums of both metrics at once (member_vectors.root_ratio_frame).
_ROOT_RATIO_SCHEMA = {"experiment_id": pl.Utf8, "cell": pl.Utf8, "service": pl.Utf8, "sum_x": pl.Float64,
                      "sum_x2": pl.Float64} | {f"{m}_{name}": dtype for m in _METRICS for name, dtype in (
                          ("sum_y", pl.Float64), ("sum_y2", pl.Float64), ("sum_xy", pl.Float64), ("rows", pl.Boolean))}

# Per experiment, cell and pair of services (WarehouseMoments.cross_moments). A cell with
# members but no usage has one row with null services. usage_deltas writes them per as_of.
CROSS_MOMENTS_TABLE = "main.usage_cross_moments"
CROSS_MOMENT_SCHEMA = {
    "experiment_id": pl.Utf8, "cell": pl.Utf8, "members": pl.Int64, "service_a": pl.Utf8, "service_b": pl.Utf8,
    "requests_a": pl.Float64, "work_a": pl.Float64, "requests_requests": pl.Float64, "requests_work": pl.Float64,
    "work_requests": pl.Float64, "work_work": pl.Float64,
}


def served_requests(cross: pl.DataFrame) -> pl.DataFrame:
    """experiment_id, cell, service, requests: each cell's measured requests per service
    over its members (the outcome the deltas compare, summed), read off the cross moments'
    diagonal (CROSS_MOMENT_SCHEMA): the projections take them from usage_deltas' rows of
    the day instead of reading the experiment's member rows again."""
    return (
        cross.filter(pl.col("service_a").is_not_null() & (pl.col("service_a") == pl.col("service_b")))
        .select("experiment_id", "cell", pl.col("service_a").alias("service"), pl.col("requests_a").alias("requests"))
        .sort("experiment_id", "cell", "service")
    )


def covariance_from_cross_moments(cross: pl.DataFrame, cell: str, control_cell: str, services: list[str],
                                  work_services: list[str]) -> np.ndarray:
    """stats.delta_covariance of `services`, each priced on work when in `work_services`
    (else requests), from one experiment's cross moments (CROSS_MOMENT_SCHEMA): per cell the
    mean vector and covariance matrix of the members' values, then the relative covariance
    of the deltas. NaN when a cell has fewer than two members."""
    k = len(services)
    index = {service: i for i, service in enumerate(services)}
    metric = {service: "work" if service in work_services else "requests" for service in services}
    counts, sums, cross_sums = {}, {}, {}
    for c in (cell, control_cell):
        rows = cross.filter(pl.col("cell") == c)
        counts[c] = int(rows["members"][0]) if rows.height else 0
        sums[c], cross_sums[c] = np.zeros(k), np.zeros((k, k))
        for row in rows.filter(pl.col("service_a").is_in(services) & pl.col("service_b").is_in(services)).iter_rows(named=True):
            a, b = row["service_a"], row["service_b"]
            if a == b:
                sums[c][index[a]] = row[f"{metric[a]}_a"] or 0.0
            # Stored once per pair (a <= b): sum(a.x * b.y) fills both halves of the matrix.
            cross_sums[c][index[a], index[b]] = cross_sums[c][index[b], index[a]] = row[f"{metric[a]}_{metric[b]}"] or 0.0
    n_t, n_c = counts[cell], counts[control_cell]
    if n_t < 2 or n_c < 2:
        return np.full((k, k), np.nan)

    def mean_and_cov(c: str, n: int):
        mean = sums[c] / n
        return mean, (cross_sums[c] - n * np.outer(mean, mean)) / (n - 1)

    m_t, cov_t = mean_and_cov(cell, n_t)
    m_c, cov_c = mean_and_cov(control_cell, n_c)
    return relative_covariance(m_t, m_c, cov_t, cov_c, n_t, n_c)


def each_experiment_moments(conn: duckdb.DuckDBPyConnection, scope: UsageScope,
                            totals: str | None = None) -> Iterator[WarehouseMoments]:
    """Every running experiment's sums, one experiment at a time, in experiment_id order;
    each one's staged rows are dropped before the next is staged. The kept member totals
    are brought to the scope's day first (usage_window.refresh_usage), unless `totals`
    says what that did already."""
    totals = totals or refresh_usage(conn, scope)
    for experiment_id in scope.experiments["experiment_id"].to_list():
        moments = WarehouseMoments(conn, scope, experiment_id, totals)
        excluded = {reason: n for reason, n in moments.excluded.items() if n}
        if excluded:
            warnings.warn(f"experiment {experiment_id!r} stats excluded " + "; ".join(
                f"{n} {reason}" for reason, n in excluded.items()), stacklevel=2)
        try:
            yield moments
        finally:
            moments.close()
