"""Freshness: a missed daily run must be visible, not silent.

The daily schedule fires at 06:00 UTC for yesterday's partition; by 09:00 UTC that
partition of every daily asset must exist (time-partition freshness), and the
whole-table ingest assets must have been refreshed within the last day. A sensor
evaluates the checks; a failed freshness check is an asset check failure like any
other, so the platform alert sensor forwards it.
"""

import datetime as dt

import dagster as dg

# Schedule at 06:00 UTC + the three hours a backlogged day may take.
DEADLINE_CRON = "0 9 * * *"
DAILY_ASSETS = ["raw_spans", "trace_completeness", "usage_deltas", "cost_models", "cost_projections", "cost_report"]
# Refreshed whole on every daily run: one missed run makes them older than a day.
WHOLE_TABLE_ASSETS = ["experiments", "services", "allocations", "focus_costs", "usage_metrics", "service_hourly_history"]


def freshness_checks() -> list[dg.AssetChecksDefinition]:
    return [
        *dg.build_time_partition_freshness_checks(
            assets=DAILY_ASSETS, deadline_cron=DEADLINE_CRON, timezone="UTC", severity=dg.AssetCheckSeverity.ERROR
        ),
        *dg.build_last_update_freshness_checks(
            assets=WHOLE_TABLE_ASSETS,
            deadline_cron=DEADLINE_CRON,
            lower_bound_delta=dt.timedelta(hours=27),
            timezone="UTC",
            severity=dg.AssetCheckSeverity.WARN,
        ),
    ]


def freshness_sensors(checks: list[dg.AssetChecksDefinition]) -> list[dg.SensorDefinition]:
    return [
        dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            minimum_interval_seconds=300,
            name="freshness_checks_sensor",
            # Running by default: a freshness check nobody evaluates hides the missed run it exists to show.
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
    ]
