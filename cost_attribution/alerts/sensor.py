"""The platform team's alert sensor.

A failed asset check does not fail its run (only a blocking ERROR stops downstream
steps), so run-failure hooks miss it. This sensor reads the instance event log
instead: every ASSET_CHECK_EVALUATION since its cursor, and every new
`cost_projections` materialization (whose as-of day it then looks up in
main.experiment_costs). It posts:

- one alert per failed (asset, check, partition), naming the check, the partition,
  the description and the services in the check's metadata; the check passing again
  on that partition closes the incident, so a later failure alerts again;
- one alert per (experiment, cell) whose projected 30-day incremental cost first
  exceeds AlertPolicy.cost_threshold_usd.

Exactly once: the event-log storage ids and the keys already alerted live in the
sensor cursor, so a re-evaluation, a restarted daemon or the same check failing
again on a re-materialized partition posts nothing new. The cursor only advances past
an event once its alert went out on at least one channel (or needed none).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import dagster as dg
from dagster_duckdb import DuckDBResource

from cost_attribution.alerts.channels import Alert, AlertChannels

COST_ASSET = "cost_projections"
# Bounds the cursor: older keys than this many are forgotten (their events are long
# behind the storage-id cursor, so forgetting them cannot re-send anything).
MAX_REMEMBERED_KEYS = 5000
EVENTS_PER_TICK = 1000
SEVERITY_RANK = {"WARN": 0, "ERROR": 1}
# Metadata keys whose values name services (trace completeness, drift, contracts).
SERVICE_METADATA_KEYS = ("services_below_threshold", "blind_services", "drifted_services", "services")


class AlertPolicy(dg.ConfigurableResource):
    """What is worth waking someone for."""

    cost_threshold_usd: float = 10_000.0
    # "WARN" alerts on every failed check; "ERROR" only on error-severity ones.
    min_check_severity: str = "WARN"
    # Base URL of the Dagster UI, to link the run in the alert ("" = no link).
    dagster_url: str = ""


@dataclass
class AlertCursor:
    check_after: int | None = None  # storage id of the last check evaluation handled
    cost_after: int | None = None  # storage id of the last cost_projections materialization handled
    sent: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        self.sent = self.sent[-MAX_REMEMBERED_KEYS:]
        return json.dumps(asdict(self))


def _metadata_value(value) -> object:
    raw = getattr(value, "value", value)
    if isinstance(raw, float) and raw != raw:
        return None
    return raw


def _services_named(metadata: dict) -> list[str]:
    named: list[str] = []
    for key in SERVICE_METADATA_KEYS:
        raw = _metadata_value(metadata.get(key)) if key in metadata else None
        if isinstance(raw, list):
            named += [str(s) for s in raw if str(s) not in named]
    return named


def _partition_of(instance: dg.DagsterInstance, evaluation, run_id: str, cache: dict) -> str:
    """The check's own partition if it has one, else the partition (or range) its run targeted."""
    if evaluation.partition:
        return evaluation.partition
    if run_id not in cache:
        run = instance.get_run_by_id(run_id)
        tags = run.tags if run else {}
        start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
        if tags.get("dagster/partition"):
            cache[run_id] = tags["dagster/partition"]
        elif start and end:
            cache[run_id] = start if start == end else f"{start}...{end}"
        else:
            cache[run_id] = "unpartitioned"
    return cache[run_id]


def check_alert(evaluation, partition: str, run_id: str, policy: AlertPolicy) -> Alert:
    asset = evaluation.asset_key.to_user_string()
    metadata = dict(evaluation.metadata or {})
    services = _services_named(metadata)
    severity = evaluation.severity.value if evaluation.severity else "ERROR"
    fields = {
        "check": f"{asset}:{evaluation.check_name}",
        "partition": partition,
        "severity": severity + (" (blocking)" if evaluation.blocking else ""),
        "services": ", ".join(services) or "-",
        "run": f"{policy.dagster_url.rstrip('/')}/runs/{run_id}" if policy.dagster_url else run_id,
    }
    details = []
    for key, value in metadata.items():
        raw = _metadata_value(value)
        if key in SERVICE_METADATA_KEYS or isinstance(raw, str) and len(raw) > 300:
            continue  # services are a field already; long markdown tables belong in the UI
        details.append(f"{key}: {json.dumps(raw, default=str)[:300]}")
    return Alert(
        kind="asset_check_failed",
        dedup_key=f"check|{asset}|{evaluation.check_name}|{partition}",  # same key as _check_events
        title=f"Asset check failed: {asset}:{evaluation.check_name} [{partition}]",
        lines=[evaluation.description or "(no description)", *details],
        fields=fields,
    )


