"""The code location the alert daemon test loads: the coverage gate (made to fail by a
99% threshold) and the platform alert sensor ticking every few seconds, its webhook a
loopback sink named by the environment of the daemon the test starts."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from cost_attribution.alerts import AlertChannels, AlertPolicy, build_alert_sensor
from cost_attribution.attribution.assets import trace_completeness
from cost_attribution.resources import AnalysisSettings

WEBHOOK_ENV = "ALERT_TEST_WEBHOOK_URL"
WAREHOUSE_ENV = "ALERT_TEST_WAREHOUSE"


def build_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[trace_completeness],
        sensors=[build_alert_sensor(minimum_interval_seconds=3)],
        resources={
            "alert_channels": AlertChannels(webhook_url=dg.EnvVar(WEBHOOK_ENV)),
            "alert_policy": AlertPolicy(),
            "warehouse": DuckDBResource(database=dg.EnvVar(WAREHOUSE_ENV)),
            "settings": AnalysisSettings(min_trace_coverage=0.99, cost_alert_threshold_usd=1e12),
        },
    )


defs = build_defs()
