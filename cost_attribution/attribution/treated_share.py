"""Each experiment cell's share of production load, hour by hour.

Experiments run for weeks and traces are kept for days, so the production volume and
the bill of the last weeks already carry every running test's treated share. The
share of cell c at hour h is the activity-weighted share of members that were in c
by then:

    share_c(h) = sum of a_m over members m of c treated by h  /  sum of a_m over all members

a_m is member m's measured activity in the traces (adjusted root requests over the
trace days, allocated or not, pre-period included), and a member counts as treated
from max(allocated_at, experiment start). Hours before the first trace day use the
same members' activity with the allocations made by then: the share is carried back
by who was allocated when, weighted by how active they are.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

SHARE_SCHEMA = {"experiment_id": pl.Utf8, "cell": pl.Utf8, "hour": pl.Datetime("us", "UTC"), "share": pl.Float64}


def hourly_grid(start: dt.datetime, end: dt.datetime) -> np.ndarray:
    """Hour starts in [start, end) as datetime64[us] (UTC)."""
    first = np.datetime64(start.replace(tzinfo=None), "h")
    n = int((end - start).total_seconds() // 3600)
    return (first + np.arange(n)).astype("datetime64[us]")


def _naive_utc(frame: pl.DataFrame, column: str) -> pl.Expr:
    """A timestamp column as naive UTC, whatever zone (or none) it carries."""
    dtype = frame.schema[column]
    expr = pl.col(column).cast(pl.Datetime("us", getattr(dtype, "time_zone", None)))
    if getattr(dtype, "time_zone", None):
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.alias(column)


def treated_share(
    activity: pl.DataFrame,
    allocations: pl.DataFrame,
    experiments: pl.DataFrame,
    hours: np.ndarray,
) -> pl.DataFrame:
    """SHARE_SCHEMA rows for every experiment cell (control included) and hour.

    activity:    member_id, root_requests (summed over the trace days)
    allocations: experiment_id, member_id, cell, allocated_at (UTC timestamp)
    experiments: experiment_id, start_date (nullable)
    hours:       datetime64 hour starts; a member treated within an hour counts from
                 the hour's middle.
    """
    total = float(activity.sort("member_id")["root_requests"].sum()) if activity.height else 0.0
    if total <= 0 or allocations.height == 0 or len(hours) == 0:
        return pl.DataFrame(schema=SHARE_SCHEMA)
    starts = experiments.select("experiment_id", pl.col("start_date").cast(pl.Datetime("us")).alias("start_at"))
    members = (
        allocations.select("experiment_id", "member_id", "cell", _naive_utc(allocations, "allocated_at"))
        .join(starts, on="experiment_id", how="inner")
        .join(activity.select("member_id", "root_requests"), on="member_id", how="left")
        .with_columns(
            pl.max_horizontal(pl.col("allocated_at"), pl.col("start_at").fill_null(pl.col("allocated_at")))
            .alias("treated_from"),
            pl.col("root_requests").fill_null(0.0),
        )
        # A total order (ties broken by member): the cumulative sums, and so the shares,
        # are then identical to the last bit on every rerun.
        .sort("experiment_id", "cell", "treated_from", "member_id")
    )
    middles = hours.astype("datetime64[us]") + np.timedelta64(30, "m")
    frames = []
    for (experiment_id, cell), group in members.group_by("experiment_id", "cell", maintain_order=True):
        treated_from = group["treated_from"].to_numpy().astype("datetime64[us]")
        cumulative = np.concatenate([[0.0], np.cumsum(group["root_requests"].to_numpy())])
        share = cumulative[np.searchsorted(treated_from, middles, side="right")] / total
        frames.append(
            pl.DataFrame(
                {"experiment_id": experiment_id, "cell": cell, "hour": hours.astype("datetime64[us]"), "share": share}
            )
        )
    if not frames:  # no experiment has started by then
        return pl.DataFrame(schema=SHARE_SCHEMA)
    return pl.concat(frames).with_columns(pl.col("hour").dt.replace_time_zone("UTC")).cast(SHARE_SCHEMA)


SHARE_ERROR_SCHEMA = {"experiment_id": pl.Utf8, "cell": pl.Utf8, "share": pl.Float64, "share_rel_se": pl.Float64}


def share_errors(activity: pl.DataFrame, allocations: pl.DataFrame, experiments: pl.DataFrame) -> pl.DataFrame:
    """SHARE_ERROR_SCHEMA: each cell's share of the traced members' activity once all its
    members are in, and that share's relative standard error (a ratio of sums over members,
    delta method). The share is measured on the members the traces sample: a few hundred
    heavy members in or out of a cell move it by several percent, and production
    calibration divides by it (estimation.production_calibration)."""
    activity = activity.sort("member_id")
    a = activity["root_requests"].to_numpy().astype(float)
    total = float(a.sum())
    if total <= 0 or allocations.height == 0:
        return pl.DataFrame(schema=SHARE_ERROR_SCHEMA)
    started = allocations.join(experiments.select("experiment_id"), on="experiment_id", how="semi")
    rows = []
    for (experiment_id, cell), group in started.group_by("experiment_id", "cell", maintain_order=True):
        in_cell = activity["member_id"].is_in(group["member_id"].unique()).to_numpy()
        share = float(a[in_cell].sum()) / total
        if share <= 0:
            continue
        variance = float(np.sum((a * (in_cell - share)) ** 2)) / total**2
        rows.append({"experiment_id": experiment_id, "cell": cell, "share": share,
                     "share_rel_se": float(np.sqrt(variance)) / share})
    return pl.DataFrame(rows, schema=SHARE_ERROR_SCHEMA).sort("experiment_id", "cell")


def share_plot(shares: pl.DataFrame) -> str | None:
    """Base64 PNG: each non-empty cell's share of production load over the window."""
    from cost_attribution.plots import figure_to_base64, plt

    moving = shares.filter(pl.col("share").max().over("experiment_id", "cell") > 0)
    if moving.height == 0:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for (experiment_id, cell), group in moving.sort("hour").group_by("experiment_id", "cell", maintain_order=True):
        ax.step(group["hour"].to_list(), (group["share"] * 100).to_list(), where="post", label=f"{experiment_id}: {cell}")
    ax.set_ylabel("share of production load, %")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return figure_to_base64(fig)
