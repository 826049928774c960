"""Latency impact of a cell: treatment vs control p50/p95 of SERVER-span duration.

Input is the dbt model `member_service_latency`: per member, cell and service a
histogram of SERVER-span durations on a fixed log grid (bucket b covers
[exp(b/25), exp((b+1)/25)) ns, 4.1% wide), weighted by adjusted count (1/p), so the
quantiles are those of the request population, not of the sampled spans.

Interval: member-clustered bootstrap. Spans of one member are correlated (same
device, same region, same content), so resampling spans would understate the
uncertainty; each draw resamples *members* with replacement within each cell
(multinomial counts), rebuilds both cells' histograms as count-weighted sums of the
member histograms (one matrix product), and takes the relative change of each
quantile. The 95% interval is the percentile interval of those draws.

At scale (hundreds of thousands of members) the warehouse first sums members into
MEMBER_GROUPS random groups per cell (hash of the member id): a group is a union of
whole members, so resampling groups is still a cluster bootstrap (the between-member
variance is kept; only its estimate uses 256 clusters instead of all of them), and the
cost no longer grows with the number of members. With fewer members than groups this
is the plain member bootstrap.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import duckdb
import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from cost_attribution.attribution.latency_window import LATENCY_HISTOGRAMS, LATENCY_MEMBERS, refresh_latency
from cost_attribution.warehouse import qualified, read_frame, table_exists

BUCKETS_PER_E = 25.0  # must match dbt_project/macros/member_spans.sql
QUANTILES = (0.5, 0.95)
MEMBER_GROUPS = 256
LATENCY_TABLE = "main.member_service_latency"

LATENCY_SCHEMA = {
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "control_cell": pl.Utf8,
    "service": pl.Utf8,
    "members_control": pl.Int64,
    "members_treatment": pl.Int64,
    "sampled_spans_control": pl.Int64,
    "sampled_spans_treatment": pl.Int64,
    "p50_control_ms": pl.Float64,
    "p50_treatment_ms": pl.Float64,
    "p50_delta": pl.Float64,
    "p50_ci_low": pl.Float64,
    "p50_ci_high": pl.Float64,
    "p95_control_ms": pl.Float64,
    "p95_treatment_ms": pl.Float64,
    "p95_delta": pl.Float64,
    "p95_ci_low": pl.Float64,
    "p95_ci_high": pl.Float64,
    "significant": pl.Boolean,
}


def bucket_of(duration_nano: np.ndarray) -> np.ndarray:
    """The SQL model's bucket, for tests and for callers with raw durations."""
    return np.floor(BUCKETS_PER_E * np.log(np.asarray(duration_nano, dtype=float))).astype(np.int64)


def histogram_quantiles(hist: np.ndarray, buckets: np.ndarray, q: float) -> np.ndarray:
    """q-quantile (ns) of each row of `hist` (draws x buckets, weights per bucket;
    `buckets` ascending), interpolated log-linearly inside the bucket. NaN for empty rows."""
    hist = np.atleast_2d(hist)
    cdf = np.cumsum(hist, axis=1)
    total = cdf[:, -1]
    target = q * total
    idx = np.minimum((cdf < target[:, None]).sum(axis=1), hist.shape[1] - 1)
    rows = np.arange(hist.shape[0])
    before = np.where(idx > 0, cdf[rows, np.maximum(idx - 1, 0)], 0.0)
    mass = hist[rows, idx]
    frac = np.clip(np.where(mass > 0, (target - before) / np.where(mass > 0, mass, 1.0), 0.5), 0.0, 1.0)
    value = np.exp((buckets[idx] + frac) / BUCKETS_PER_E)
    return np.where(total > 0, value, np.nan)


def _member_matrix(frame: pl.DataFrame, buckets: np.ndarray, unit: str) -> tuple[np.ndarray, int]:
    """units (members or member groups) x buckets matrix of adjusted requests, and the sampled-span count."""
    rows = frame[unit].rank("dense").cast(pl.Int64).to_numpy() - 1
    b_index = np.searchsorted(buckets, frame["duration_bucket"].to_numpy())
    matrix = np.zeros((int(rows.max()) + 1, len(buckets)))
    np.add.at(matrix, (rows, b_index), frame["requests"].to_numpy().astype(float))
    return matrix, int(frame["sampled_spans"].sum()) if "sampled_spans" in frame.columns else frame.height


def _bootstrap_hist(matrix: np.ndarray, draws: int, rng: np.random.Generator, chunk: int = 64) -> np.ndarray:
    """draws x buckets: histograms of member resamples (multinomial counts per draw)."""
    m = matrix.shape[0]
    out = np.empty((draws, matrix.shape[1]))
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        # n resamples of m members with replacement, as per-member counts (exact multinomial).
        picks = rng.integers(0, m, size=(n, m)) + (np.arange(n) * m)[:, None]
        counts = np.bincount(picks.ravel(), minlength=n * m).reshape(n, m).astype(float)
        out[start:start + n] = counts @ matrix
    return out


