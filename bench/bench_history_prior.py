"""Would an empirical-Bayes prior from past experiments' deltas make projections better?

    .venv/bin/python bench/bench_history_prior.py <warehouse.duckdb> <truth.json>

For every (as-of day, cell, service) the projection priced before the cell shipped, the
prior is the distribution of the *other* cells' deltas on the same service that day
(mean and between-cell variance by the method of moments, the cells' own sampling
variance taken out), and the posterior mean shrinks the cell's delta towards it. The
error of each rule against truth.json's delta (work delta where the projection priced
work) is reported plain and weighted by the service's true baseline cost:
raw delta, the projection's rule (0 unless significant), and the posterior mean.
"""

from __future__ import annotations

import json
import sys

import duckdb
import numpy as np
import polars as pl

Z95 = 1.959964


def main(warehouse: str, truth_path: str) -> None:
    truth = json.loads(open(truth_path).read())
    with duckdb.connect(warehouse, read_only=True) as conn:
        rows = pl.from_arrow(conn.sql("""
            SELECT p.as_of, p.experiment_id, p.cell, p.service, p.metric, p.delta_used AS delta,
                   p.delta_ci_low_used AS lo, p.delta_ci_high_used AS hi, u.significant
            FROM main.cost_projections p
            JOIN main.usage_deltas u USING (as_of, experiment_id, cell, service)
            JOIN raw.experiments e USING (experiment_id)
            WHERE e.shipped_date IS NULL OR p.as_of < e.shipped_date
        """).to_arrow_table())
    rows = rows.filter(pl.col("delta").is_finite() & pl.col("lo").is_finite() & pl.col("hi").is_finite())
    true, cost = [], []
    for r in rows.iter_rows(named=True):
        entry = truth["experiments"][f"{r['experiment_id']}:{r['cell']}"]["services"][r["service"]]
        true.append(entry["work_delta"] if r["metric"] == "work" else entry["delta"])
        cost.append(truth["baseline_cost_usd_30d"][r["service"]])
    rows = rows.with_columns(truth=pl.Series(true), weight=pl.Series(cost),
                             se=(pl.col("hi") - pl.col("lo")) / (2 * Z95))
    posterior = []
    for r in rows.iter_rows(named=True):
        others = rows.filter((pl.col("as_of") == r["as_of"]) & (pl.col("service") == r["service"])
                             & ((pl.col("experiment_id") != r["experiment_id"]) | (pl.col("cell") != r["cell"])))
        if others.height < 2:
            posterior.append(r["delta"])
            continue
        mean = float(others["delta"].mean())
        tau2 = max(float(others["delta"].var()) - float((others["se"] ** 2).mean()), 1e-8)
        w = tau2 / (tau2 + r["se"] ** 2)
        posterior.append(w * r["delta"] + (1 - w) * mean)
    rows = rows.with_columns(posterior=pl.Series(posterior),
                             projection=pl.when(pl.col("significant")).then(pl.col("delta")).otherwise(0.0))
    print(f"{rows.height} (day, cell, service) pairs before shipping, {rows['as_of'].n_unique()} days")
    print("| rule | mean abs error (pp) | cost-weighted mean abs error (pp) |")
    print("|---|---:|---:|")
    for rule in ("delta", "projection", "posterior"):
        error = (rows[rule] - rows["truth"]).abs().to_numpy()
        weighted = float(np.average(error, weights=rows["weight"].to_numpy()))
        print(f"| {rule} | {100 * error.mean():.2f} | {100 * weighted:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
