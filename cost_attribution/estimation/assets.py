"""Estimation: hourly cost/volume history -> daily-retrained cost models -> the
two-universe projection of every experiment cell."""


import datetime as dt
import json

import dagster as dg
import numpy as np
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution.call_graph import caller_shares
from cost_attribution.attribution.member_usage import started_experiments
from cost_attribution.attribution.shift_left import load_edge_usage
from cost_attribution.attribution.treated_share import hourly_grid
from cost_attribution.attribution.usage_moments import (
    CROSS_MOMENT_SCHEMA, CROSS_MOMENTS_TABLE, covariance_from_cross_moments, served_requests)
from cost_attribution.estimation.cell_costs import project_cells
from cost_attribution.estimation.models import FittedCostModel, ModelConfig, fit_all, registry_frame
from cost_attribution.estimation.plots import cost_model_plot
from cost_attribution.estimation.projection import HORIZON_DAYS
from cost_attribution.partitions import daily_asset, daily_partitions, partition_day, trailing_window
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import markdown_table, read_frame, replace_rows, table_exists

ESTIMATION = "estimation"
OWNERS = ["team:finops"]
DRIFT_CHECK = "cost_model_drift"


HISTORY_SQL = """
WITH costs AS (
    SELECT app AS service,
           date_trunc('hour', charge_period_start) AS hour,
           sum(effective_cost) AS cost,
           count(DISTINCT resource_id) AS instances,
           mode(sku_id) AS sku
    FROM raw.focus_costs
    WHERE app IS NOT NULL
    GROUP BY ALL
),
volume AS (
    SELECT service, date_trunc('hour', hour) AS hour, sum(requests) AS requests,
           -- NULL unless every row of the hour carries CPU seconds
           CASE WHEN count(cpu_seconds) = count(*) THEN sum(cpu_seconds) END AS cpu_seconds
    FROM raw.usage_metrics
    GROUP BY ALL
)
SELECT coalesce(v.service, c.service) AS service,
       coalesce(v.hour, c.hour) AS hour,
       v.requests,
       v.cpu_seconds,
       c.cost,
       c.instances,
       c.sku,
       c.cost / nullif(c.instances, 0) AS unit_cost
FROM volume v FULL OUTER JOIN costs c ON c.service = v.service AND c.hour = v.hour
ORDER BY service, hour
"""


@dg.asset(
    key="service_hourly_history",
    deps=["focus_costs", "usage_metrics"],
    description="Per service and hour: production requests and CPU seconds (metrics), attributed cost (FOCUS EffectiveCost of rows "
    "tagged with the service), instance count and dominant SKU. The training data of the cost models.",
    kinds={"duckdb"},
    owners=OWNERS,
    group_name=ESTIMATION,
    pool="warehouse",
)
def service_hourly_history(warehouse: DuckDBResource) -> dg.MaterializeResult:
    with warehouse.get_connection() as conn:
        history = read_frame(conn, HISTORY_SQL)
        replace_rows(conn, "main.service_hourly_history", history)
        unattributed = read_frame(
            conn,
            """
            SELECT CAST(charge_period_start AS DATE) AS day, charge_category, sum(effective_cost) AS effective_cost,
                   count(*) AS rows
            FROM raw.focus_costs WHERE app IS NULL GROUP BY ALL ORDER BY day, charge_category
            """,
        )
        replace_rows(conn, "main.unattributed_costs", unattributed)
    incomplete = history.filter(pl.col("requests").is_null() | pl.col("cost").is_null())
    summary = (
        history.group_by("service")
        .agg(
            pl.col("hour").min().alias("first_hour"),
            pl.col("hour").max().alias("last_hour"),
            pl.col("cost").sum().alias("cost_usd"),
            pl.col("requests").sum().alias("requests"),
        )
        .sort("service")
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": history.height,
            "hours_missing_cost_or_volume": incomplete.height,
            "unattributed_cost_usd": float(unattributed["effective_cost"].sum()) if unattributed.height else 0.0,
            "services": dg.MetadataValue.md(markdown_table(summary)),
        }
    )


def _model_config(settings: AnalysisSettings) -> ModelConfig:
    return ModelConfig(
        static_headroom=settings.static_headroom,
        price_change_tolerance=settings.price_change_tolerance,
        residual_shift_tolerance=settings.residual_shift_tolerance,
        cost_per_request_shift_tolerance=settings.cost_per_request_shift_tolerance,
    )


