"""Capacity planning table: peak requests/s and instances needed, baseline vs rollout."""

import datetime as dt

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.estimation.capacity import capacity_plan as compute_capacity_plan
from cost_attribution.partitions import daily_partitions, trailing_window
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, read_frame, replace_rows


@dg.asset(
    key="capacity_plan",
    deps=["service_hourly_history", "usage_deltas"],
    description="As of the partition day, per service: peak requests/s over the projection window and the instances "
    "needed at that peak (from the requests per instance the fleet served at its busiest hour on today's instance "
    "type), at baseline and at 100% rollout of every significant experiment cell that moves the service, with the "
    "delta interval. Stored in main.capacity_plan.",
    partitions_def=daily_partitions,
    kinds={"python", "duckdb"},
    owners=["team:finops", "team:platform"],
    group_name="estimation",
    pool="warehouse",
)
def capacity_plan(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    as_of = dt.date.fromisoformat(context.partition_key)
    start, end = trailing_window(as_of, settings.projection_days)
    with warehouse.get_connection() as conn:
        history = read_frame(
            conn,
            "SELECT service, hour, requests, instances, sku FROM main.service_hourly_history "
            "WHERE hour >= ? AND hour < ? ORDER BY service, hour",
            [start, end],
        )
        deltas = read_frame(
            conn,
            "SELECT experiment_id, cell, service, delta, ci_low, ci_high, significant FROM main.usage_deltas WHERE as_of = ?",
            [as_of],
        )
        plan = compute_capacity_plan(history, deltas)
        frame = plan.with_columns(pl.lit(as_of).alias("as_of")).select("as_of", pl.all().exclude("as_of"))
        replace_rows(conn, "main.capacity_plan", frame, where={"as_of": as_of})
    growth = plan.filter((pl.col("scenario") == "rollout") & (pl.col("additional_instances") > 0))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": plan.height,
            "window": f"{start:%Y-%m-%d} .. {end:%Y-%m-%d} (exclusive)",
            "plan": dg.MetadataValue.md(
                markdown_table(plan.select("service", "scenario", "experiment_id", "cell", "peak_requests_per_s",
                                           "requests_per_instance_s", "instances_needed", "additional_instances"))
            ),
            "services_needing_more_instances": dg.MetadataValue.json(sorted(set(growth["service"].to_list()))),
        }
    )


capacity_assets = [capacity_plan]
