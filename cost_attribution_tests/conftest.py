"""Shared fixtures: a small simulated world run through the whole Dagster graph once
per test session (the full-pipeline tests all read its warehouse and report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
    from cost_attribution.cli import run_pipeline

    landing, truth = small_world
    warehouse = tmp_path_factory.mktemp("small_world_warehouse") / "warehouse.duckdb"
    saved = dict(os.environ)
    try:
        summary = run_pipeline(landing, warehouse, quiet=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    report = json.loads((warehouse.parent / "report.json").read_text())
    return landing, warehouse, truth, report, summary
