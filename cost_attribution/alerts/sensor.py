"""The platform team's alert sensor.

A failed asset check does not fail its run (only a blocking ERROR stops downstream
steps), so run-failure hooks miss it. Every tick this sensor asks the instance, through
its public API, for the latest evaluation of every asset check in the code location
(`DagsterInstance.get_latest_asset_check_evaluation_record`), for the new
`cost_projections` materializations (`fetch_materializations`) and for failed runs
(`fetch_run_status_changes`). It alerts on what is new or has changed, not on every
evaluation:

- a check that starts failing opens an incident and alerts once, naming the check, the
  partition, the description and the services in the check's metadata; the same check
  failing again with the same services (the next day, a re-run) is the same incident;
  failing with other services is a changed problem and alerts again; passing closes it;
- an experiment cell whose projected 30-day cost rises above the threshold alerts once;
  it alerts again only after it dropped below the threshold and rose again;
- a failed run of the daily job alerts once.

Exactly once, and only once a channel took it: the cursor advances past an alert only
after a channel accepted it; with no channel configured nothing counts as sent and the
tick says how many alerts are waiting. The cursor is bounded: one entry per check, the
cost cells currently over the threshold and two storage ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import dagster as dg
from dagster_duckdb import DuckDBResource

from cost_attribution.alerts.channels import Alert, AlertChannels
from cost_attribution.resources import AnalysisSettings

COST_ASSET = "cost_projections"
EVENTS_PER_TICK = 1000
SEVERITY_RANK = {"WARN": 0, "ERROR": 1}
# Metadata keys whose values name services (trace completeness, drift, contracts).
SERVICE_METADATA_KEYS = ("services_below_threshold", "blind_services", "drifted_services", "services")


class AlertPolicy(dg.ConfigurableResource):
    """What is worth waking someone for. The cost threshold is not here: it is
    AnalysisSettings.cost_alert_threshold_usd, the one the report's cost_over_threshold
    flag uses, so the flag and the alert always agree."""

    # "ERROR" (default) alerts on error-severity checks (the blocking coverage gate,
    # freshness, contracts); "WARN" also on the warnings the report already flags
    # (blind spots, drift, member tags), each once per incident.
    min_check_severity: str = "ERROR"
    # Base URL of the Dagster UI, to link the run in the alert ("" = no link).
    dagster_url: str = ""

    def run_link(self, run_id: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/runs/{run_id}" if self.dagster_url else run_id


@dataclass
class AlertCursor:
    # check key -> [storage id of the last evaluation handled, open incident signature or None]
    checks: dict[str, list] = field(default_factory=dict)
    cost_after: int | None = None  # storage id of the last cost_projections materialization handled
    cost_day: str | None = None  # newest as-of day whose costs were handled
    cost_open: list[str] = field(default_factory=list)  # experiment|cell over the threshold as of cost_day
    runs_after: str | None = None  # fetch_run_status_changes cursor of the failed runs handled

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor:
        if not raw:
            return cls()
        loaded = json.loads(raw)
        return cls(**{k: v for k, v in loaded.items() if k in cls.__dataclass_fields__})

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


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


def _partition_of(instance: dg.DagsterInstance, record) -> str:
    """The check's own partition if it has one, else the partition (or range) its run targeted."""
    if record.partition:
        return record.partition
    run = instance.get_run_by_id(record.run_id)
    tags = run.tags if run else {}
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if tags.get("dagster/partition"):
        return tags["dagster/partition"]
    if start and end:
        return start if start == end else f"{start}...{end}"
    return "unpartitioned"


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
        "run": policy.run_link(run_id),
    }
    details = []
    for key, value in metadata.items():
        raw = _metadata_value(value)
        if key in SERVICE_METADATA_KEYS or isinstance(raw, str) and len(raw) > 300:
            continue  # services are a field already; long markdown tables belong in the UI
        details.append(f"{key}: {json.dumps(raw, default=str)[:300]}")
    return Alert(
        kind="asset_check_failed",
        dedup_key=f"check|{asset}|{evaluation.check_name}|{'|'.join(services)}",
        title=f"Asset check failed: {asset}:{evaluation.check_name} [{partition}]",
        lines=[evaluation.description or "(no description)", *details],
        fields=fields,
    )