def cost_alert(row: dict, threshold: float) -> Alert:
    experiment, cell = row["experiment_id"], row["cell"]
    return Alert(
        kind="cost_over_threshold",
        dedup_key=f"cost|{experiment}|{cell}",
        title=f"Projected cost over threshold: {experiment}:{cell}",
        lines=[
            f"Rolling out {experiment}:{cell} to 100% would add ${row['incremental_cost_usd_30d']:,.0f} over 30 days "
            f"(95% CI ${row['ci_low_usd_30d']:,.0f} .. ${row['ci_high_usd_30d']:,.0f}); threshold ${threshold:,.0f}."
        ],
        fields={"experiment": experiment, "cell": cell, "as_of": str(row["as_of"]),
                "incremental_cost_usd_30d": f"{row['incremental_cost_usd_30d']:.2f}"},
    )


def _check_events(context, cursor: AlertCursor, policy: AlertPolicy):
    """Yields (storage_id, dedup key, alert or None) for every check evaluation after the
    cursor; the alert is None for a passed (or too mild) evaluation."""
    records = context.instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=cursor.check_after),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    min_rank = SEVERITY_RANK.get(policy.min_check_severity.upper(), 0)
    runs: dict = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        partition = _partition_of(context.instance, evaluation, record.run_id, runs)
        key = f"check|{evaluation.asset_key.to_user_string()}|{evaluation.check_name}|{partition}"
        severity = evaluation.severity.value if evaluation.severity else "ERROR"
        if evaluation.passed or SEVERITY_RANK.get(severity, 1) < min_rank:
            yield record.storage_id, key, None, evaluation.passed
        else:
            yield record.storage_id, key, check_alert(evaluation, partition, record.run_id, policy), False


def _cost_rows(database: str, as_of_days: list[str], threshold: float) -> list[dict]:
    import duckdb

    # Read-only, outside the warehouse pool: a sensor must never hold the writer lock.
    with duckdb.connect(database, read_only=True) as conn:
        rows = conn.execute(
            """
            SELECT as_of, experiment_id, cell, incremental_cost_usd_30d, ci_low_usd_30d, ci_high_usd_30d
            FROM main.experiment_costs
            WHERE CAST(as_of AS VARCHAR) IN (SELECT unnest(?)) AND incremental_cost_usd_30d > ?
            ORDER BY as_of, experiment_id, cell
            """,
            [as_of_days, threshold],
        ).fetchall()
    columns = ["as_of", "experiment_id", "cell", "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"]
    return [dict(zip(columns, row)) for row in rows]


def evaluate_alerts(context: dg.SensorEvaluationContext, channels: AlertChannels, policy: AlertPolicy,
                    warehouse_path: str) -> tuple[AlertCursor, list[Alert], list[str]]:
    """One tick: returns the new cursor, the alerts delivered and the problems met."""
    cursor = AlertCursor.parse(context.cursor)
    sent_keys = set(cursor.sent)
    delivered: list[Alert] = []
    problems: list[str] = []

    def deliver(alert: Alert) -> bool:
        if alert.dedup_key in sent_keys:
            return True
        ok_channels, errors = channels.send(alert)
        problems.extend(errors)
        if channels.enabled and not ok_channels:
            return False  # nothing took it: keep the cursor here and retry next tick
        sent_keys.add(alert.dedup_key)
        cursor.sent.append(alert.dedup_key)
        delivered.append(alert)
        return True

    for storage_id, key, alert, passed in _check_events(context, cursor, policy):
        if passed and key in sent_keys:
            # Resolved: a later failure of this check and partition is a new incident.
            sent_keys.discard(key)
            cursor.sent.remove(key)
        if alert is not None and not deliver(alert):
            break
        cursor.check_after = storage_id

    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(COST_ASSET), after_storage_id=cursor.cost_after),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    if result.records:
        days = sorted({r.partition_key for r in result.records if r.partition_key})
        try:
            rows = _cost_rows(warehouse_path, days, policy.cost_threshold_usd) if days else []
        except Exception as error:  # warehouse locked by a running writer, or not created yet: next tick
            problems.append(f"warehouse not readable, cost alerts deferred: {type(error).__name__}: {error}")
        else:
            if all(deliver(cost_alert(row, policy.cost_threshold_usd)) for row in rows):
                cursor.cost_after = result.records[-1].storage_id
    return cursor, delivered, problems


def build_alert_sensor(name: str = "platform_alerts", minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts failed asset checks (once per check and partition) and experiments whose projected "
        "30-day cost exceeds the threshold (once per experiment cell) to the platform team's webhook / email.",
    )
    def _alerts(context: dg.SensorEvaluationContext, alert_channels: AlertChannels, alert_policy: AlertPolicy,
                warehouse: DuckDBResource):
        cursor, delivered, problems = evaluate_alerts(context, alert_channels, alert_policy, warehouse.database)
        context.update_cursor(cursor.dump())
        for problem in problems:
            context.log.warning(problem)
        if not alert_channels.enabled and delivered:
            context.log.warning("no alert channel configured: alerts were recorded but not delivered")
        summary = f"{len(delivered)} alert(s): " + "; ".join(a.title for a in delivered) if delivered else "nothing new"
        return dg.SkipReason(summary)

    return _alerts
