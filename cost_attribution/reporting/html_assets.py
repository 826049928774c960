"""The daily report as a self-contained HTML page beside report.json."""

import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from cost_attribution.partitions import daily_asset, partition_day
from cost_attribution.reporting.files import report_html_paths
from cost_attribution.reporting.html_report import build_html_report
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import read_frame

@daily_asset(group="reporting", owners=["team:finops", "team:platform-data"], kinds={"python", "html"},
             deps=["cost_report", "capacity_plan", "latency_impact", "cost_projections", "cost_models", "service_hourly_history"])
def cost_report_html(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """The as-of day's report as one self-contained HTML page (inline charts, no scripts, no network): a
    decision card per experiment cell (both costs, annualized, readings, share of the bill, cost per business
    point, flags with owners, history), the A/A calibration section, a view by owner, a glossary; per
    experiment cell the projected 30-day cost with its interval beside the business metrics, per moved service
    the two-universe hourly cost and the cost-vs-volume fit with its model kind, flags, capacity and latency.
    Written as report-<as_of>.html and, for the newest day, report.html beside report.json."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        rows = read_frame(conn, "SELECT report_json FROM main.reports WHERE as_of = ?", [as_of])
        if not rows.height:
            raise dg.Failure(f"no report for {as_of} in main.reports: materialize cost_report first")
        newest = read_frame(conn, "SELECT max(as_of) AS d FROM main.reports")["d"][0]
        report = json.loads(rows["report_json"][0])
        page = build_html_report(conn, report, projection_days=settings.projection_days)
    latest, dated = report_html_paths(warehouse.database, as_of)
    dated.write_text(page, encoding="utf-8")
    # A backfill of an older day must not overwrite the newest report.html.
    if newest is None or as_of >= newest:
        latest.write_text(page, encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            "html_path": dg.MetadataValue.path(str(dated)),
            "html_url": dg.MetadataValue.url(dated.as_uri()),
            "latest_html_path": dg.MetadataValue.path(str(latest)),
            "size_kib": round(len(page.encode("utf-8")) / 1024, 1),
            "experiments": len(report["experiments"]),
        }
    )


html_assets = [cost_report_html]