def cost_alert(row: dict, threshold: float) -> Alert:
    experiment, cell = row["experiment_id"], row["cell"]
    return Alert(
        kind="cost_over_threshold",
        dedup_key=f"{experiment}|{cell}",
        title=f"Projected cost over threshold: {experiment}:{cell}",
        lines=[
            f"Rolling out {experiment}:{cell} to 100% would add ${row['incremental_cost_usd_30d']:,.0f} over 30 days "
            f"(95% CI ${row['ci_low_usd_30d']:,.0f} .. ${row['ci_high_usd_30d']:,.0f}); threshold ${threshold:,.0f}."
        ],
        fields={"experiment": experiment, "cell": cell, "as_of": str(row["as_of"]),
                "incremental_cost_usd_30d": f"{row['incremental_cost_usd_30d']:.2f}"},
    )


def run_failure_alert(run: dg.DagsterRun, message: str, policy: AlertPolicy) -> Alert:
    partition = run.tags.get("dagster/partition") or "-"
    return Alert(
        kind="run_failed",
        dedup_key=f"run|{run.run_id}",
        title=f"Run failed: {run.job_name} [{partition}]",
        lines=[message or "(no message)"],
        fields={"job": run.job_name, "partition": partition, "run": policy.run_link(run.run_id)},
    )


class _Delivery:
    """Sends alerts and remembers what was delivered and what went wrong this tick."""

    def __init__(self, channels: AlertChannels):
        self.channels = channels
        self.delivered: list[Alert] = []
        self.waiting: list[Alert] = []
        self.problems: list[str] = []

    def __call__(self, alert: Alert) -> bool:
        if not self.channels.enabled:
            self.waiting.append(alert)  # nothing can take it: not sent, state unchanged
            return False
        ok_channels, errors = self.channels.send(alert)
        self.problems.extend(errors)
        if not ok_channels:
            self.waiting.append(alert)  # retried next tick
            return False
        self.delivered.append(alert)
        return True


def _check_incidents(context: dg.SensorEvaluationContext, cursor: AlertCursor, policy: AlertPolicy,
                     deliver: _Delivery) -> None:
    """Opens, changes and closes one incident per asset check from its latest evaluation."""
    repository = context.repository_def
    if repository is None:
        return
    min_rank = SEVERITY_RANK.get(policy.min_check_severity.upper(), 0)
    for check_key in sorted(repository.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()):
        name = check_key.to_user_string()
        record = context.instance.get_latest_asset_check_evaluation_record(check_key)
        seen_id, open_signature = cursor.checks.get(name, [None, None])
        if record is None or record.event is None or (seen_id is not None and record.id <= seen_id):
            continue
        if record.status.value == "PLANNED":
            continue  # still running: its result comes on a later tick
        evaluation = record.event.dagster_event.event_specific_data
        severity = evaluation.severity.value if evaluation.severity else "ERROR"
        if evaluation.passed or SEVERITY_RANK.get(severity, 1) < min_rank:
            cursor.checks[name] = [record.id, None]  # passing (or too mild): the incident is closed
            continue
        alert = check_alert(evaluation, _partition_of(context.instance, record), record.run_id, policy)
        if alert.dedup_key == open_signature or deliver(alert):
            cursor.checks[name] = [record.id, alert.dedup_key]


def _cost_rows(database: str, as_of_day: str, threshold: float) -> list[dict]:
    import duckdb

    # Read-only, outside the warehouse pool: a sensor must never hold the writer lock.
    with duckdb.connect(database, read_only=True) as conn:
        rows = conn.execute(
            """
            SELECT as_of, experiment_id, cell, incremental_cost_usd_30d, ci_low_usd_30d, ci_high_usd_30d
            FROM main.experiment_costs
            WHERE CAST(as_of AS VARCHAR) = ? AND incremental_cost_usd_30d > ?
            ORDER BY experiment_id, cell
            """,
            [as_of_day, threshold],
        ).fetchall()
    columns = ["as_of", "experiment_id", "cell", "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"]
    return [dict(zip(columns, row)) for row in rows]


