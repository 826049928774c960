"""The issue's acceptance, on the embedded demo world (the simulator's default size,
with two pre-period days as `cost-attribution demo` generates it): the projected cost
of the Smarter-Prefetch-like cell is within 25% of the simulator's truth and its
interval contains the truth; the A/A experiment has no significant service; the
static service's +50% costs about $0."""

from __future__ import annotations

import pytest

from cost_attribution.reporting.contract import contract_errors
from cost_attribution_tests.worlds import run_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from cost_attribution.simulator import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("demo_world")
    truth = generate_world(root / "landing", WorldConfig(seed=7, pre_period_days=2))
    summary, report = run_world(root / "landing", root / "warehouse.duckdb")
    return truth, report, summary


def _experiment(report, name):
    experiment_id, cell = name.split(":")
    return next(e for e in report["experiments"] if e["experiment_id"] == experiment_id and e["cell"] == cell)


def test_pipeline_succeeds_with_a_contract_report(demo_run):
    _, report, summary = demo_run
    assert summary["failed"] == []
    assert contract_errors(report) == []


def test_prefetch_cost_within_25_percent_and_interval_covers_truth(demo_run):
    truth, report, _ = demo_run
    expected = truth["experiments"]["smarter-prefetch:treatment"]["incremental_cost_usd_30d"]
    got = _experiment(report, "smarter-prefetch:treatment")
    assert got["incremental_cost_usd_30d"] == pytest.approx(expected, rel=0.25)
    assert got["ci_low_usd_30d"] <= expected <= got["ci_high_usd_30d"]
    moved = {s["service"] for s in got["services"] if s["significant"]}
    assert moved == {s for s, v in truth["experiments"]["smarter-prefetch:treatment"]["services"].items() if v["delta"]}


def test_aa_experiment_has_no_significant_service(demo_run):
    _, report, _ = demo_run
    aa = _experiment(report, "aa-calibration:treatment")
    assert [s["service"] for s in aa["services"] if s["significant"]] == []
    assert aa["incremental_cost_usd_30d"] == 0


def test_static_service_costs_about_nothing(demo_run):
    truth, report, _ = demo_run
    login = _experiment(report, "login-refresh:treatment")
    auth = next(s for s in login["services"] if s["service"] in truth["static_services"])
    assert auth["significant"]
    assert abs(login["incremental_cost_usd_30d"]) < 50


def test_deprecated_and_new_dependencies_are_flagged(demo_run):
    truth, report, _ = demo_run
    badge = _experiment(report, "ratings-badge:treatment")
    assert any(f["kind"] == "deprecated_dependency" and f["service"] in truth["deprecated_services"] for f in badge["flags"])
    for name, exp in truth["experiments"].items():
        new = {s for s, v in exp["services"].items() if v["new_dependency"]}
        flagged = {f["service"] for f in _experiment(report, name)["flags"] if f["kind"] == "new_dependency"}
        assert flagged == new, name
