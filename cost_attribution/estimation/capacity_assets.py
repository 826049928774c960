"""Capacity planning table: peak requests/s and instances needed, baseline vs rollout."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.estimation.capacity import capacity_plan as compute_capacity_plan
from cost_attribution.partitions import daily_asset, partition_day, trailing_window
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, read_frame, replace_day

HISTORY_SQL = """
SELECT service, hour, requests, instances, sku FROM main.service_hourly_history
WHERE hour >= ? AND hour < ? ORDER BY service, hour
"""
DELTAS_SQL = "SELECT experiment_id, cell, service, delta, ci_low, ci_high, significant FROM main.usage_deltas WHERE as_of = ?"


@daily_asset(group="estimation", owners=["team:finops", "team:platform"],
             deps=["service_hourly_history", "usage_deltas"])
def capacity_plan(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """As of the partition day, per service: peak requests/s over the projection window and the instances
    needed at that peak (from the requests per instance the fleet served at its busiest hour on today's
    instance type), at baseline and at 100% rollout of every significant experiment cell that moves the
    service, with the delta interval. Stored in main.capacity_plan."""
    as_of = partition_day(context)
    start, end = trailing_window(as_of, settings.projection_days)
    with warehouse.get_connection() as conn:
        history = read_frame(conn, HISTORY_SQL, [start, end])
        deltas = read_frame(conn, DELTAS_SQL, [as_of])
        plan = compute_capacity_plan(history, deltas)
        replace_day(conn, "main.capacity_plan", plan, as_of)
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
