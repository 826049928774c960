"""Shift-left as an asset: the caller -> callee edges each treatment cell adds, as of the day."""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution.shift_left import load_edge_shifts
from cost_attribution.partitions import daily_asset, partition_day
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, replace_day

EDGE_SHIFTS_TABLE = "main.edge_shifts"


@daily_asset(group="attribution", owners=["team:platform-data"],
             deps=["edge_usage_by_cell", "allocations", "experiments"])
def edge_shifts(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """As of the partition day: per experiment cell and caller -> callee edge the treatment uses, both cells'
    usage per allocated member and whether the edge is new (the control, at the treatment's rate, would almost
    surely have shown it, and never does). Stored in main.edge_shifts; the report's new_dependency flags read
    it."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        shifts = load_edge_shifts(conn, as_of, settings.new_edge_alpha)
        replace_day(conn, EDGE_SHIFTS_TABLE, shifts, as_of)
    new = shifts.filter(pl.col("new_edge"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": shifts.height,
            "dagster/table_name": EDGE_SHIFTS_TABLE,
            "new_edges": dg.MetadataValue.md(markdown_table(new.select(
                "experiment_id", "cell", "caller", "callee", "treatment_requests_per_member", "p_value"))),
        }
    )


shift_left_assets = [edge_shifts]
