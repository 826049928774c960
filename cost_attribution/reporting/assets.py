"""The daily cost report: report.json (the contract) for the as-of day."""


import datetime as dt
import json

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.partitions import daily_asset, partition_day
from cost_attribution.reporting.contract import contract_errors
from cost_attribution.reporting.report import build_report, headline, interval_notes
from cost_attribution.reporting.files import report_json_path
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, read_frame, replace_rows, table_exists

CONTRACT_CHECK = "report_contract"


CONTRACT_SPEC = dg.AssetCheckSpec(
    CONTRACT_CHECK, asset="cost_report",
    description="ERROR when report.json departs from docs/contract.md (missing keys, wrong types, enums).",
)


@daily_asset(group="reporting", owners=["team:finops", "team:platform-data"], kinds={"python", "json"},
             deps=["cost_projections", "usage_deltas", "cost_models", "trace_completeness_as_of", "edge_shifts",
                   "business_metrics", "services", "latency_impact", "capacity_plan", "projection_outcomes"],
             check_specs=[CONTRACT_SPEC])
def cost_report(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """The contract's report for the as-of day: per experiment cell the projected 30-day cost with its
    interval, per-service deltas and dollars, flags and business metrics; per service its scaling class and
    cost model; trace completeness; data quality; and (extra key `decision`) what a PM or finance partner
    decides from: annualized costs, readings, minimum detectable effect, share of the bill, cost per business
    point, net value, plain flags with owners, the estimate's history. Stored in main.reports and written to
    report.json beside the warehouse (for the newest as-of day)."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        report = build_report(
            conn,
            as_of,
            projection_days=settings.projection_days,
            blind_spot_coverage=settings.blind_spot_coverage,
            min_trace_coverage=settings.min_trace_coverage,
            cost_alert_threshold_usd=settings.cost_alert_threshold_usd,
            value_per_point_usd=settings.value_per_point_usd,
            intervals=interval_notes(settings.sequential, settings.dollar_interval, settings.point_estimate),
        )
        text = json.dumps(report, indent=2)
        newest = None
        if table_exists(conn, "main.reports"):
            newest = read_frame(conn, "SELECT max(as_of) AS d FROM main.reports")["d"][0]
        replace_rows(
            conn,
            "main.reports",
            pl.DataFrame({"as_of": [as_of], "generated_at": [dt.datetime.now(dt.timezone.utc)], "report_json": [text]}),
            where={"as_of": as_of},
        )
    path = report_json_path(warehouse.database)
    # A backfill of an older day must not overwrite the newest report.json.
    if newest is None or as_of >= newest:
        path.write_text(text + "\n")
    errors = contract_errors(report)
    yield dg.MaterializeResult(
        metadata={
            "report_path": dg.MetadataValue.path(str(path)),
            "experiments": dg.MetadataValue.md(markdown_table(headline(report), float_digits=0)),
            "quarantined": dg.MetadataValue.json(report["data_quality"]["quarantined"]),
        }
    )
    yield dg.AssetCheckResult(
        check_name=CONTRACT_CHECK,
        passed=not errors,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(errors[:20]) or None,
        metadata={"errors": len(errors)},
    )


reporting_assets = [cost_report]
