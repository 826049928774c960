"""One full materialization of the asset graph on a small simulated world, checked
against the simulator's ground truth and the report contract."""

from __future__ import annotations

import duckdb
import pytest

from cost_attribution.reporting.contract import contract_errors
from cost_attribution_tests.worlds import run_world

pytestmark = pytest.mark.slow


def test_every_partition_materializes(small_world_run):
    _, _, truth, _, summary = small_world_run
    assert summary["failed"] == []
    assert [d["day"] for d in summary["days"]] == sorted(d["day"] for d in summary["days"])
    assert len(summary["days"]) >= 2


def test_report_follows_the_contract(small_world_run):
    _, _, _, report, _ = small_world_run
    assert contract_errors(report) == []
    assert report["as_of"] == small_world_run[2]["last_trace_day"]


# The simulator's truth names a few reasons differently from the quarantine vocabulary.
TRUTH_REASON = {"missing_service_name_spans": "missing_service_name"}


def test_bad_records_are_quarantined_and_counted(small_world_run):
    _, warehouse, truth, report, _ = small_world_run
    quarantined = report["data_quality"]["quarantined"]
    for reason, expected in truth["bad_input"].items():
        assert quarantined.get(TRUTH_REASON.get(reason, reason), 0) == expected, reason
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        kept = conn.execute("SELECT count(*) FROM raw.spans").fetchall()[0][0]
        dropped = conn.execute("SELECT count(*) FROM raw.span_quarantine").fetchall()[0][0]
    assert kept == truth["n_spans"]
    assert dropped == sum(truth["bad_input"].values())


def test_broken_edge_is_named(small_world_run):
    _, _, truth, report, _ = small_world_run
    edges = {f"{e['caller']}->{e['callee']}" for e in report["trace_completeness"]["broken_edges"]}
    assert edges == set(truth["broken_propagation"])
    blind = {s["service"] for s in report["trace_completeness"]["services"] if s["coverage"] < 0.5}
    assert blind == {edge.split("->")[1] for edge in truth["broken_propagation"]}


def test_scaling_and_drift_match_truth(small_world_run):
    _, _, truth, report, _ = small_world_run
    services = {s["service"]: s for s in report["services"]}
    assert {s for s, v in services.items() if v["drift_detected"]} == set(truth["drifted_services"])
    for name in truth["static_services"]:
        assert services[name]["scaling"] == "static"
        assert services[name]["cost_model"] == "static"
    for name in truth["drifted_services"]:
        assert services[name]["cost_model"] == "heuristic"


def test_unattributed_cost_is_reported_not_spread(small_world_run):
    _, warehouse, _, report, _ = small_world_run
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        untagged = conn.execute("SELECT count(*) FROM raw.focus_costs WHERE app IS NULL").fetchall()[0][0]
        history_cost = conn.execute("SELECT sum(cost) FROM main.service_hourly_history").fetchall()[0][0]
        tagged_cost = conn.execute("SELECT sum(effective_cost) FROM raw.focus_costs WHERE app IS NOT NULL").fetchall()[0][0]
    assert untagged > 0
    assert report["data_quality"]["unattributed_cost_usd"] != 0
    assert history_cost == pytest.approx(tagged_cost)


def test_rerunning_is_idempotent(small_world_run, tmp_path):
    """Materializing the same partitions again (`run --rebuild`: a plain run would find
    nothing changed) replaces rows instead of adding them."""
    import shutil

    landing, warehouse, _, report, _ = small_world_run
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(warehouse, copy)
    tables = ["raw.spans", "raw.span_quarantine", "main.enriched_spans", "main.member_service_usage", "main.usage_deltas",
              "main.cost_projections", "main.cost_model_registry", "main.reports"]
    with duckdb.connect(str(copy), read_only=True) as conn:
        before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    summary, rerun = run_world(landing, copy, rebuild=True)
    assert summary["plan"]["span_days"] and summary["plan"]["why"] == "--rebuild"
    with duckdb.connect(str(copy), read_only=True) as conn:
        after = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    assert after == before
    for a, b in zip(report["experiments"], rerun["experiments"]):
        assert a["incremental_cost_usd_30d"] == b["incremental_cost_usd_30d"]


def test_a_window_too_big_for_one_dbt_build_is_built_a_few_days_at_a_time(small_world_run, tmp_path, monkeypatch):
    """With a budget that holds a day's spans at a time, the span models are built day by
    day in one step and come out as one build over the window makes them."""
    import numpy as np
    import polars as pl

    from cost_attribution.attribution import dbt_assets

    landing, warehouse, _, report, _ = small_world_run
    seen, cut = [], dbt_assets.day_batches

    def recorded(*args):
        seen.append(cut(*args))
        return seen[-1]

    monkeypatch.setattr(dbt_assets, "day_batches", recorded)
    monkeypatch.setattr(dbt_assets, "SPANS_PER_DBT_MB", 1)  # the DuckDB share in MB: under a day's spans
    summary, batched = run_world(landing, tmp_path / "warehouse.duckdb")
    assert not summary["failed"]
    assert max(len(batches) for batches in seen) > 2
    tables = ["main.member_day_usage", "main.same_day_usage", "main.member_roots", "main.member_day_latency",
              "main.usage_by_cell", "main.service_coverage", "main.trace_edges", "main.edge_usage_by_cell"]
    with duckdb.connect(str(warehouse), read_only=True) as one, \
            duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as days:
        for table in tables:
            a, b = (pl.from_arrow(c.sql(f"SELECT * FROM {table}").to_arrow_table()) for c in (one, days))
            keys = [c for c in a.columns if a[c].dtype != pl.Float64]
            a, b = a.sort(keys, nulls_last=True), b.sort(keys, nulls_last=True)
            assert a.select(keys).equals(b.select(keys)), table
            for column in set(a.columns) - set(keys):
                np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), rtol=1e-9, err_msg=table)
    for x, y in zip(report["experiments"], batched["experiments"]):
        assert x["incremental_cost_usd_30d"] == pytest.approx(y["incremental_cost_usd_30d"], rel=1e-9)
