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


def assert_same_tables(ours: dict, reference: dict) -> None:
    """Table name -> polars frame, sorted alike: every non-float column equal, floats to 1e-12
    (sums of the same rows in another order differ in the last bits), nulls where the
    reference has them."""
    import numpy as np
    import polars as pl

    for table, frame in reference.items():
        mine = ours[table]
        numeric = [c for c in frame.columns if frame[c].dtype == pl.Float64]
        assert mine.drop(numeric).equals(frame.drop(numeric)), table
        for column in numeric:
            assert mine[column].is_null().to_list() == frame[column].is_null().to_list(), f"{table}.{column}"
            np.testing.assert_allclose(mine[column].fill_null(0).to_numpy(), frame[column].fill_null(0).to_numpy(),
                                       rtol=1e-12, err_msg=f"{table}.{column}")
