"""Helpers the full-pipeline tests share."""

from __future__ import annotations

import json
from pathlib import Path


def run_world(landing: Path, warehouse: Path, latest_only: bool = False,
              analyses_only: bool = False, rebuild: bool = False) -> tuple[dict, dict]:
    """run_pipeline over a world (the paths go to the resources as arguments: nothing
    in the environment changes). Returns (summary, report)."""
    from cost_attribution.cli import run_pipeline

    summary = run_pipeline(landing, warehouse, quiet=True, latest_only=latest_only, analyses_only=analyses_only,
                           rebuild=rebuild)
    return summary, json.loads((warehouse.parent / "report.json").read_text())


def warehouse_of(tables: dict) -> "duckdb.DuckDBPyConnection":  # noqa: F821
    """An in-memory warehouse holding these tables ("schema.table" -> polars frame), for
    tests of the SQL over a few hand-made rows."""
    import duckdb

    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for name, frame in tables.items():
        conn.register("_f", frame.to_arrow())
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM _f")
        conn.unregister("_f")
    return conn
