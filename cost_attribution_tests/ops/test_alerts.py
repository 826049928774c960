"""Alert sensor: a failed blocking completeness check -> exactly one webhook POST (and
one email) naming the check, the partition and the services; re-evaluation, and the
same check failing again with the same services, post nothing new. Costly experiments
alert once per crossing of the threshold. Nothing counts as sent until a channel took
it. The daemon test runs the sensor for several ticks on a SQLite instance. Loopback
sinks only."""

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


def _location(sensor, resources) -> dg.Definitions:
    """The code location the sensor runs in: the checks it watches come from here."""
    return dg.Definitions(assets=[trace_completeness], sensors=[sensor],
                          resources={"settings": AnalysisSettings(), **resources})


def _tick(sensor, instance, cursor, resources):
    """One daemon tick: evaluate with the stored cursor, return the new cursor. The sensor
    finds the checks to watch in its code location."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources,
        definitions=_location(sensor, resources),
    )
    sensor(context)
    return context.cursor


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_failed_coverage_gate_alerts_exactly_once(tmp_path, instance, webhook_sink, smtp_sink):
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    result = _materialize_gate(instance, warehouse, min_coverage=0.99)
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "trace_coverage_gate"]
    assert gate and not gate[0].passed, "the fixture must make the coverage gate fail"
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name != "trace_coverage_gate")

    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(
            webhook_url=webhook_sink.url, smtp_host=smtp_sink.host, smtp_port=smtp_sink.port,
            email_to=["platform@example.test"],
        ),
        "alert_policy": AlertPolicy(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=1e12),
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
    state = AlertCursor.parse(cursor).checks["trace_completeness:trace_coverage_gate"]
    assert state[1] == "check|trace_completeness|trace_coverage_gate|api-gateway|images-svc"


def test_passing_gate_posts_nothing_failed_delivery_is_retried_and_recovery_reopens(tmp_path, instance, webhook_sink):
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(webhook_url=webhook_sink.url),
        "alert_policy": AlertPolicy(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=1e12),
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
        "alert_policy": AlertPolicy(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=10_000.0),
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
            "alert_policy": AlertPolicy(),
            "settings": AnalysisSettings(cost_alert_threshold_usd=1e4),
            "warehouse": DuckDBResource(database=warehouse),
        }
        cursor = _tick(sensor, instance, None, resources)
        assert webhook_sink.posts == []
    finally:
        holder.communicate("\n", timeout=30)
    _tick(sensor, instance, cursor, resources)
    assert len(webhook_sink.posts) == 1 and "x:t" in webhook_sink.posts[0]["text"]


def test_nothing_counts_as_sent_without_a_channel(tmp_path, instance, webhook_sink):
    """With no channel configured the alert waits (the tick says so); once a channel is
    configured it goes out, once."""
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    _materialize_gate(instance, warehouse, min_coverage=0.99)
    sensor = build_alert_sensor()
    unconfigured = {
        "alert_channels": AlertChannels(),
        "alert_policy": AlertPolicy(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=1e12),
        "warehouse": DuckDBResource(database=warehouse),
    }
    context = dg.build_sensor_context(
        instance=instance, resources=unconfigured,
        definitions=_location(sensor, unconfigured),
    )
    skip = sensor(context)
    assert "1 waiting (no alert channel configured)" in skip.skip_message
    assert "trace_completeness:trace_coverage_gate" not in AlertCursor.parse(context.cursor).checks
    configured = {**unconfigured, "alert_channels": AlertChannels(webhook_url=webhook_sink.url)}
    cursor = _tick(sensor, instance, context.cursor, configured)
    _tick(sensor, instance, cursor, configured)
    assert len(webhook_sink.posts) == 1


@pytest.mark.slow
def test_daemon_on_sqlite_instance_alerts_once_without_failed_ticks(tmp_path, webhook_sink):
    """`dagster-daemon run` against a SQLite DAGSTER_HOME, the coverage gate failed in it:
    several ticks of the alert sensor post exactly one alert and none of them fails."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from cost_attribution_tests.ops import alert_daemon_defs

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    warehouse = str(tmp_path / "w.duckdb")
    _seed_low_coverage_day(warehouse, dt.date.fromisoformat(DAY))
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        _materialize_gate(instance, warehouse, min_coverage=0.99)

    env = {**os.environ, "DAGSTER_HOME": str(home), alert_daemon_defs.WEBHOOK_ENV: webhook_sink.url,
           alert_daemon_defs.WAREHOUSE_ENV: warehouse}
    repo_root = Path(__file__).resolve().parents[2]
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", alert_daemon_defs.__name__,
         "-d", str(repo_root)],
        env=env, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=(tmp_path / "daemon.log").open("w"),
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
            deadline = time.monotonic() + 240
            ticks = []
            while time.monotonic() < deadline:
                states = [s for s in instance.all_instigator_state() if s.instigator_name == "platform_alerts"]
                ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id) if states else []
                if len([t for t in ticks if t.status.value != "STARTED"]) >= 4:
                    break
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(2)
            done = [t for t in ticks if t.status.value != "STARTED"]
            assert len(done) >= 4, f"only {len(done)} ticks: " + (tmp_path / "daemon.log").read_text()[-3000:]
            failed = [t.error for t in done if t.status.value == "FAILURE"]
            assert failed == []
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
    assert len(webhook_sink.posts) == 1
    assert "trace_completeness:trace_coverage_gate" in webhook_sink.posts[0]["text"]


def test_cost_alerts_partly_delivered_resend_only_the_rest(tmp_path, instance, webhook_sink):
    warehouse = str(tmp_path / "w.duckdb")
    with duckdb.connect(warehouse) as conn:
        replace_rows(conn, "main.experiment_costs", pl.DataFrame({
            "as_of": [dt.date(2026, 10, 30)] * 2, "experiment_id": ["alpha", "beta"], "cell": ["t", "t"],
            "incremental_cost_usd_30d": [5e4, 6e4], "ci_low_usd_30d": [1e4, 1e4], "ci_high_usd_30d": [9e4, 9e4]}))
    instance.report_runless_asset_event(dg.AssetMaterialization("cost_projections", partition="2026-10-30"))
    sensor = build_alert_sensor()
    resources = {
        "alert_channels": AlertChannels(webhook_url=webhook_sink.url),
        "alert_policy": AlertPolicy(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=1e4),
        "warehouse": DuckDBResource(database=warehouse),
    }
    webhook_sink.fail_containing = "beta:t"  # the webhook takes alpha's alert, not beta's
    cursor = _tick(sensor, instance, None, resources)
    assert [p["text"].splitlines()[0] for p in webhook_sink.posts] == ["Projected cost over threshold: alpha:t"]
    webhook_sink.fail_containing = ""
    cursor = _tick(sensor, instance, cursor, resources)
    _tick(sensor, instance, cursor, resources)
    assert [p["text"].splitlines()[0] for p in webhook_sink.posts] == [
        "Projected cost over threshold: alpha:t", "Projected cost over threshold: beta:t"]
