"""A comparable picture of the warehouse: the tables concurrency or a crash could
corrupt or duplicate, reduced to sorted, rounded rows (floats to 9 significant digits,
so two runs of the same deterministic pipeline compare equal).

The experiment-level 95% interval comes from correlated Monte Carlo draws whose
assignment to services is not order-stable across runs today (reported to the lead):
those two columns are compared within 10% (3% run-to-run spread observed), everything else exactly. Duplicated or
missing rows, or a half-written day, still show as a difference in rows and point
estimates."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb

TABLES = {
    "raw.spans": "SELECT dt, service, kind, count(*) AS spans, count(DISTINCT span_id) AS span_ids, "
                 "round(sum(1.0 / sampling_probability), 3) AS adjusted FROM raw.spans GROUP BY ALL",
    "raw.span_quarantine": "SELECT dt, reason, count(*) FROM raw.span_quarantine GROUP BY ALL",
    "main.trace_completeness": "SELECT * FROM main.trace_completeness",
    "main.usage_deltas": "SELECT * FROM main.usage_deltas",
    "main.cost_projections": "SELECT * FROM main.cost_projections",
    # Monte Carlo columns last (see MONTE_CARLO_COLUMNS).
    "main.experiment_costs": "SELECT * EXCLUDE (ci_low_usd_30d, ci_high_usd_30d), ci_low_usd_30d, ci_high_usd_30d "
                             "FROM main.experiment_costs",
}
MONTE_CARLO_COLUMNS = {"main.experiment_costs": 2}
MONTE_CARLO_REL_TOL = 0.10


def _normal(value):
    if isinstance(value, float):
        return None if value != value else float(f"{value:.9g}")
    return value


def warehouse_snapshot(path: Path) -> dict[str, list[tuple]]:
    snapshot = {}
    with duckdb.connect(str(path), read_only=True) as conn:
        for table, sql in TABLES.items():
            rows = [tuple(_normal(v) for v in row) for row in conn.execute(sql).fetchall()]
            tail = MONTE_CARLO_COLUMNS.get(table, 0)
            snapshot[table] = sorted(rows, key=lambda r: repr(r[: len(r) - tail]))
    return snapshot


def assert_same_warehouse(actual: dict[str, list[tuple]], expected: dict[str, list[tuple]]) -> None:
    assert actual.keys() == expected.keys()
    for table in expected:
        tail = MONTE_CARLO_COLUMNS.get(table, 0)
        got, want = actual[table], expected[table]
        assert len(got) == len(want), f"{table}: {len(got)} rows, expected {len(want)}"
        exact_got = [r[: len(r) - tail] for r in got]
        exact_want = [r[: len(r) - tail] for r in want]
        assert exact_got == exact_want, f"{table} differs"
        for g, w in zip(got, want):
            for a, b in zip(g[len(g) - tail:], w[len(w) - tail:]):
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=MONTE_CARLO_REL_TOL, abs_tol=1.0), (
                    f"{table}: interval {a} vs {b} in {g}"
                )
