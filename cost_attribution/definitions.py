"""Assembles the code location: every domain's assets, checks, jobs, schedules and resources."""

import dagster as dg

from cost_attribution.attribution.assets import attribution_assets
from cost_attribution.attribution.dbt_assets import span_models
from cost_attribution.estimation.assets import estimation_assets
from cost_attribution.ingest.assets import ingest_assets
from cost_attribution.reporting.assets import reporting_assets
from cost_attribution.resources import default_resources
from cost_attribution.schedules import daily_cost_attribution_job, daily_schedule

defs = dg.Definitions(
    assets=[*ingest_assets, span_models, *attribution_assets, *estimation_assets, *reporting_assets],
    jobs=[daily_cost_attribution_job],
    schedules=[daily_schedule],
    resources=default_resources(),
)
