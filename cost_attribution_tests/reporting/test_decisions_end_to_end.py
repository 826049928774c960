"""End to end on the small simulated world: the HTML page, new_dependency against the
simulator's truth, latency and capacity in report.json, the capacity table."""

from __future__ import annotations

import duckdb
import pytest

pytestmark = pytest.mark.slow


def test_html_report_written_beside_report_json(small_world_run):
    _, warehouse, _, report, summary = small_world_run
    assert not summary["failed"]
    latest = warehouse.parent / "report.html"
    dated = warehouse.parent / f"report-{report['as_of']}.html"
    assert latest.exists() and dated.exists()
    text = latest.read_text()
    assert text == dated.read_text()
    assert f"as of {report['as_of']}" in text
    top = max(report["experiments"], key=lambda e: e["incremental_cost_usd_30d"] or 0)
    assert f"{top['experiment_id']}:{top['cell']}" in text


def test_new_dependency_matches_truth(small_world_run):
    _, _, truth, report, _ = small_world_run
    for exp in report["experiments"]:
        key = f"{exp['experiment_id']}:{exp['cell']}"
        expected = {edge.split("->")[-1].strip() for edge in truth["new_dependency_edges"].get(key, [])}
        flagged = {f["service"] for f in exp["flags"] if f["kind"] == "new_dependency"}
        assert flagged == expected, (key, exp["flags"])
        for flag in exp["flags"]:
            if flag["kind"] == "new_dependency":
                assert "calls per allocated member" in flag["detail"] and "->" in flag["detail"]
    assert any(truth["new_dependency_edges"].values())  # the world does contain a new edge


def test_latency_and_capacity_in_report(small_world_run):
    _, warehouse, _, report, _ = small_world_run
    services = [s for e in report["experiments"] for s in e["services"]]
    with_latency = [s for s in services if "latency" in s]
    assert with_latency
    for s in with_latency:
        lat = s["latency"]
        assert lat["p50_ci_low_pct"] <= lat["p50_delta_pct"] <= lat["p50_ci_high_pct"]
        assert lat["members_control"] >= 20 and lat["members_treatment"] >= 20
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        rows = conn.execute(
            "SELECT experiment_id, cell, service, scenario, instances_needed FROM main.capacity_plan WHERE as_of = ?",
            [report["as_of"]],
        ).fetchall()
    baseline = {r[2] for r in rows if r[3] == "baseline"}
    assert {s["service"] for s in report["services"]} <= baseline
    assert all(r[4] is None or r[4] >= 1 for r in rows)
    # One rollout row per significant experiment cell x service, and the report carries it.
    rollout = {(r[0], r[1], r[2]) for r in rows if r[3] == "rollout"}
    significant = {(e["experiment_id"], e["cell"], s["service"]) for e in report["experiments"] for s in e["services"]
                   if s["significant"] and s["delta_pct"] is not None}
    assert rollout == significant
    for e in report["experiments"]:
        for s in e["services"]:
            assert ("capacity" in s) == ((e["experiment_id"], e["cell"], s["service"]) in rollout)
