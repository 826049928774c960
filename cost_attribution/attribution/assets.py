"""Attribution: traces x allocations -> per experiment x service deltas.

`trace_completeness` gates the day (blocking check); `usage_deltas` is the as-of
snapshot of every experiment's member-level statistics.
"""


import datetime as dt

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution.member_usage import usage_scope
from cost_attribution.attribution.usage_moments import (
    CROSS_MOMENT_SCHEMA, CROSS_MOMENTS_TABLE, each_experiment_moments)
from cost_attribution.attribution.usage_window import refresh_usage
from cost_attribution.attribution.deltas import deltas_by_experiment
from cost_attribution.attribution.stats import StatsConfig, intended_splits
from cost_attribution.attribution.treated_share import share_plot, shares_in_warehouse
from cost_attribution.checks import trace_completeness as completeness
from cost_attribution.partitions import daily_asset, partition_day, trailing_window
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, read_frame, replace_day, replace_rows

ATTRIBUTION = "attribution"
OWNERS = ["team:platform-data"]
SRM_CHECK = "sample_ratio_mismatch"


SRM_SPEC = dg.AssetCheckSpec(
    SRM_CHECK, asset="usage_deltas",
    description="WARN when an experiment's allocation counts per cell are implausible under its intended split "
    "(experiments.yaml weights, else even): a sample ratio mismatch makes its deltas suspect.",
)


@daily_asset(group=ATTRIBUTION, owners=OWNERS,
             deps=["service_coverage", "trace_edges", "usage_metrics"],
             check_specs=completeness.completeness_check_specs("trace_completeness"))
