"""A comparable picture of the warehouse: the tables concurrency or a crash could
corrupt or duplicate, reduced to sorted, rounded rows (floats to 9 significant digits,
so two runs of the same deterministic pipeline compare equal). Duplicated or missing
rows, or a half-written day, show as a difference."""

from __future__ import annotations

from pathlib import Path

import duckdb

TABLES = {
    "raw.spans": "SELECT dt, service, kind, count(*) AS spans, count(DISTINCT span_id) AS span_ids, "
                 "round(sum(1.0 / sampling_probability), 3) AS adjusted FROM raw.spans GROUP BY ALL",
    "raw.span_quarantine": "SELECT dt, reason, count(*) FROM raw.span_quarantine GROUP BY ALL",
    "main.trace_completeness": "SELECT * FROM main.trace_completeness",
    "main.usage_deltas": "SELECT * FROM main.usage_deltas",
    "main.cost_projections": "SELECT * FROM main.cost_projections",
    "main.experiment_costs": "SELECT * FROM main.experiment_costs",
}


def _normal(value):
    if isinstance(value, float):
        return None if value != value else float(f"{value:.9g}")
    return value


def warehouse_snapshot(path: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return {
            table: sorted((tuple(_normal(v) for v in row) for row in conn.execute(sql).fetchall()), key=repr)
            for table, sql in TABLES.items()
        }


def assert_same_warehouse(actual: dict[str, list[tuple]], expected: dict[str, list[tuple]]) -> None:
    assert actual.keys() == expected.keys()
    for table in expected:
        got, want = actual[table], expected[table]
        assert len(got) == len(want), f"{table}: {len(got)} rows, expected {len(want)}"
        assert got == want, f"{table} differs"
