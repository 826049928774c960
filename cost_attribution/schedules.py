"""The daily job and its schedule: yesterday's partition and everything downstream."""

import dagster as dg

from cost_attribution.freshness import DAILY_ASSETS

# Every asset and check except the freshness checks: their sensor judges the deployment
# at the deadline; inside a run (a backfill of an old day) they would judge the wrong day.
daily_cost_attribution_job = dg.define_asset_job(
    "daily_cost_attribution",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.checks(*(dg.AssetCheckKey(dg.AssetKey(a), "freshness_check") for a in DAILY_ASSETS)),
    description="Ingest the day's traces, attribute, retrain the cost models and project every experiment.",
)

# 06:00 UTC: the collectors have flushed yesterday's traces and the billing export has landed.
daily_schedule = dg.build_schedule_from_partitioned_job(daily_cost_attribution_job, hour_of_day=6, minute_of_hour=0)
