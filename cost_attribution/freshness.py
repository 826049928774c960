"""Freshness: a missed daily run must be visible, not silent.

The daily schedule fires at 06:00 UTC for yesterday's partition; by 09:00 UTC that
partition of every daily asset must exist: a time-partition freshness check per daily
asset (freshness policies are evaluated per asset, not per partition), evaluated by
its sensor, never inside the runs that materialize the assets (a back-filled day would
judge the deployment by an old partition). The whole-table ingest assets carry a
FreshnessPolicy (Dagster's freshness daemon evaluates it): refreshed within 27 hours.
A failed freshness check is an asset check failure like any other, so the platform
alert sensor forwards it.
"""

import datetime as dt

import dagster as dg

# Schedule at 06:00 UTC + the three hours a backlogged day may take.
DEADLINE_CRON = "0 9 * * *"
DAILY_ASSETS = ["raw_spans", "trace_completeness", "usage_deltas", "cost_models", "cost_projections", "cost_report"]
# Refreshed whole on every daily run: one missed run makes them older than a day.
WHOLE_TABLE_ASSETS = ["experiments", "services", "allocations", "focus_costs", "usage_metrics", "service_hourly_history"]
WHOLE_TABLE_POLICY = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=27))


def freshness_checks() -> list[dg.AssetChecksDefinition]:
    return list(
        dg.build_time_partition_freshness_checks(
            assets=DAILY_ASSETS, deadline_cron=DEADLINE_CRON, timezone="UTC", severity=dg.AssetCheckSeverity.ERROR
        )
    )


def apply_freshness_policies(defs: dg.Definitions) -> dg.Definitions:
    """The whole-table assets' freshness policy, applied by selection (one place)."""
    return defs.map_resolved_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, WHOLE_TABLE_POLICY),
        selection=WHOLE_TABLE_ASSETS,
    )


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
