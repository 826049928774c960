"""Shared fixtures: a small simulated world run through the whole Dagster graph once
per test session (the full-pipeline tests all read its warehouse and report)."""

from __future__ import annotations

import os

import pytest

from cost_attribution_tests.worlds import run_world

# In-process test runs use an ephemeral instance, never the developer's .dagster_home.
os.environ.pop("DAGSTER_HOME", None)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    from cost_attribution.simulator import generate_world, small_world_config

    landing = tmp_path_factory.mktemp("small_world") / "landing"
    truth = generate_world(landing, small_world_config(seed=3))
    return landing, truth


@pytest.fixture(scope="session")
def small_world_run(small_world, tmp_path_factory):
    """run_pipeline over the small world; returns (landing, warehouse, truth, report, summary)."""
    landing, truth = small_world
    warehouse = tmp_path_factory.mktemp("small_world_warehouse") / "warehouse.duckdb"
    summary, report = run_world(landing, warehouse)
    return landing, warehouse, truth, report, summary


@pytest.fixture(scope="session")
def small_live_world_run(tmp_path_factory):
    """run_pipeline over small_live_world_config (ramps started during the traces, three
    cells, pre-period traces); returns (root, warehouse, report): report.html beside it."""
    from cost_attribution.simulator import generate_world, small_live_world_config

    root = tmp_path_factory.mktemp("small_live_world")
    generate_world(root / "landing", small_live_world_config())
    summary, report = run_world(root / "landing", root / "warehouse.duckdb")
    assert not summary["failed"]
    return root, root / "warehouse.duckdb", report