DRIFT_SPEC = dg.AssetCheckSpec(
    DRIFT_CHECK, asset="cost_models",
    description="WARN naming services whose cost structure drifted (instance type, price, cost per request); those "
    "services are projected with the heuristic model.",
)


@daily_asset(group=ESTIMATION, owners=OWNERS, kinds={"scikitlearn", "duckdb"},
             deps=["service_hourly_history"],
             check_specs=[DRIFT_SPEC])
def cost_models(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    """Per-service cost model retrained every day on the trailing window ending at the partition day: scaling
    class (autoscale/static), chosen estimator with its out-of-sample MAPE, drift detection with fallback to a
    heuristic priced at today's cost structure. Each partition is one version in main.cost_model_registry."""
    as_of = partition_day(context)
    _, cutoff = trailing_window(as_of, 0)
    with warehouse.get_connection() as conn:
        history = read_frame(
            conn,
            "SELECT * FROM main.service_hourly_history WHERE hour < ? AND requests IS NOT NULL AND cost IS NOT NULL",
            [cutoff],
        )
        models = fit_all(history, cutoff, _model_config(settings))
        registry = registry_frame(models, as_of)
        if registry.height:
            replace_rows(conn, "main.cost_model_registry", registry, where={"as_of": as_of})
    plot = cost_model_plot(history, models) if models else None
    drifted = [m for m in models if m.drift_detected]
    table = registry.select(
        "service", "scaling", "cost_model", "kind", "drift_detected", "model_error_pct", "capacity_requests_per_hour"
    ) if registry.height else registry
    metadata = {
        "dagster/row_count": registry.height,
        "registry": dg.MetadataValue.md(markdown_table(table)),
        "training_window_end": cutoff.isoformat(),
    }
    if plot:
        metadata["cost_vs_volume"] = dg.MetadataValue.md(f"![cost vs volume](data:image/png;base64,{plot})")
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not drifted,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{m.service}: {', '.join(m.drift_reasons)}" for m in drifted) or None,
        metadata={"drifted_services": dg.MetadataValue.json([m.service for m in drifted])},
    )


def load_models(conn, as_of: dt.date) -> dict[str, FittedCostModel]:
    rows = read_frame(conn, "SELECT service, model_json FROM main.cost_model_registry WHERE as_of = ?", [as_of])
    return {r["service"]: FittedCostModel.from_dict(json.loads(r["model_json"])) for r in rows.iter_rows(named=True)}


