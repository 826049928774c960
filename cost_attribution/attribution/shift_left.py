"""Shift-left dependency check: runtime dependencies a treatment would ship.

A treatment that starts calling a service its control never calls adds a runtime
dependency (an on-call surface, a capacity owner, maybe a deprecated service) that no
code review of the experiment flag sees. From per-cell caller -> callee edge usage
(dbt model `edge_usage_by_cell`) we find, per experiment cell:

* new edges: the treatment uses caller -> callee, the control never does. "Never" is
  a statement about sampled traces, so an edge only counts as new when the control,
  at the treatment's rate of members using the edge, would almost surely have shown
  it: P(no control member uses it | treatment's share) = (1 - share)^n_control < alpha.
  The share counts members (the resampling unit), not spans: one heavy member cannot
  make an edge look common.

Each finding carries the edge's volume per allocated member, so the flag says how
much traffic the new dependency would carry at 100% rollout.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import polars as pl

from cost_attribution.attribution.member_usage import started_experiments
from cost_attribution.warehouse import read_frame, table_exists

EDGE_USAGE_TABLE = "main.edge_usage_by_cell"

SHIFT_SCHEMA = {
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "control_cell": pl.Utf8,
    "caller": pl.Utf8,
    "callee": pl.Utf8,
    "treatment_members": pl.Int64,
    "control_members": pl.Int64,
    "treatment_active_members": pl.Int64,
    "control_active_members": pl.Int64,
    "treatment_requests": pl.Float64,
    "control_requests": pl.Float64,
    "treatment_requests_per_member": pl.Float64,
    "control_requests_per_member": pl.Float64,
    "p_value": pl.Float64,
    "new_edge": pl.Boolean,
}


def load_edge_usage(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> pl.DataFrame:
    """Edge usage of every started experiment from its start through `as_of`, summed
    over days. active_members is the largest daily count: a lower bound on the distinct
    members of the window (a member active on two days is not counted twice)."""
    if not table_exists(conn, EDGE_USAGE_TABLE) or not table_exists(conn, "raw.experiments"):
        return pl.DataFrame(schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "caller": pl.Utf8, "callee": pl.Utf8,
                                    "active_members": pl.Int64, "requests": pl.Float64, "sampled_spans": pl.Int64})
    return read_frame(
        conn,
        """
        SELECT u.experiment_id, u.cell, u.caller, u.callee,
               CAST(max(u.active_members) AS BIGINT) AS active_members,
               CAST(sum(u.requests) AS DOUBLE) AS requests,
               CAST(sum(u.sampled_spans) AS BIGINT) AS sampled_spans
        FROM main.edge_usage_by_cell u
        JOIN raw.experiments e USING (experiment_id)
        WHERE u.dt <= ? AND (e.start_date IS NULL OR u.dt >= e.start_date)
        GROUP BY ALL
        """,
        [as_of],
    )


def load_allocation_counts(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> pl.DataFrame:
    """Allocated members per experiment cell by the as-of day (same rule as the deltas)."""
    return read_frame(
        conn,
        """
        SELECT a.experiment_id, a.cell, CAST(count(DISTINCT a.member_id) AS BIGINT) AS members
        FROM raw.allocations a JOIN raw.experiments e USING (experiment_id)
        WHERE CAST(a.allocated_at AS DATE) <= ? AND (e.start_date IS NULL OR e.start_date <= ?)
        GROUP BY ALL
        """,
        [as_of, as_of],
    )


def edge_shifts(
    edges: pl.DataFrame,
    allocation_counts: pl.DataFrame,
    experiments: pl.DataFrame,
    alpha: float = 0.01,
) -> pl.DataFrame:
    """Per experiment, non-control cell and edge the treatment uses: both cells' usage
    and whether it is a new edge (see module docstring). `experiments` needs
    experiment_id and control_cell; `allocation_counts` experiment_id, cell, members."""
    rows: list[dict] = []
    if not edges.height or not experiments.height:
        return pl.DataFrame(schema=SHIFT_SCHEMA)
    members = {(r["experiment_id"], r["cell"]): int(r["members"]) for r in allocation_counts.iter_rows(named=True)}
    usage = {
        (r["experiment_id"], r["cell"], r["caller"], r["callee"]): r for r in edges.iter_rows(named=True)
    }
    for exp in experiments.iter_rows(named=True):
        experiment_id, control = exp["experiment_id"], exp["control_cell"]
        cells = sorted({k[1] for k in usage if k[0] == experiment_id and k[1] != control})
        for cell in cells:
            n_t, n_c = members.get((experiment_id, cell), 0), members.get((experiment_id, control), 0)
            if n_t <= 0 or n_c <= 0:
                continue
            for (e_id, c, caller, callee), r in usage.items():
                if e_id != experiment_id or c != cell:
                    continue
                other = usage.get((experiment_id, control, caller, callee))
                active_t = min(int(r["active_members"] or 0), n_t)
                active_c = int(other["active_members"] or 0) if other else 0
                requests_c = float(other["requests"] or 0.0) if other else 0.0
                share = active_t / n_t
                # Chance that no control member shows the edge if control used it as often as treatment.
                p_value = math.exp(n_c * math.log1p(-share)) if share < 1.0 else 0.0
                rows.append(
                    {
                        "experiment_id": experiment_id,
                        "cell": cell,
                        "control_cell": control,
                        "caller": caller,
                        "callee": callee,
                        "treatment_members": n_t,
                        "control_members": n_c,
                        "treatment_active_members": active_t,
                        "control_active_members": active_c,
                        "treatment_requests": float(r["requests"] or 0.0),
                        "control_requests": requests_c,
                        "treatment_requests_per_member": float(r["requests"] or 0.0) / n_t,
                        "control_requests_per_member": requests_c / n_c,
                        "p_value": p_value,
                        "new_edge": bool(active_c == 0 and requests_c == 0.0 and p_value < alpha),
                    }
                )
    return pl.DataFrame(rows, schema=SHIFT_SCHEMA).sort("experiment_id", "cell", "caller", "callee")


def load_edge_shifts(conn: duckdb.DuckDBPyConnection, as_of: dt.date, alpha: float = 0.01) -> pl.DataFrame:
    if not table_exists(conn, EDGE_USAGE_TABLE):
        return pl.DataFrame(schema=SHIFT_SCHEMA)
    experiments = started_experiments(conn, as_of).select("experiment_id", "control_cell")
    return edge_shifts(load_edge_usage(conn, as_of), load_allocation_counts(conn, as_of), experiments, alpha)


def new_dependency_flags(experiment: dict, shifts: pl.DataFrame, deprecated: set[str]) -> list[dict]:
    """new_dependency flags of one experiment cell: service = the callee, detail names
    the edge and its volume per allocated member."""
    if not shifts.height:
        return []
    found = shifts.filter(
        (pl.col("experiment_id") == experiment["experiment_id"]) & (pl.col("cell") == experiment["cell"]) & pl.col("new_edge")
    )
    flags = []
    for r in found.sort("treatment_requests_per_member", descending=True).iter_rows(named=True):
        note = " (deprecated)" if r["callee"] in deprecated else ""
        flags.append(
            {
                "kind": "new_dependency",
                "service": r["callee"],
                "detail": (
                    f"{r['cell']} adds the edge {r['caller']} -> {r['callee']}{note}: "
                    f"{r['treatment_requests_per_member']:,.2f} calls per allocated member "
                    f"({r['treatment_active_members']} of {r['treatment_members']} members use it); "
                    f"{r['control_cell']} never calls it ({r['control_members']} members, p={r['p_value']:.1g})"
                ),
            }
        )
    return flags