def trace_completeness(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """Per-service trace coverage (share of adjusted SERVER work that reaches a member), broken caller ->
    callee edges, orphan-parent rate and member-tag coverage for the day. Its coverage gate is a blocking
    check: an untrustworthy day does not produce deltas or projections."""
    day = partition_day(context)
    with warehouse.get_connection() as conn:
        coverage = read_frame(conn, "SELECT * FROM main.service_coverage WHERE dt = ?", [day])
        edges = read_frame(conn, "SELECT * FROM main.trace_edges WHERE dt = ?", [day])
        metrics = read_frame(
            conn, "SELECT service, requests FROM raw.usage_metrics WHERE CAST(hour AS DATE) = ?", [day]
        )
        summary = completeness.summarize(coverage, edges)
        reconciliation = completeness.volume_reconciliation(coverage, metrics)
        span_counts = dict(conn.execute(
            "SELECT dt, sum(server_spans) FROM main.service_coverage WHERE dt BETWEEN ? AND ? GROUP BY dt",
            [day - dt.timedelta(days=completeness.TRACE_VOLUME_LOOKBACK_DAYS), day],
        ).fetchall())
        replace_day(conn, "main.trace_completeness", summary.services, day, column="dt")
        replace_day(conn, "main.broken_edges", summary.broken_edges, day, column="dt")
    yield dg.MaterializeResult(
        metadata={
            "overall_coverage": summary.overall_coverage if summary.overall_coverage is not None else float("nan"),
            "coverage_by_service": dg.MetadataValue.md(
                markdown_table(summary.services.select("service", "server_spans", "coverage", "anonymous_root_share", "orphan_rate"))
            ),
            "broken_edges": dg.MetadataValue.md(markdown_table(summary.broken_edges)),
            "volume_reconciliation": dg.MetadataValue.md(markdown_table(reconciliation)),
        }
    )
    yield completeness.trace_volume_result(day, span_counts, settings.min_day_span_ratio, "trace_completeness")
    yield from completeness.check_results(summary, settings.min_trace_coverage, "trace_completeness", reconciliation)


@daily_asset(group=ATTRIBUTION, owners=OWNERS,
             deps=["trace_completeness", "service_coverage", "trace_edges", "usage_metrics", "experiments"])
def trace_completeness_as_of(context: dg.AssetExecutionContext, warehouse: DuckDBResource):
    """As of the partition day, over the experiments' window (from the first experiment's start): trace
    coverage per service, the broken caller -> callee edges and the sampling-volume reconciliation. The
    report's trace_completeness section and its low_trace_coverage flags read these tables
    (main.completeness_services, main.completeness_broken_edges, main.completeness_reconciliation,
    main.completeness_days: each day's coverage, for the report's days under the gate)."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        first = read_frame(conn, "SELECT min(start_date) AS d FROM raw.experiments")["d"][0] or dt.date(1970, 1, 1)
        window = [first, as_of]
        coverage = read_frame(conn, "SELECT * FROM main.service_coverage WHERE dt BETWEEN ? AND ?", window)
        edges = read_frame(conn, "SELECT * FROM main.trace_edges WHERE dt BETWEEN ? AND ?", window)
        metrics = read_frame(
            conn, "SELECT service, requests FROM raw.usage_metrics WHERE CAST(hour AS DATE) BETWEEN ? AND ?", window
        )
        frames = completeness.as_of_frames(coverage, edges, metrics)
        for name, table in completeness.AS_OF_TABLES.items():
            replace_day(conn, table, frames[name], as_of)
    return dg.MaterializeResult(
        metadata={
            "window_start": first.isoformat(),
            "overall_coverage": completeness.overall_coverage(frames["services"]) or float("nan"),
            "coverage_by_service": dg.MetadataValue.md(markdown_table(frames["services"].select("service", "coverage"))),
            "broken_edges": dg.MetadataValue.md(markdown_table(frames["broken_edges"])),
        }
    )


@daily_asset(group=ATTRIBUTION, owners=["team:experimentation"],
             deps=["member_service_usage", "member_roots", "trace_completeness", "allocations", "experiments"],
             check_specs=[SRM_SPEC])
def usage_deltas(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """As of the partition day: for every experiment cell and service, the relative change in adjusted request
    volume and in work (its SERVER spans' duration, or their busy time: settings.work_measure) per allocated
    member vs control, with member-level intervals (always-valid by default, because the report re-reads it
    every day), p-values and Benjamini-Hochberg q-values across all pairs and both metrics. The CUPED
    covariate is each member's usage before its treatment, from pre_period_days before the experiment's start.
    The members' totals are carried from the day before when nothing under them changed (metadata
    `member_totals`: advanced or rebuilt)."""
    as_of = partition_day(context)
    config = StatsConfig(alpha=settings.alpha, fdr_q=settings.fdr_q, sequential=settings.sequential)
    with warehouse.get_connection() as conn:
        scope = usage_scope(conn, as_of, settings.blind_spot_coverage, settings.work_measure,
                            settings.pre_period_days)
        cross_moments = []
        totals = refresh_usage(conn, scope)

        def staged_experiments():
            for moments in each_experiment_moments(conn, scope, totals):
                yield moments
                # Its deltas are done and its rows still staged: the sums cost_projections
                # needs for the correlation between services, kept so it stages nothing.
                cross_moments.append(moments.cross_moments())

        deltas, srm = deltas_by_experiment(
            staged_experiments(), config, scope.has_pre_period, intended_splits(scope.experiments)
        )
        deltas = (
            deltas.join(scope.coverage.select("service", pl.col("coverage").alias("trace_coverage")), on="service", how="left")
            .with_columns(pl.lit(as_of).alias("as_of"))
            .select("as_of", pl.all().exclude("as_of"))
        )
        replace_rows(conn, "main.usage_deltas", deltas, where={"as_of": as_of})
        replace_rows(conn, "main.sample_ratio", srm.with_columns(pl.lit(as_of).alias("as_of")), where={"as_of": as_of})
        replace_rows(conn, CROSS_MOMENTS_TABLE,
                     pl.concat([pl.DataFrame(schema=CROSS_MOMENT_SCHEMA), *cross_moments])
                     .select(pl.lit(as_of).alias("as_of"), pl.all()),
                     where={"as_of": as_of})
    significant = deltas.filter(pl.col("significant"))
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": deltas.height,
            "pairs_tested": deltas.height,
            "significant_pairs": significant.height,
            # 'advanced': yesterday's member totals plus what today adds; 'rebuilt': summed
            # again over every day (a re-ingested day, a late allocation); 'one day: not
            # kept' (an experiment's first day): attribution/usage_window.py.
            "member_totals": totals,
            "significant": dg.MetadataValue.md(
                markdown_table(
                    significant.select("experiment_id", "cell", "service", "delta", "ci_low", "ci_high", "q_value")
                )
            ),
        }
    )
    mismatched = srm.filter(pl.col("mismatch"))["experiment_id"].to_list() if srm.height else []
    yield dg.AssetCheckResult(
        check_name=SRM_CHECK,
        passed=not mismatched,
        severity=dg.AssetCheckSeverity.WARN,
        description=("sample ratio mismatch in: " + ", ".join(mismatched)) if mismatched else None,
        metadata={"experiments": dg.MetadataValue.md(markdown_table(srm))},
    )


@daily_asset(group=ATTRIBUTION, owners=["team:experimentation"],
             deps=["member_activity", "allocations", "experiments"])
def treated_share(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """As of the partition day: for every running experiment cell and every hour of the load history
    (calibration window, which ends with the projection window), the share of production load its members
    drove (activity-weighted share of members treated by then; members count from their allocated_at). Before
    the first trace day the share is carried back by who was allocated when. The cost projections take this
    share out of the observed load (main.treated_share)."""
    as_of = partition_day(context)
    start, end = trailing_window(as_of, settings.calibration_days)
    with warehouse.get_connection() as conn:
        shares, errors = shares_in_warehouse(conn, as_of, start, end)
        replace_rows(conn, "main.treated_share", shares.with_columns(pl.lit(as_of).alias("as_of")), where={"as_of": as_of})
        replace_rows(conn, "main.treated_share_error", errors.with_columns(pl.lit(as_of).alias("as_of")), where={"as_of": as_of})
    summary = (
        shares.group_by("experiment_id", "cell")
        .agg(pl.col("share").mean().alias("mean_share_window"), pl.col("share").last().alias("share_last_hour"))
        .join(errors.select("experiment_id", "cell", "share_rel_se"), on=["experiment_id", "cell"], how="left")
        .sort("experiment_id", "cell")
    )
    metadata = {
        "dagster/row_count": shares.height,
        "dagster/table_name": "main.treated_share",
        "share_by_cell": dg.MetadataValue.md(markdown_table(summary)),
    }
    plot = share_plot(shares)
    if plot:
        metadata["share_over_time"] = dg.MetadataValue.md(f"![treated share](data:image/png;base64,{plot})")
    return dg.MaterializeResult(metadata=metadata)


attribution_assets = [trace_completeness, trace_completeness_as_of, usage_deltas, treated_share]
