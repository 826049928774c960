"""What the UI shows is true: the daily partitions start at the landing zone's first trace
day (no "missing" days before the data), freshness is judged by its sensor and by
freshness policies, not inside the runs that back-fill old days."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from cost_attribution import definitions
from cost_attribution.freshness import DAILY_ASSETS, WHOLE_TABLE_ASSETS, WHOLE_TABLE_POLICY
from cost_attribution.partitions import DEFAULT_PARTITION_START, PARTITION_START_ENV
from cost_attribution.resources import LANDING_ENV


def _starts(defs: dg.Definitions) -> set[str]:
    graph = defs.resolve_asset_graph()
    return {str(graph.get(k).partitions_def.start.date()) for k in graph.get_all_asset_keys()
            if graph.get(k).partitions_def is not None}


@pytest.fixture
def landing(tmp_path):
    for day in ("2026-10-29", "2026-10-27", "2026-10-28"):
        (tmp_path / "traces" / f"dt={day}").mkdir(parents=True)
    return tmp_path


def test_loaded_location_starts_at_the_first_trace_day(monkeypatch, landing):
    monkeypatch.delenv(PARTITION_START_ENV, raising=False)
    monkeypatch.setenv(LANDING_ENV, str(landing))
    defs = definitions.defs()
    assert _starts(defs) == {"2026-10-27"}
    job = defs.resolve_job_def("daily_cost_attribution")
    assert job.partitions_def.get_first_partition_key() == "2026-10-27"
    assert defs.resolve_schedule_def("daily_cost_attribution_schedule").cron_schedule == "0 6 * * *"
    monkeypatch.setenv(PARTITION_START_ENV, "2026-10-01")  # a deployment's explicit start wins
    assert _starts(definitions.defs()) == {"2026-10-01"}


def test_explicit_start_and_default():
    assert _starts(definitions.build_defs(start_date=dt.date(2026, 11, 2))) == {"2026-11-02"}
    assert _starts(definitions.build_defs()) == {DEFAULT_PARTITION_START}


def test_freshness_is_judged_outside_the_daily_runs():
    defs = definitions.build_defs(start_date="2026-10-27")
    job = defs.resolve_job_def("daily_cost_attribution")
    in_job = {key.to_user_string() for key in job.asset_layer.asset_graph.asset_check_keys}
    freshness = {f"{asset}:freshness_check" for asset in DAILY_ASSETS}
    assert in_job and not (in_job & freshness)
    graph = defs.resolve_asset_graph()
    assert freshness <= {key.to_user_string() for key in graph.asset_check_keys}
    policies = {key.to_user_string(): graph.get(key).freshness_policy for key in graph.get_all_asset_keys()}
    assert {name for name, policy in policies.items() if policy == WHOLE_TABLE_POLICY} == set(WHOLE_TABLE_ASSETS)


@pytest.mark.parametrize("days_ago, stale", [(1, False), (10, True)])
def test_freshness_green_when_yesterday_is_there_red_when_stale(days_ago, stale):
    """The freshness checks as `run` evaluates them at its end (and their sensor does):
    every partition up to yesterday present -> fresh; the newest ten days old -> overdue."""
    from cost_attribution.cli import Progress, _evaluate_freshness

    newest = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days_ago)
    defs = definitions.build_defs(start_date=newest - dt.timedelta(days=3))
    with dg.DagsterInstance.ephemeral() as instance:
        for asset in DAILY_ASSETS:
            for back in range(4):  # every partition up to the newest, as a daily run leaves them
                day = (newest - dt.timedelta(days=back)).isoformat()
                instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day))
        summary = {"run_ids": []}
        _evaluate_freshness(defs, instance, Progress(quiet=True), summary)
    assert summary["stale"] == (sorted(DAILY_ASSETS) if stale else [])
