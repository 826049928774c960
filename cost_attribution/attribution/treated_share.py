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


# The inputs of both functions above, as the warehouse holds them: every member's
# activity through the as-of day (param 1), the experiments started by then (param 2)
# and the allocations made before the window's end (param 3).
_WAREHOUSE_INPUTS = """
    activity AS (
        SELECT member_id, sum(root_requests) AS a FROM main.member_activity WHERE dt <= ? GROUP BY member_id
    ),
    started AS (
        SELECT experiment_id, epoch_us(CAST(start_date AS TIMESTAMP)) AS start_us
        FROM raw.experiments WHERE start_date IS NULL OR start_date <= ?
    ),
    allocated AS (
        SELECT al.experiment_id, al.cell, al.member_id,
               greatest(epoch_us(al.allocated_at), coalesce(s.start_us, epoch_us(al.allocated_at))) AS treated_from
        FROM raw.allocations al JOIN started s USING (experiment_id)
        WHERE al.allocated_at < ?
    )
"""


def shares_in_warehouse(conn, as_of: dt.date, start: dt.datetime, end: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(`treated_share`, `share_errors`) computed by DuckDB from the warehouse: the same
    rows, without reading a member into Python (a 2M-member day held 2.4 GB as frames).
    The cumulative sums run in the same order as treated_share's (treated_from, member_id),
    so the shares are identical to the last bit on every rerun. Hours: hourly_grid(start, end);
    allocations made before `end`."""
    hours = hourly_grid(start, end)
    if len(hours) == 0:
        return pl.DataFrame(schema=SHARE_SCHEMA), pl.DataFrame(schema=SHARE_ERROR_SCHEMA)
    params = [as_of, as_of, end]
    [(total, total_sq)] = conn.execute(
        f"WITH {_WAREHOUSE_INPUTS} SELECT sum(a ORDER BY member_id), sum(a * a ORDER BY member_id) FROM activity",
        params,
    ).fetchall()
    if not total or total <= 0:
        return pl.DataFrame(schema=SHARE_SCHEMA), pl.DataFrame(schema=SHARE_ERROR_SCHEMA)
    middles = (hours.astype("datetime64[us]") + np.timedelta64(30, "m")).astype(np.int64).tolist()
    shares = pl.from_arrow(conn.sql(
        f"""
        WITH {_WAREHOUSE_INPUTS},
        cumulative AS (
            SELECT m.experiment_id, m.cell, m.treated_from,
                   sum(coalesce(a.a, 0.0)) OVER (
                       PARTITION BY m.experiment_id, m.cell ORDER BY m.treated_from, m.member_id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
                   ) AS cum
            FROM allocated m LEFT JOIN activity a USING (member_id)
        ),
        -- Members treated at the same instant count together: the sum after the last of them.
        steps AS (SELECT experiment_id, cell, treated_from, max(cum) AS cum FROM cumulative GROUP BY ALL),
        grid AS (
            SELECT c.experiment_id, c.cell, h.middle
            FROM (SELECT DISTINCT experiment_id, cell FROM allocated) c
            CROSS JOIN (SELECT unnest(CAST(? AS BIGINT[])) AS middle) h
        )
        SELECT g.experiment_id, g.cell, make_timestamp(g.middle - 1800000000) AS hour,
               coalesce(s.cum, 0.0) / ? AS share
        FROM grid g ASOF LEFT JOIN steps s
            ON s.experiment_id = g.experiment_id AND s.cell = g.cell AND s.treated_from <= g.middle
        ORDER BY g.experiment_id, g.cell, g.middle
        """,
        params=[*params, middles, total],
    ).to_arrow_table())
    errors = pl.from_arrow(conn.sql(
        f"""
        WITH {_WAREHOUSE_INPUTS},
        cells AS (
            SELECT c.experiment_id, c.cell, sum(coalesce(a.a, 0.0)) AS a_in, sum(coalesce(a.a * a.a, 0.0)) AS a2_in
            FROM (SELECT DISTINCT experiment_id, cell, member_id FROM allocated) c LEFT JOIN activity a USING (member_id)
            GROUP BY ALL
        )
        SELECT experiment_id, cell, a_in / ? AS share, a2_in FROM cells ORDER BY experiment_id, cell
        """,
        params=[*params, total],
    ).to_arrow_table())
    # Var(share) = sum over every member of (a (in_cell - share))^2 / total^2, split into
    # the cell's members and the rest (sum of a^2 over all minus the cell's).
    share, a2_in = errors["share"].to_numpy(), errors["a2_in"].to_numpy()
    variance = ((1 - share) ** 2 * a2_in + share**2 * (total_sq - a2_in)) / total**2
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_se = np.sqrt(variance) / share
    errors = errors.select("experiment_id", "cell", "share").with_columns(share_rel_se=pl.Series(rel_se))
    shares = shares.with_columns(pl.col("hour").dt.replace_time_zone("UTC"))
    return shares.cast(SHARE_SCHEMA), errors.filter(pl.col("share") > 0).cast(SHARE_ERROR_SCHEMA)


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
