"""Shift-left: a treatment that adds a caller -> callee edge is flagged new_dependency."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from cost_attribution.attribution.shift_left import edge_shifts, load_edge_shifts, new_dependency_flags
from cost_attribution.reporting.flags import experiment_flags
from cost_attribution_tests.shift_left.synthetic_world import DAY, MEMBERS, SEARCHES_PER_MEMBER


def test_edge_usage_by_cell_counts_calls_per_cell(synthetic_warehouse):
    with duckdb.connect(str(synthetic_warehouse), read_only=True) as conn:
        edges = pl.from_arrow(conn.sql(
            "SELECT * FROM main.edge_usage_by_cell WHERE experiment_id = 'search-rank' ORDER BY cell, caller, callee"
        ).to_arrow_table())
    by_key = {(r["cell"], r["caller"], r["callee"]): r for r in edges.iter_rows(named=True)}
    assert ("control", "search-svc", "profile-svc") not in by_key
    new = by_key[("treatment", "search-svc", "profile-svc")]
    assert new["active_members"] == MEMBERS // 2
    assert new["sampled_spans"] == MEMBERS // 2 * SEARCHES_PER_MEMBER
    assert new["requests"] == pytest.approx(2.0 * new["sampled_spans"])  # p = 0.5
    assert by_key[("control", "api-gateway", "search-svc")]["active_members"] == MEMBERS // 2


def test_new_edge_is_flagged_with_edge_and_volume(synthetic_warehouse):
    with duckdb.connect(str(synthetic_warehouse), read_only=True) as conn:
        shifts = load_edge_shifts(conn, DAY)
        catalog = pl.from_arrow(conn.sql("SELECT * FROM raw.services").to_arrow_table())
    new = shifts.filter(pl.col("new_edge"))
    assert new.select("experiment_id", "caller", "callee").rows() == [("search-rank", "search-svc", "profile-svc")]
    row = new.row(0, named=True)
    assert row["treatment_requests_per_member"] == pytest.approx(2.0 * SEARCHES_PER_MEMBER)
    # The A/A experiment and the shared edge api-gateway -> search-svc are not new.
    assert not shifts.filter((pl.col("experiment_id") == "aa") & pl.col("new_edge")).height

    experiment = {"experiment_id": "search-rank", "cell": "treatment", "incremental_cost_usd_30d": 0.0}
    flags = experiment_flags(
        experiment, pl.DataFrame(), catalog=catalog, coverage=pl.DataFrame(), broken_edges=pl.DataFrame(),
        srm=pl.DataFrame(), blind_spot_coverage=0.5, cost_alert_threshold_usd=1e9, edge_shifts=shifts,
    )
    dependency = [f for f in flags if f["kind"] == "new_dependency"]
    assert len(dependency) == 1 and dependency[0]["service"] == "profile-svc"
    assert "search-svc -> profile-svc" in dependency[0]["detail"]
    assert "(deprecated)" in dependency[0]["detail"]
    assert "12.00 calls per allocated member" in dependency[0]["detail"]
    assert not new_dependency_flags({"experiment_id": "aa", "cell": "treatment"}, shifts, set())


def test_a_rare_edge_absent_from_control_is_not_evidence():
    """One treatment member out of 500 on an edge: control missing it proves nothing."""
    edges = pl.DataFrame({"experiment_id": ["x"], "cell": ["treatment"], "caller": ["a"], "callee": ["b"],
                          "active_members": [1], "requests": [30.0], "sampled_spans": [3]})
    counts = pl.DataFrame({"experiment_id": ["x", "x"], "cell": ["control", "treatment"], "members": [500, 500]})
    experiments = pl.DataFrame({"experiment_id": ["x"], "control_cell": ["control"]})
    rare = edge_shifts(edges, counts, experiments)
    assert rare["new_edge"].to_list() == [False] and rare["p_value"][0] > 0.3
    common = edge_shifts(edges.with_columns(pl.lit(40).alias("active_members")), counts, experiments)
    assert common["new_edge"].to_list() == [True] and common["p_value"][0] < 1e-10
    # Once control shows the edge at all it is an existing dependency, whatever the volume.
    both = pl.concat([edges, edges.with_columns(pl.lit("control").alias("cell"), pl.lit(1.0).alias("requests"))])
    assert edge_shifts(both.with_columns(pl.lit(40).alias("active_members")), counts, experiments)["new_edge"].to_list() == [False]


def test_the_edge_shifts_asset_stores_the_day_once(synthetic_warehouse, tmp_path):
    """The asset the report assembles from: main.edge_shifts holds what load_edge_shifts
    finds for the day, and a re-run replaces the day instead of adding to it."""
    import shutil

    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from cost_attribution.attribution.shift_left_assets import EDGE_SHIFTS_TABLE, edge_shifts as edge_shifts_asset
    from cost_attribution.resources import AnalysisSettings

    warehouse = tmp_path / "w.duckdb"
    shutil.copy(synthetic_warehouse, warehouse)
    resources = {"warehouse": DuckDBResource(database=str(warehouse)), "settings": AnalysisSettings()}
    for _ in range(2):
        assert dg.materialize([edge_shifts_asset], partition_key=DAY.isoformat(), resources=resources).success
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        stored = pl.from_arrow(conn.sql(f"SELECT * EXCLUDE (as_of) FROM {EDGE_SHIFTS_TABLE} ORDER BY ALL").to_arrow_table())
        expected = load_edge_shifts(conn, DAY).sort(pl.all())
    assert stored.height == expected.height > 0
    assert stored.filter(pl.col("new_edge")).select("caller", "callee").rows() == [("search-svc", "profile-svc")]
    assert stored.equals(expected.select(stored.columns))
