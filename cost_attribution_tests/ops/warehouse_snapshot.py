"""A comparable picture of the warehouse: the tables concurrency or a crash could
corrupt or duplicate, reduced to sorted, rounded rows (floats to 9 significant digits,
so two runs of the same deterministic pipeline compare equal)."""

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
    snapshot = {}
    with duckdb.connect(str(path), read_only=True) as conn:
        for table, sql in TABLES.items():
            rows = conn.execute(sql).fetchall()
            snapshot[table] = sorted((tuple(_normal(v) for v in row) for row in rows), key=repr)
    return snapshot
