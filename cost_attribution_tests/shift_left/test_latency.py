"""Latency impact: p50/p95 from the dbt member histograms, member-clustered bootstrap."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from cost_attribution.attribution.latency import (
    bucket_of,
    compare_latency,
    histogram_quantiles,
    latency_impact,
    load_latency_histograms,
)
from cost_attribution_tests.shift_left.synthetic_world import DAY, SLOWDOWN


def test_histogram_quantiles_match_exact_quantiles():
    rng = np.random.default_rng(0)
    durations = rng.lognormal(np.log(25e6), 0.5, 50_000)
    buckets, counts = np.unique(bucket_of(durations), return_counts=True)
    for q in (0.5, 0.95):
        estimate = histogram_quantiles(counts.astype(float), buckets.astype(float), q)[0]
        assert estimate == pytest.approx(np.quantile(durations, q), rel=0.01)


def test_treatment_slowdown_is_measured_with_interval(synthetic_warehouse):
    with duckdb.connect(str(synthetic_warehouse)) as conn:  # read-write: loading brings latency_window to DAY
        histograms, members, _ = load_latency_histograms(conn, DAY)
        experiments = pl.from_arrow(conn.sql("SELECT experiment_id, control_cell FROM raw.experiments").to_arrow_table())
    impact = latency_impact(histograms, experiments, draws=300, member_counts=members)
    search = impact.filter((pl.col("experiment_id") == "search-rank") & (pl.col("service") == "search-svc")).row(0, named=True)
    for q in ("p50", "p95"):
        assert search[f"{q}_ci_low"] < SLOWDOWN - 1 < search[f"{q}_ci_high"]
        assert search[f"{q}_ci_low"] > 0.05  # clearly slower
    assert search["significant"]
    assert search["members_treatment"] == search["members_control"] == 120
    gateway = impact.filter((pl.col("experiment_id") == "aa") & (pl.col("service") == "search-svc")).row(0, named=True)
    assert gateway["p50_ci_low"] < 0 < gateway["p50_ci_high"]


def test_the_answer_does_not_depend_on_the_order_of_the_histogram_rows(synthetic_warehouse):
    """load_latency_histograms returns its rows in no particular order (sorting 1.4M rows
    cost DuckDB 0.35 s at 10M spans): the same rows in any order give the same intervals."""
    with duckdb.connect(str(synthetic_warehouse)) as conn:  # read-write: loading brings latency_window to DAY
        histograms, members, _ = load_latency_histograms(conn, DAY)
        experiments = pl.from_arrow(conn.sql("SELECT experiment_id, control_cell FROM raw.experiments").to_arrow_table())
    sorted_rows = latency_impact(histograms.sort(pl.all()), experiments, draws=200, member_counts=members)
    for seed in (1, 2):
        shuffled = histograms.sample(fraction=1.0, shuffle=True, seed=seed)
        assert latency_impact(shuffled, experiments, draws=200, member_counts=members).equals(sorted_rows)


def test_bootstrap_resamples_members_not_spans():
    """Two members per cell with many identical spans each: span resampling would give a
    near-zero interval; member resampling keeps the between-member spread."""
    rng = np.random.default_rng(3)

    def cell(prefix: str, centres: np.ndarray) -> pl.DataFrame:
        rows = []
        for i, centre in enumerate(centres):
            durations = rng.lognormal(np.log(centre), 0.02, 2_000)
            b, n = np.unique(bucket_of(durations), return_counts=True)
            rows += [{"member_id": f"{prefix}{i}", "duration_bucket": int(x), "requests": float(c), "sampled_spans": int(c)}
                     for x, c in zip(b, n)]
        return pl.DataFrame(rows)

    centres = rng.lognormal(np.log(20e6), 0.4, 30)
    result = compare_latency(cell("t", centres), cell("c", rng.permutation(centres) * 1.0), draws=300, min_members=10)
    width = result["p50_ci_high"] - result["p50_ci_low"]
    assert width > 0.1  # between-member spread (sd 0.4 over 30 members) dominates
    assert compare_latency(cell("t", centres[:5]), cell("c", centres[:5]), min_members=10) is None
