"""Alert sensor: a failed blocking completeness check -> exactly one webhook POST (and
one email) naming the check, the partition and the services; re-evaluation, and the
same check failing again on the same partition, post nothing new. Costly experiments
alert once per experiment cell. Loopback sinks only."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource

from cost_attribution.alerts import AlertChannels, AlertCursor, AlertPolicy, build_alert_sensor
from cost_attribution.attribution.assets import trace_completeness
from cost_attribution.resources import AnalysisSettings
from cost_attribution.warehouse import replace_rows

DAY = "2026-10-30"


def _seed_low_coverage_day(path: str, day: dt.date) -> None:
    """What trace_completeness reads (the dbt models service_coverage and trace_edges,
    and the day's metrics) for one day in which 95% of the work reaches a member: fine
    for the default gate (50%), a failure at 99%. Every other completeness check passes
    (no broken edge, no orphans, 95% member tags, traced volume proportional to metrics)."""
    coverage = pl.DataFrame(
        {
            "dt": [day, day],
            "service": ["api-gateway", "images-svc"],
            "server_spans": [1000, 500],
            "adjusted_requests": [1000.0, 500.0],
            "attributed_requests": [960.0, 460.0],
            "root_requests": [1000.0, 0.0],
            "anonymous_root_requests": [40.0, 0.0],
            "spans_with_parent": [0, 500],
            "orphan_spans": [0, 0],
        }
    )
    edges = pl.DataFrame(
        {
            "dt": [day],
            "caller": ["api-gateway"],
            "callee": ["images-svc"],
            "client_spans": [500],
            "client_requests": [500.0],
            "unmatched_client_spans": [0],
        }
    )
    hour = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
    metrics = pl.DataFrame({"hour": [hour, hour], "service": ["api-gateway", "images-svc"],
                            "requests": [100_000.0, 50_000.0]})
    with duckdb.connect(path) as conn:
        replace_rows(conn, "raw.usage_metrics", metrics)
        replace_rows(conn, "main.service_coverage", coverage, where={"dt": day})
        replace_rows(conn, "main.trace_edges", edges, where={"dt": day})


def _materialize_gate(instance, warehouse: str, min_coverage: float):
    return dg.materialize(
        [trace_completeness],
        partition_key=DAY,
        instance=instance,
        resources={
            "settings": AnalysisSettings(min_trace_coverage=min_coverage),
            "warehouse": DuckDBResource(database=warehouse),
        },
        raise_on_error=False,
    )


def _tick(sensor, instance, cursor, resources):
    """One daemon tick: evaluate with the stored cursor, return the new cursor."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    sensor(context)
    return context.cursor


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_failed_blocking_gate_alerts_exactly_once(tmp_path, instance, webhook_sink, smtp_sink):
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    result = _materialize_gate(instance, warehouse, min_coverage=0.99)
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "trace_coverage_gate"]
    assert gate and not gate[0].passed, "the fixture must make the blocking gate fail"
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name != "trace_coverage_gate")

    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(
            webhook_url=webhook_sink.url, smtp_host=smtp_sink.host, smtp_port=smtp_sink.port,
            email_to=["platform@example.test"],
        ),
        "alert_policy": AlertPolicy(cost_threshold_usd=1e12),
        "warehouse": DuckDBResource(database=warehouse),
    }
    cursor = _tick(sensor, instance, None, resources)
    assert len(webhook_sink.posts) == 1
    post = webhook_sink.posts[0]
    assert "trace_completeness:trace_coverage_gate" in post["text"]
    assert DAY in post["text"]
    assert "api-gateway" in post["text"] and "images-svc" in post["text"]
    assert post["blocks"][0]["type"] == "header"  # Slack incoming-webhook block payload
    assert len(smtp_sink.messages) == 1
    assert "trace_coverage_gate" in smtp_sink.messages[0]["data"]
    assert smtp_sink.messages[0]["to"] == ["<platform@example.test>"]

    # The daemon evaluates again: nothing new.
    cursor = _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1

    # The same partition re-materialized and failing again is the same incident.
    _materialize_gate(instance, warehouse, min_coverage=0.99)
    cursor = _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1 and len(smtp_sink.messages) == 1
    assert "check|trace_completeness|trace_coverage_gate|" + DAY in AlertCursor.parse(cursor).sent


