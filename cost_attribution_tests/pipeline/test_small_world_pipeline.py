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
    """Materializing the same partitions again replaces rows instead of adding them."""
    import shutil

    landing, warehouse, _, report, _ = small_world_run
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(warehouse, copy)
    tables = ["raw.spans", "raw.span_quarantine", "main.enriched_spans", "main.member_service_usage", "main.usage_deltas",
              "main.cost_projections", "main.cost_model_registry", "main.reports"]
    with duckdb.connect(str(copy), read_only=True) as conn:
        before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    _, rerun = run_world(landing, copy)
    with duckdb.connect(str(copy), read_only=True) as conn:
        after = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    assert after == before
    for a, b in zip(report["experiments"], rerun["experiments"]):
        assert a["incremental_cost_usd_30d"] == b["incremental_cost_usd_30d"]