def _cost_incidents(context: dg.SensorEvaluationContext, cursor: AlertCursor, threshold_usd: float,
                    warehouse_path: str, deliver: _Delivery) -> None:
    """Cells over the threshold as of the newest projected day that were not over it before."""
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(COST_ASSET), after_storage_id=cursor.cost_after),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    if not result.records:
        return
    days = sorted({r.partition_key for r in result.records if r.partition_key})
    newest = days[-1] if days else None
    if newest is not None and (cursor.cost_day is None or newest >= cursor.cost_day):
        try:
            rows = _cost_rows(warehouse_path, newest, threshold_usd)
        except Exception as error:  # warehouse locked by a running writer, or not created yet: next tick
            deliver.problems.append(f"warehouse not readable, cost alerts deferred: {type(error).__name__}: {error}")
            return
        over = {f"{row['experiment_id']}|{row['cell']}": row for row in rows}
        for key, row in over.items():
            if key in cursor.cost_open:
                continue  # still over the threshold: the same incident
            if not deliver(cost_alert(row, threshold_usd)):
                return  # retried next tick; the ones delivered so far are remembered as open
            cursor.cost_open = sorted({*cursor.cost_open, key})
        cursor.cost_open, cursor.cost_day = sorted(over), newest
    cursor.cost_after = result.records[-1].storage_id


def _failure_cause(entry) -> tuple[bool, str]:
    """(stopped by a failed blocking check?, the first failed step's error or the run's message)."""
    failure = entry.dagster_event.event_specific_data if entry.dagster_event else None
    step_event = getattr(failure, "first_step_failure_event", None)
    error = getattr(step_event.event_specific_data, "error", None) if step_event else None
    error = error or getattr(failure, "error", None)
    if error is None:
        return False, entry.message
    step = f"step {step_event.step_key}: " if step_event and step_event.step_key else ""
    return error.cls_name == "DagsterAssetCheckFailedError", f"{step}{error.cls_name}: {error.message.strip()}"[:1500]


def _failed_runs(context: dg.SensorEvaluationContext, cursor: AlertCursor, policy: AlertPolicy,
                 deliver: _Delivery) -> None:
    """One alert per failed run, in order; a run whose alert no channel took stops the walk."""
    for _ in range(EVENTS_PER_TICK):
        result = context.instance.fetch_run_status_changes(
            dg.DagsterEventType.RUN_FAILURE, limit=1, cursor=cursor.runs_after, ascending=True
        )
        if not result.records:
            return
        record = result.records[0]
        run = context.instance.get_run_by_id(record.run_id)
        blocked_by_check, message = _failure_cause(record.event_log_entry)
        # A run stopped by a blocking check is that check's incident, alerted above.
        if run is not None and not blocked_by_check and not deliver(run_failure_alert(run, message, policy)):
            return
        cursor.runs_after = result.cursor


def evaluate_alerts(context: dg.SensorEvaluationContext, channels: AlertChannels, policy: AlertPolicy,
                    warehouse_path: str, cost_threshold_usd: float) -> tuple[AlertCursor, _Delivery]:
    """One tick: returns the new cursor and what was delivered, is waiting, went wrong."""
    cursor = AlertCursor.parse(context.cursor)
    deliver = _Delivery(channels)
    _check_incidents(context, cursor, policy, deliver)
    _cost_incidents(context, cursor, cost_threshold_usd, warehouse_path, deliver)
    _failed_runs(context, cursor, policy, deliver)
    return cursor, deliver


def build_alert_sensor(name: str = "platform_alerts", minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts the platform team's webhook / email when an asset check starts failing (or fails "
        "with other services), when an experiment's projected 30-day cost rises above the threshold, and when a "
        "run fails. Once per incident, and only once a channel took it.",
    )
    def _alerts(context: dg.SensorEvaluationContext, alert_channels: AlertChannels, alert_policy: AlertPolicy,
                warehouse: DuckDBResource, settings: AnalysisSettings):
        cursor, deliver = evaluate_alerts(context, alert_channels, alert_policy, warehouse.database,
                                          settings.cost_alert_threshold_usd)
        context.update_cursor(cursor.dump())
        for problem in deliver.problems:
            context.log.warning(problem)
        parts = [f"{len(deliver.delivered)} alert(s) sent: " + "; ".join(a.title for a in deliver.delivered)
                 if deliver.delivered else "nothing new sent"]
        if deliver.waiting:
            why = "no alert channel configured" if not alert_channels.enabled else "no channel took them"
            parts.append(f"{len(deliver.waiting)} waiting ({why}): " + "; ".join(a.title for a in deliver.waiting))
        return dg.SkipReason(". ".join(parts))

    return _alerts
