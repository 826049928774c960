"""Who calls whom, and how much of each service's traffic each caller sends.

A service's request count is the sum of its callers' calls (plus whatever reaches it
from outside the traces). When a cell changes how often a caller is asked, and each of
the caller's requests still makes the same calls, the callee moves by

    implied delta = sum over callers of share(caller -> callee) x delta(caller)

where share is the caller's part of the callee's requests in the control cell. That is
what a savings test's downstream move is (-30% calls to recs-svc, which sends a sixth
of metadata-svc's traffic: -5% there), and it is far better measured through the
caller than at the callee, where it sits inside all the callee's other traffic.
`estimation.cell_costs.shrink_effects` shrinks each service towards its implied delta.
"""

from __future__ import annotations

import polars as pl

# (experiment_id, callee) -> ((caller, share of the callee's control-cell requests), ...)
CallerShares = dict[tuple[str, str], tuple[tuple[str, float], ...]]


def caller_shares(edges: pl.DataFrame, member_usage: pl.DataFrame, experiments: pl.DataFrame) -> CallerShares:
    """Each experiment's control-cell call graph as shares of the callee's requests.

    edges: experiment_id, cell, caller, callee, requests (calls seen as CLIENT spans,
    shift_left.load_edge_usage); member_usage: experiment_id, cell, service, requests (the
    callee's measured requests, per member or already summed: usage_moments.served_requests); experiments:
    experiment_id, control_cell. A callee's requests are at least its callers' calls (a
    callee whose own spans miss members is measured from those calls)."""
    if not edges.height or not experiments.height:
        return {}
    control = experiments.select("experiment_id", pl.col("control_cell").alias("cell"))
    calls = (
        edges.join(control, on=["experiment_id", "cell"])
        .filter(pl.col("caller") != pl.col("callee"))
        .group_by("experiment_id", "caller", "callee")
        .agg(pl.col("requests").sum().alias("calls"))
    )
    served = (
        member_usage.join(control, on=["experiment_id", "cell"])
        .group_by("experiment_id", pl.col("service").alias("callee"))
        .agg(pl.col("requests").sum().alias("served"))
    )
    shares = (
        calls.join(served, on=["experiment_id", "callee"], how="left")
        .with_columns(
            total=pl.max_horizontal(pl.col("served").fill_null(0.0), pl.col("calls").sum().over("experiment_id", "callee"))
        )
        .filter(pl.col("total") > 0)
        .with_columns(share=pl.col("calls") / pl.col("total"))
        .sort("experiment_id", "callee", "caller")
    )
    out: CallerShares = {}
    for row in shares.iter_rows(named=True):
        out.setdefault((row["experiment_id"], row["callee"]), ())
        out[(row["experiment_id"], row["callee"])] += ((row["caller"], float(row["share"])),)
    return out
