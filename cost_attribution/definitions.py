"""Assembles the code location: every domain's assets, checks, jobs, schedules and resources.

`defs` is what Dagster loads (`dagster dev`, the gRPC server, run workers): it reads the
deployment's start date when the location loads. The CLI and tests call build_defs with
explicit arguments."""

import datetime as dt
from pathlib import Path

import dagster as dg

from cost_attribution.alerts import alert_resources, alert_sensors
from cost_attribution.attribution.assets import attribution_assets
from cost_attribution.attribution.dbt_assets import build_span_models
from cost_attribution.attribution.latency_assets import latency_assets
from cost_attribution.attribution.shift_left_assets import shift_left_assets
from cost_attribution.checks.input_contracts import build_input_contract_checks
from cost_attribution.estimation.assets import estimation_assets
from cost_attribution.estimation.capacity_assets import capacity_assets
from cost_attribution.estimation.outcome_assets import outcome_assets
from cost_attribution.execution import step_executor
from cost_attribution.freshness import apply_freshness_policies, freshness_checks, freshness_sensors
from cost_attribution.ingest.assets import ingest_assets
from cost_attribution.partitions import DEFAULT_PARTITION_START, deployment_start_date, rebase_partitions
from cost_attribution.reporting.assets import reporting_assets
from cost_attribution.reporting.html_assets import html_assets
from cost_attribution.resources import default_resources
from cost_attribution.schedules import daily_cost_attribution_job, daily_schedule

_freshness_checks = freshness_checks()


def build_defs(start_date: dt.date | str = DEFAULT_PARTITION_START, landing: Path | None = None,
               warehouse: Path | None = None) -> dg.Definitions:
    """The code location with its daily partitions starting at start_date, reading the
    landing zone and warehouse given (else the deployment's environment variables)."""
    return rebase_partitions(apply_freshness_policies(_base_defs(landing, warehouse)), start_date)


def _base_defs(landing: Path | None, warehouse: Path | None) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *ingest_assets,
            build_span_models(),
            *attribution_assets,
            *estimation_assets,
            *outcome_assets,
            *reporting_assets,
            *latency_assets,
            *shift_left_assets,
            *capacity_assets,
            *html_assets,
        ],
        asset_checks=[*build_input_contract_checks(), *_freshness_checks],
        jobs=[daily_cost_attribution_job],
        schedules=[daily_schedule],
        sensors=[*alert_sensors(), *freshness_sensors(_freshness_checks)],
        resources={**default_resources(landing, warehouse), **alert_resources()},
        executor=step_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(start_date=deployment_start_date())
