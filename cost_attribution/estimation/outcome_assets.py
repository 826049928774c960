"""The closed loop: an append-only log of what was projected, and what shipping really cost.

`decision_log` appends every day's projection of every cell that has not shipped yet
(cell and per-service rows, with the cost-model versions that priced them) and never
rewrites a row, so a backfill or a retrained model cannot change what the team was told
before it shipped. `projection_outcomes` measures each shipped cell's realized change
(estimation/outcomes.py) and sets it beside the projection logged on the last day before
its ship date; its check warns when projections are systematically biased or miss.
"""

import datetime as dt

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.estimation.assets import ESTIMATION, OWNERS, load_models
from cost_attribution.estimation.outcomes import calibration, measure_outcomes, with_model_versions
from cost_attribution.partitions import daily_asset, partition_day
from cost_attribution.warehouse import append_new_rows, markdown_table, read_frame, replace_rows, table_exists

BIAS_CHECK = "projection_bias"
DECISION_TABLE = "main.decision_log"
DECISION_SERVICE_TABLE = "main.decision_log_services"


BIAS_SPEC = dg.AssetCheckSpec(
    BIAS_CHECK, asset="projection_outcomes",
    description="WARN when projections are systematically biased (the mean relative error's interval excludes 0 and "
    "is at least 10%) or a shipped cell's projection missed its realized change by more than 20% and its "
    "95% interval.",
)


@daily_asset(group=ESTIMATION, owners=OWNERS, kinds={"duckdb"},
             deps=["cost_projections", "cost_models", "usage_deltas", "experiments"])