def test_passing_gate_posts_nothing_failed_delivery_is_retried_and_recovery_reopens(tmp_path, instance, webhook_sink):
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(webhook_url=webhook_sink.url),
        "alert_policy": AlertPolicy(cost_threshold_usd=1e12),
        "warehouse": DuckDBResource(database=warehouse),
    }
    assert _materialize_gate(instance, warehouse, min_coverage=0.5).success
    cursor = _tick(sensor, instance, None, resources)
    assert webhook_sink.posts == []

    _materialize_gate(instance, warehouse, min_coverage=0.99)
    webhook_sink.fail_next = 1  # the webhook is down for one tick
    cursor = _tick(sensor, instance, cursor, resources)
    assert webhook_sink.posts == []
    cursor = _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1 and "trace_coverage_gate" in webhook_sink.posts[0]["text"]
    cursor = _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1

    # The gate passes again (incident closed), then fails again: a new incident, a new alert.
    assert _materialize_gate(instance, warehouse, min_coverage=0.5).success
    cursor = _tick(sensor, instance, cursor, resources)
    _materialize_gate(instance, warehouse, min_coverage=0.99)
    _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 2


def test_cost_over_threshold_alerts_once_per_experiment_cell(tmp_path, instance, webhook_sink):
    warehouse = str(tmp_path / "w.duckdb")
    costs = pl.DataFrame(
        {
            "as_of": [dt.date(2026, 10, 30)] * 2 + [dt.date(2026, 10, 31)] * 2,
            "experiment_id": ["smarter-prefetch", "aa-calibration"] * 2,
            "cell": ["treatment"] * 4,
            "control_cell": ["control"] * 4,
            "incremental_cost_usd_30d": [25_000.0, 10.0, 26_000.0, 12.0],
            "ci_low_usd_30d": [20_000.0, -5.0, 21_000.0, -5.0],
            "ci_high_usd_30d": [30_000.0, 30.0, 31_000.0, 30.0],
        }
    )
    with duckdb.connect(warehouse) as conn:
        replace_rows(conn, "main.experiment_costs", costs)
    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(webhook_url=webhook_sink.url),
        "alert_policy": AlertPolicy(cost_threshold_usd=10_000.0),
        "warehouse": DuckDBResource(database=warehouse),
    }
    cursor = _tick(sensor, instance, None, resources)
    assert webhook_sink.posts == []  # no cost_projections materialization yet

    instance.report_runless_asset_event(dg.AssetMaterialization("cost_projections", partition="2026-10-30"))
    cursor = _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1
    assert "smarter-prefetch:treatment" in webhook_sink.posts[0]["text"]
    assert "25,000" in webhook_sink.posts[0]["text"]

    # The next day is still over the threshold: same experiment cell, no second alert.
    instance.report_runless_asset_event(dg.AssetMaterialization("cost_projections", partition="2026-10-31"))
    _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1


def test_cost_alerts_wait_while_the_warehouse_is_locked(tmp_path, instance, webhook_sink):
    """A run holding the DuckDB writer lock defers cost alerts to a later tick instead of losing them."""
    import subprocess
    import sys
    import textwrap

    warehouse = str(tmp_path / "w.duckdb")
    with duckdb.connect(warehouse) as conn:
        replace_rows(conn, "main.experiment_costs", pl.DataFrame({
            "as_of": [dt.date(2026, 10, 30)], "experiment_id": ["x"], "cell": ["t"],
            "incremental_cost_usd_30d": [5e4], "ci_low_usd_30d": [1e4], "ci_high_usd_30d": [9e4]}))
    instance.report_runless_asset_event(dg.AssetMaterialization("cost_projections", partition="2026-10-30"))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            conn = duckdb.connect({warehouse!r})
            print("locked", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        sensor = build_alert_sensor()
        resources = {
            "alert_channels": AlertChannels(webhook_url=webhook_sink.url),
            "alert_policy": AlertPolicy(cost_threshold_usd=1e4),
            "warehouse": DuckDBResource(database=warehouse),
        }
        cursor = _tick(sensor, instance, None, resources)
        assert webhook_sink.posts == []
    finally:
        holder.communicate("\n", timeout=30)
    _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1 and "x:t" in webhook_sink.posts[0]["text"]
