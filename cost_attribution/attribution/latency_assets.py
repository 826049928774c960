"""Latency impact per experiment cell x service (member-clustered bootstrap)."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution.latency import latency_impact as compute_latency_impact
from cost_attribution.attribution.latency import load_latency_histograms
from cost_attribution.attribution.member_usage import started_experiments
from cost_attribution.partitions import daily_asset, partition_day
from cost_attribution.warehouse import markdown_table, replace_day


@daily_asset(group="attribution", owners=["team:experimentation"],
             deps=["member_service_latency", "trace_completeness", "allocations", "experiments"])
def latency_impact(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
    """As of the partition day: per experiment cell and service, the relative change of p50 and p95
    SERVER-span duration vs control (request-weighted), with 95% intervals from a bootstrap that resamples
    members (not spans). Stored in main.latency_impact; the report shows it beside each service's cost. The
    histograms are carried from the day before when nothing under them changed (metadata `histograms`:
    advanced or rebuilt)."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        histograms, member_counts, window = load_latency_histograms(conn, as_of)
        experiments = started_experiments(conn, as_of).select("experiment_id", "control_cell")
        impact = compute_latency_impact(histograms, experiments, member_counts=member_counts)
        replace_day(conn, "main.latency_impact", impact, as_of)
    moved = impact.filter(pl.col("significant"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": impact.height,
            "significant_pairs": moved.height,
            # 'advanced': yesterday's sums plus today's rows; 'rebuilt': summed again over
            # every day (the first run, a re-ingested day, a day skipped: attribution/latency_window.py).
            "histograms": window,
            "significant": dg.MetadataValue.md(
                markdown_table(moved.select("experiment_id", "cell", "service", "p50_delta", "p50_ci_low",
                                            "p50_ci_high", "p95_delta", "p95_ci_low", "p95_ci_high"))
            ),
        }
    )


latency_assets = [latency_impact]