def compare_latency(
    treatment: pl.DataFrame,
    control: pl.DataFrame,
    draws: int = 400,
    seed: int = 0,
    min_members: int = 20,
    unit: str = "member_id",
    members: tuple[int, int] | None = None,
) -> dict | None:
    """Relative change of p50/p95 (treatment / control - 1) with member-bootstrap
    intervals. Frames: <unit>, duration_bucket, requests[, sampled_spans], where the
    resampled unit is a member or a group of whole members. `members` = (treatment,
    control) member counts when the unit is a group. None when a cell has fewer than
    `min_members` members with spans."""
    n_t, n_c = members or (treatment[unit].n_unique(), control[unit].n_unique())
    if n_t < min_members or n_c < min_members:
        return None
    buckets = np.unique(np.concatenate([treatment["duration_bucket"].to_numpy(), control["duration_bucket"].to_numpy()]))
    m_t, spans_t = _member_matrix(treatment, buckets, unit)
    m_c, spans_c = _member_matrix(control, buckets, unit)
    rng = np.random.default_rng(seed)
    boot_t = _bootstrap_hist(m_t, draws, rng)
    boot_c = _bootstrap_hist(m_c, draws, rng)
    result = {
        "members_treatment": int(n_t),
        "members_control": int(n_c),
        "sampled_spans_treatment": spans_t,
        "sampled_spans_control": spans_c,
    }
    significant = False
    for q in QUANTILES:
        name = f"p{round(q * 100)}"
        q_t = float(histogram_quantiles(m_t.sum(axis=0), buckets, q)[0])
        q_c = float(histogram_quantiles(m_c.sum(axis=0), buckets, q)[0])
        ratios = histogram_quantiles(boot_t, buckets, q) / histogram_quantiles(boot_c, buckets, q) - 1.0
        ratios = ratios[np.isfinite(ratios)]
        low, high = (np.quantile(ratios, [0.025, 0.975]) if ratios.size else (np.nan, np.nan))
        result.update(
            {
                f"{name}_control_ms": q_c / 1e6,
                f"{name}_treatment_ms": q_t / 1e6,
                f"{name}_delta": q_t / q_c - 1.0,
                f"{name}_ci_low": float(low),
                f"{name}_ci_high": float(high),
            }
        )
        significant = significant or bool(low > 0 or high < 0)
    result["significant"] = significant
    return result


def latency_impact(histograms: pl.DataFrame, experiments: pl.DataFrame, draws: int = 400, seed: int = 0,
                   min_members: int = 20, member_counts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every experiment x non-control cell x service. `histograms`: experiment_id, cell,
    service, member_id or member_group, duration_bucket, requests, sampled_spans (summed
    over the window); `experiments`: experiment_id, control_cell; `member_counts`
    (experiment_id, cell, service, members) is needed when the unit is member_group."""
    rows = []
    unit = "member_group" if "member_group" in histograms.columns else "member_id"
    counts = {}
    if member_counts is not None and member_counts.height:
        counts = {(r["experiment_id"], r["cell"], r["service"]): int(r["members"]) for r in member_counts.iter_rows(named=True)}
    if histograms.height and experiments.height:
        with threadpool_limits(1):  # small products: BLAS threads only contend (12x slower on a busy 2-core box)
            rows = _all_pairs(histograms, experiments, draws, seed, min_members, unit, counts)
    return pl.DataFrame(rows, schema=LATENCY_SCHEMA).sort("experiment_id", "cell", "service")


def _all_pairs(histograms, experiments, draws, seed, min_members, unit, counts) -> list[dict]:
    rows = []
    controls = dict(zip(experiments["experiment_id"].to_list(), experiments["control_cell"].to_list()))
    for (experiment_id, service), group in histograms.group_by("experiment_id", "service", maintain_order=True):
        control_cell = controls.get(experiment_id)
        if control_cell is None:
            continue
        control = group.filter(pl.col("cell") == control_cell)
        for cell in sorted(set(group["cell"].to_list()) - {control_cell}):
            members = None
            if unit == "member_group":
                members = (counts.get((experiment_id, cell, service), 0), counts.get((experiment_id, control_cell, service), 0))
            stats = compare_latency(group.filter(pl.col("cell") == cell), control, draws, seed, min_members,
                                    unit=unit, members=members)
            if stats is not None:
                rows.append({"experiment_id": experiment_id, "cell": cell, "control_cell": control_cell,
                             "service": service, **stats})
    return rows


class LatencyHistograms(NamedTuple):
    histograms: pl.DataFrame  # per experiment, cell, service, member group and duration bucket
    members: pl.DataFrame  # experiment_id, cell, service, members
    window: str = "none"  # how latency_window brought the sums to the day (refresh), "none": no latency rows


def load_latency_histograms(
    conn: duckdb.DuckDBPyConnection, as_of: dt.date, groups: int = MEMBER_GROUPS
) -> LatencyHistograms:
    """The histograms per member group and the members per experiment cell x service of
    every started experiment from its start through `as_of`, from the sums latency_window
    carries from day to day (brought to `as_of` first)."""
    if not table_exists(conn, LATENCY_TABLE):
        return LatencyHistograms(pl.DataFrame(), pl.DataFrame())
    window = refresh_latency(conn, as_of, groups)
    # in no particular order: latency_impact gives the same answer for any order of these rows
    histograms = read_frame(conn, f"SELECT * FROM {qualified(LATENCY_HISTOGRAMS)}")
    members = read_frame(
        conn,
        f"SELECT experiment_id, cell, service, CAST(count(*) AS BIGINT) AS members FROM {qualified(LATENCY_MEMBERS)} "
        "GROUP BY ALL ORDER BY ALL",
    )
    return LatencyHistograms(histograms, members, window)