def decision_log(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
    """Append-only log of every day's projection of every cell not shipped yet: as-of, estimate and interval
    (vs not shipping and on the bill), and per service the delta used and the cost-model version
    (main.decision_log, main.decision_log_services). Rows are never rewritten: the projection made on the last
    day before a cell shipped is what projection_outcomes holds it to."""
    as_of = partition_day(context)
    logged_at = dt.datetime.now(dt.timezone.utc)
    with warehouse.get_connection() as conn:
        cells = read_frame(conn, DECISION_CELLS_SQL, [as_of, as_of])
        services = read_frame(conn, DECISION_SERVICES_SQL, [as_of, as_of, as_of])
        cells = with_model_versions(cells, services).with_columns(logged_at=pl.lit(logged_at))
        added = append_new_rows(conn, DECISION_TABLE, cells, ["as_of", "experiment_id", "cell"])
        append_new_rows(conn, DECISION_SERVICE_TABLE, services.with_columns(logged_at=pl.lit(logged_at)),
                        ["as_of", "experiment_id", "cell", "service"])
    return dg.MaterializeResult(metadata={
        "dagster/row_count": cells.height,
        "rows_appended": added,
        "already_logged": cells.height - added,
        "decisions": dg.MetadataValue.md(markdown_table(
            cells.select("experiment_id", "cell", "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"),
            float_digits=0)),
    })


# Cells of experiments that have not shipped by the as-of day (a projection of a cell
# already at 100% is no decision).
NOT_SHIPPED = "(e.shipped_date IS NULL OR e.shipped_date > ?)"
DECISION_CELLS_SQL = f"""
SELECT c.as_of, c.experiment_id, c.cell, c.control_cell,
       c.incremental_cost_usd_30d, c.ci_low_usd_30d, c.ci_high_usd_30d,
       c.bill_change_usd_30d, c.bill_ci_low_usd_30d, c.bill_ci_high_usd_30d
FROM main.experiment_costs c JOIN raw.experiments e USING (experiment_id)
WHERE c.as_of = ? AND {NOT_SHIPPED}
ORDER BY c.experiment_id, c.cell
"""
DECISION_SERVICES_SQL = f"""
SELECT p.as_of, p.experiment_id, p.cell, p.service, p.metric, p.cost_model,
       p.delta_used, p.delta_ci_low_used, p.delta_ci_high_used,
       coalesce(u.significant, false) AS significant,
       p.incremental_cost_usd_30d, p.ci_low_usd_30d, p.ci_high_usd_30d, r.version AS model_version
FROM main.cost_projections p JOIN raw.experiments e USING (experiment_id)
LEFT JOIN main.cost_model_registry r ON r.as_of = ? AND r.service = p.service
LEFT JOIN main.usage_deltas u ON u.as_of = p.as_of AND u.experiment_id = p.experiment_id AND u.cell = p.cell
     AND u.service = p.service
WHERE p.as_of = ? AND {NOT_SHIPPED}
ORDER BY p.experiment_id, p.cell, p.service
"""
# Entry services: they call others and no service calls them.
ROOTS_SQL = """
SELECT DISTINCT caller AS service FROM main.trace_edges
WHERE dt <= ? AND caller NOT IN (SELECT callee FROM main.trace_edges WHERE callee IS NOT NULL)
ORDER BY service
"""
# Per shipped cell the last decision logged before its ship date.
PRE_SHIP_DECISIONS_SQL = """
SELECT d.*, e.shipped_date AS ship_date
FROM raw.experiments e
JOIN main.decision_log d ON d.experiment_id = e.experiment_id AND d.cell = e.shipped_cell
WHERE e.shipped_date <= ? AND d.as_of < e.shipped_date
QUALIFY row_number() OVER (PARTITION BY d.experiment_id, d.cell ORDER BY d.as_of DESC) = 1
ORDER BY d.experiment_id
"""


@daily_asset(group=ESTIMATION, owners=OWNERS,
             deps=["decision_log", "service_hourly_history", "treated_share", "cost_models", "experiments"],
             check_specs=[BIAS_SPEC])
def projection_outcomes(context: dg.AssetExecutionContext, warehouse: DuckDBResource):
    """For every shipped cell (experiments.yaml shipped: {cell, date}): the realized 30-day cost change
    (actual hourly cost after shipping vs the pre-ship cost model priced on a synthetic control of the load
    without the cell; interval from that prediction's own pre-ship error) beside the projection logged on the
    last day before shipping; the calibration over all shipped cells (coverage, mean signed error, bias)."""
    as_of = partition_day(context)
    with warehouse.get_connection() as conn:
        if table_exists(conn, DECISION_TABLE):
            decisions = read_frame(conn, PRE_SHIP_DECISIONS_SQL, [as_of])
        else:
            decisions = pl.DataFrame()
        days = decisions["as_of"].unique().to_list() if decisions.height else []
        decision_services = read_frame(
            conn, "SELECT * FROM main.decision_log_services WHERE list_contains(?, as_of)", [days]
        ) if days else pl.DataFrame()
        history = read_frame(conn, "SELECT service, hour, requests, cpu_seconds, cost FROM main.service_hourly_history")
        shares = read_frame(
            conn, "SELECT experiment_id, cell, hour, share FROM main.treated_share WHERE as_of = ?", [as_of])
        models = {day: load_models(conn, day) for day in days}
        roots = read_frame(conn, ROOTS_SQL, [as_of])["service"].to_list() if table_exists(conn, "main.trace_edges") else []
        cells, services = measure_outcomes(as_of, decisions, decision_services, models, history, shares, roots)
        replace_rows(conn, "main.projection_outcomes", cells, where={"as_of": as_of})
        replace_rows(conn, "main.projection_outcome_services", services, where={"as_of": as_of})
    summary = calibration(cells)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": cells.height,
        "calibration": dg.MetadataValue.md(markdown_table(cells.select(CALIBRATION_COLUMNS), float_digits=0)),
        **{k: v for k, v in (("coverage", summary.coverage), ("mean_signed_error_pct", summary.mean_signed_error_pct))
           if v is not None},
    })
    yield dg.AssetCheckResult(
        check_name=BIAS_CHECK,
        passed=not (summary.systematic_bias or summary.missed),
        severity=dg.AssetCheckSeverity.WARN,
        description=_bias_text(summary) or None,
        metadata={"missed": dg.MetadataValue.json(summary.missed), "calibration": dg.MetadataValue.json(summary.to_dict())},
    )


CALIBRATION_COLUMNS = [
    "experiment_id", "cell", "ship_date", "decision_as_of", "projected_usd_30d", "projected_ci_low_usd_30d",
    "projected_ci_high_usd_30d", "realized_usd_30d", "realized_ci_low_usd_30d", "realized_ci_high_usd_30d",
    "error_pct", "verdict",
]


def _bias_text(summary) -> str:
    parts = []
    if summary.systematic_bias:
        parts.append(f"projections are systematically off by {summary.mean_signed_error_pct:+.0f}% of the realized "
                     f"change (over {summary.n} shipped cells)")
    if summary.missed:
        parts.append("projection missed the realized change: " + ", ".join(summary.missed))
    return "; ".join(parts)


outcome_assets = [decision_log, projection_outcomes]
