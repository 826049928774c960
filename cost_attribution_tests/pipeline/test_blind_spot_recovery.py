"""A treatment that moves a service behind a blind spot: the callee's own SERVER spans
never reach a member (its caller drops trace context), yet its per-member volume is
recovered from the caller's CLIENT spans inside attributed traces, so the delta and
the dollars are still right, and the experiment carries a low_trace_coverage flag."""

from __future__ import annotations

import duckdb
import pytest

from cost_attribution.simulator import ExperimentSpec, WorldConfig, generate_world
from cost_attribution_tests.worlds import run_world

pytestmark = pytest.mark.slow

EXPERIMENT = "image-prefetch:treatment"


@pytest.fixture(scope="module")
def blind_world_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("blind_world")
    config = WorldConfig(
        seed=21,
        n_members=3000,
        trace_days=2,
        target_spans_per_day=20_000,
        experiments=(
            ExperimentSpec(
                "image-prefetch",
                "Prefetch images",
                edge_multipliers=(("images-svc", "cdn-origin", 1.6),),
                allocation_fraction=1.0,
            ),
            ExperimentSpec("aa-calibration", "A/A", allocation_fraction=1.0),
        ),
        drift=None,
    )
    truth = generate_world(root / "landing", config)
    summary, report = run_world(root / "landing", root / "warehouse.duckdb")
    return truth, report, root / "warehouse.duckdb", summary


def test_the_blind_callee_has_no_attributable_server_spans(blind_world_run):
    _, report, warehouse, summary = blind_world_run
    assert summary["failed"] == []
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        server_rows = conn.execute(
            "SELECT count(*) FROM main.member_service_usage WHERE service = 'cdn-origin' AND source = 'server'"
        ).fetchall()[0][0]
    assert server_rows == 0
    assert {"caller": "images-svc", "callee": "cdn-origin"} in report["trace_completeness"]["broken_edges"]


def test_delta_and_cost_are_recovered_from_caller_client_spans(blind_world_run):
    truth, report, _, _ = blind_world_run
    experiment = next(e for e in report["experiments"] if f"{e['experiment_id']}:{e['cell']}" == EXPERIMENT)
    cdn = next(s for s in experiment["services"] if s["service"] == "cdn-origin")
    true_delta = truth["experiments"][EXPERIMENT]["services"]["cdn-origin"]["delta"]
    assert cdn["measured_from"] == "client"
    assert cdn["significant"]
    assert cdn["ci_low_pct"] <= 100 * true_delta <= cdn["ci_high_pct"]
    true_cost = truth["experiments"][EXPERIMENT]["services"]["cdn-origin"]["incremental_cost_usd_30d"]
    assert cdn["ci_low_usd_30d"] <= true_cost <= cdn["ci_high_usd_30d"]
    assert cdn["incremental_cost_usd_30d"] == pytest.approx(true_cost, rel=0.35)
    flags = [f for f in experiment["flags"] if f["kind"] == "low_trace_coverage"]
    assert [f["service"] for f in flags] == ["cdn-origin"]
    assert "recovered from callers' CLIENT spans" in flags[0]["detail"]
