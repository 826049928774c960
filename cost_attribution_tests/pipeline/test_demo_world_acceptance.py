"""Acceptance on the embedded demo world as `cost-attribution demo` generates it
(`live_world_config(7)`: production as it really is). Experiments already run on
uneven, partial ramps; one has three cells; one makes requests heavier without making
them more numerous; one saves; one adds a dependency. Every costed cell is checked
against the simulator's truth on both baselines (vs not shipping, bill change)."""

from __future__ import annotations

import duckdb
import pytest

from cost_attribution.reporting.contract import contract_errors
from cost_attribution_tests.worlds import run_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from cost_attribution.simulator import generate_world, live_world_config

    root = tmp_path_factory.mktemp("demo_world")
    truth = generate_world(root / "landing", live_world_config(7))
    summary, report = run_world(root / "landing", root / "warehouse.duckdb")
    return truth, report, summary, root / "warehouse.duckdb"


def _experiment(report, name):
    experiment_id, cell = name.split(":")
    return next(e for e in report["experiments"] if e["experiment_id"] == experiment_id and e["cell"] == cell)


def test_pipeline_succeeds_with_a_contract_report(demo_run):
    _, report, summary, _ = demo_run
    assert summary["failed"] == []
    assert contract_errors(report) == []


def test_one_entry_per_non_control_cell(demo_run):
    truth, report, _, _ = demo_run
    assert {f"{e['experiment_id']}:{e['cell']}" for e in report["experiments"]} == set(truth["experiments"])


@pytest.mark.parametrize("baseline", [
    ("incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"),
    ("bill_change_usd_30d", "bill_ci_low_usd_30d", "bill_ci_high_usd_30d"),
])
def test_every_costed_cell_within_20_percent_and_covered_on_both_baselines(demo_run, baseline):
    truth, report, _, _ = demo_run
    point, low, high = baseline
    costed = {k: v for k, v in truth["experiments"].items() if abs(v["incremental_cost_usd_30d"]) > 1000}
    assert len(costed) >= 4
    for name, expected in costed.items():
        got = _experiment(report, name)
        assert got[point] == pytest.approx(expected[point], rel=0.20), name
        assert got[low] <= expected[point] <= got[high], name


def test_running_tests_bill_change_is_below_the_cost_vs_not_shipping(demo_run):
    truth, report, _, _ = demo_run
    prefetch = _experiment(report, "smarter-prefetch:treatment")
    # Most of the ramped test's cost is on the bill already.
    assert prefetch["bill_change_usd_30d"] < 0.8 * prefetch["incremental_cost_usd_30d"]


def test_heavier_requests_are_priced_through_work(demo_run):
    truth, report, _, _ = demo_run
    hd = _experiment(report, "hd-images:hd")
    images = next(s for s in hd["services"] if s["service"] == "images-svc")
    assert images["priced_on"] == "work" and images["significant"]
    assert images["ci_low_pct"] < 0 < images["ci_high_pct"]  # as many requests ...
    assert images["work_ci_low_pct"] > 30  # ... each heavier
    assert hd["incremental_cost_usd_30d"] > 0.5 * truth["experiments"]["hd-images:hd"]["incremental_cost_usd_30d"]


def test_aa_experiment_is_clean_and_static_service_costs_about_nothing(demo_run):
    truth, report, _, _ = demo_run
    aa = _experiment(report, "aa-calibration:treatment")
    assert [s["service"] for s in aa["services"] if s["significant"]] == []
    assert aa["incremental_cost_usd_30d"] == 0 and aa["ci_low_usd_30d"] <= 0 <= aa["ci_high_usd_30d"]
    login = _experiment(report, "login-refresh:treatment")
    auth = next(s for s in login["services"] if s["service"] in truth["static_services"])
    assert auth["significant"]
    assert abs(login["incremental_cost_usd_30d"]) < 50
    assert login["ci_low_usd_30d"] <= 0 <= login["ci_high_usd_30d"]


def test_intended_uneven_split_is_not_a_sample_ratio_mismatch(demo_run):
    _, report, _, _ = demo_run
    prefetch = _experiment(report, "smarter-prefetch:treatment")
    assert not any(f["kind"] == "sample_ratio_mismatch" for f in prefetch["flags"])


def test_treated_share_matches_the_truth(demo_run):
    truth, _, _, warehouse = demo_run
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        rows = conn.execute(
            "SELECT experiment_id, cell, avg(share) FROM main.treated_share "
            "WHERE as_of = (SELECT max(as_of) FROM main.treated_share) AND hour >= "
            "(SELECT max(hour) - INTERVAL 24 HOUR FROM main.treated_share) GROUP BY ALL"
        ).fetchall()
    measured = {(e, c): share for e, c, share in rows}
    for experiment_id, cells in truth["treated_share"].items():
        for cell, share in cells.items():
            assert measured[(experiment_id, cell)] == pytest.approx(share["last_day"], abs=0.05), (experiment_id, cell)


def test_deprecated_and_new_dependencies_are_flagged(demo_run):
    truth, report, _, _ = demo_run
    badge = _experiment(report, "ratings-badge:badge")
    assert any(f["kind"] == "deprecated_dependency" and f["service"] in truth["deprecated_services"] for f in badge["flags"])
    for name, exp in truth["experiments"].items():
        new = {s for s, v in exp["services"].items() if v["new_dependency"]}
        flagged = {f["service"] for f in _experiment(report, name)["flags"] if f["kind"] == "new_dependency"}
        assert flagged == new, name


def test_demo_prints_one_line_per_cell_with_truth(demo_run):
    from cost_attribution.reporting.text import render_summary

    truth, report, _, _ = demo_run
    lines = render_summary(report, truth).splitlines()
    assert len(lines) == 3 + len(report["experiments"]) <= 30  # with ~6 progress lines: make demo stays under ~40
    assert all(f"{e['experiment_id']}:{e['cell']}" in "\n".join(lines) for e in report["experiments"])