def load_projection_load(
    conn, as_of: dt.date, days: int, models: dict[str, FittedCostModel]
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The last `days` days' hour starts, ending with the as-of day, and per service
    (positions in them, hourly load in the unit its cost model is driven by: CPU seconds
    or requests)."""
    start, end = trailing_window(as_of, days)
    hours = hourly_grid(start, end)
    volume = read_frame(
        conn,
        """
        SELECT service, hour, requests, cpu_seconds FROM main.service_hourly_history
        WHERE hour >= ? AND hour < ? AND requests IS NOT NULL ORDER BY service, hour
        """,
        [start, end],
    )
    load = {}
    for (service,), group in volume.group_by("service", maintain_order=True):
        model = models.get(service)
        driver = (model.features or ["requests"])[0] if model else "requests"
        group = group.filter(pl.col(driver).is_not_null())
        stamps = group["hour"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
        load[service] = (np.searchsorted(hours, stamps), group[driver].to_numpy().astype(float))
    return hours, load


@dg.asset(
    key="cost_projections",
    deps=["usage_deltas", "cost_models", "service_hourly_history", "treated_share", "edge_usage_by_cell"],
    description="For every experiment cell, what shipping it would add over 30 days. Each service's cost model "
    "prices the last 28 days of hourly load (CPU seconds or requests) with every running experiment's treated "
    "share taken out (everyone in control) and changed by the cell's effect: incremental cost vs not shipping. "
    "The same counterfactual against the days as they were is the bill change. Intervals: per service from the "
    "delta interval, per cell from correlated joint draws.",
    partitions_def=daily_partitions,
    kinds={"python", "duckdb"},
    owners=OWNERS,
    group_name=ESTIMATION,
    pool="warehouse",
)
def cost_projections(context: dg.AssetExecutionContext, settings: AnalysisSettings, warehouse: DuckDBResource):
    as_of = dt.date.fromisoformat(context.partition_key)
    with warehouse.get_connection() as conn:
        # Ordered: the joint draws are seeded, so a fixed service order makes reruns identical.
        deltas = read_frame(
            conn, "SELECT * FROM main.usage_deltas WHERE as_of = ? ORDER BY experiment_id, cell, service", [as_of]
        )
        models = load_models(conn, as_of)
        hours, load = load_projection_load(conn, as_of, settings.calibration_days, models)
        shares = read_frame(conn, "SELECT experiment_id, cell, hour, share FROM main.treated_share WHERE as_of = ?", [as_of])
        cross = cross_moments_by_experiment(conn, as_of, deltas)
        # Each callee's served requests from usage_deltas' sums of the day: the experiment's
        # member rows are not read again.
        callers = (
            caller_shares(load_edge_usage(conn, as_of),
                          served_requests(pl.concat([pl.DataFrame(schema=CROSS_MOMENT_SCHEMA), *cross.values()])),
                          started_experiments(conn, as_of).select("experiment_id", "control_cell"))
            if settings.shrink_towards_callers else None
        )
        share_rel_se = {
            (r["experiment_id"], r["cell"]): r["share_rel_se"]
            for r in read_frame(
                conn, "SELECT experiment_id, cell, share_rel_se FROM main.treated_share_error WHERE as_of = ?", [as_of]
            ).iter_rows(named=True)
        } if table_exists(conn, "main.treated_share_error") else {}
        services_frame, experiments_frame, universes = project_cells(
            as_of, deltas, models, load, hours, shares,
            scale=HORIZON_DAYS / settings.projection_days,
            fdr_q=settings.fdr_q,
            correlation=lambda experiment_id, *key: delta_correlation(cross[experiment_id], *key),
            projection_hours=24 * settings.projection_days,
            interval=settings.dollar_interval,
            point_estimate=settings.point_estimate,
            callers=callers,
            share_rel_se=share_rel_se,
        )
        replace_rows(conn, "main.cost_projections", services_frame, where={"as_of": as_of})
        replace_rows(conn, "main.experiment_costs", experiments_frame, where={"as_of": as_of})
        replace_rows(conn, "main.projection_universes", universes, where={"as_of": as_of})
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": services_frame.height,
            "dagster/table_name": "main.experiment_costs",
            "what_the_numbers_mean": dg.MetadataValue.md(BASELINES_IN_WORDS),
            "experiments": dg.MetadataValue.md(
                markdown_table(experiments_frame.drop("as_of").sort("incremental_cost_usd_30d", descending=True), float_digits=0)
            ),
        }
    )


BASELINES_IN_WORDS = (
    "**incremental_cost_usd_30d**: what shipping the cell to everyone adds over 30 days compared with not "
    "shipping it (everyone in control). **bill_change_usd_30d**: how much the cloud bill will move compared "
    "with the last 28 days as they were, which already carried the running test's treated share."
)


def cross_moments_by_experiment(conn, as_of: dt.date, deltas: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """usage_deltas' cross moments of the day (usage_moments.CROSS_MOMENTS_TABLE), per
    experiment. An experiment with deltas and no cross moments was measured before they
    were kept: its correlation would silently be dropped, so this stops and says what to rerun."""
    cross = (
        read_frame(conn, f"SELECT * EXCLUDE (as_of) FROM {CROSS_MOMENTS_TABLE} WHERE as_of = ?", [as_of])
        if table_exists(conn, CROSS_MOMENTS_TABLE) else pl.DataFrame(schema=CROSS_MOMENT_SCHEMA)
    )
    by_experiment = {key[0]: frame for key, frame in cross.partition_by("experiment_id", as_dict=True).items()}
    missing = sorted(set(deltas["experiment_id"].to_list()) - set(by_experiment))
    if missing:
        raise RuntimeError(
            f"{CROSS_MOMENTS_TABLE} has no rows for as_of {as_of} and experiments {missing}, which usage_deltas "
            f"measured: materialize usage_deltas for partition {as_of} again, then cost_projections."
        )
    return by_experiment


def delta_correlation(cross: pl.DataFrame, cell, control_cell, services, metrics) -> np.ndarray | None:
    """Member-level correlation of the deltas the cell's services are priced with
    (each on its own metric: work or requests), from the experiment's cross moments."""
    if len(services) < 2:
        return None
    work_services = [s for s, metric in zip(services, metrics) if metric == "work"]
    cov = covariance_from_cross_moments(cross, cell, control_cell, list(services), work_services)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    return cov / np.outer(sd, sd)


estimation_assets = [service_hourly_history, cost_models, cost_projections]
