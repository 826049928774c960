"""Benchmark: fit cost models for N synthetic services x 28 days of hourly history.

    .venv/bin/python bench/bench_models.py [--services 1000] [--days 28]

Mix: 80% autoscaled (step-function cost), 15% static fleets, 5% with an instance-type
change 5 days before as_of (drift). Prints a markdown table: wall time of fit_all,
per-service time, peak RSS, and how the models were classified.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_attribution.estimation.models import ModelConfig, fit_all  # noqa: E402

AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def synthetic_history(n_services: int, days: int, seed: int = 0) -> pl.DataFrame:
    """Vectorised generator (one numpy pass for all services)."""
    rng = np.random.default_rng(seed)
    n_hours = days * 24
    t = np.arange(n_hours)
    capacity = rng.uniform(2e5, 1.5e6, (n_services, 1))
    base = capacity * rng.uniform(1.5, 60, (n_services, 1))
    daily = 1 + rng.uniform(0.1, 0.45, (n_services, 1)) * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6.3, (n_services, 1)))
    weekly = 1 + rng.uniform(0, 0.2, (n_services, 1)) * np.sin(2 * np.pi * t / 168)
    growth = (1 + rng.uniform(0, 0.02, (n_services, 1))) ** (t / 24)
    volume = np.round(base * daily * weekly * growth * rng.lognormal(0, 0.04, (n_services, n_hours)))
    price = rng.uniform(0.2, 3.0, (n_services, 1)) * np.ones((1, n_hours))
    capacity = capacity * np.ones((1, n_hours))
    kind = rng.choice(["autoscale", "static", "drift"], n_services, p=[0.80, 0.15, 0.05])
    change_hour = n_hours - 5 * 24
    drift = kind == "drift"
    capacity[drift, change_hour:] *= 1.5
    price[drift, change_hour:] *= 1.2
    instances = np.maximum(1, np.ceil(volume / capacity))
    static = kind == "static"
    instances[static] = np.ceil(volume[static].max(axis=1) / capacity[static, 0])[:, None]
    unit_cost = price * (1 + rng.normal(0, 0.003, price.shape))
    sku = np.where(drift[:, None] & (t[None, :] >= change_hour), "r7i.4xlarge", "r6i.4xlarge")
    hours = [AS_OF - timedelta(days=days) + timedelta(hours=int(h)) for h in t]
    return pl.DataFrame({
        "service": np.repeat([f"svc-{i:04d}" for i in range(n_services)], n_hours),
        "hour": pl.Series(hours * n_services, dtype=pl.Datetime("us", "UTC")),
        "requests": volume.ravel(),
        "cost": (instances * unit_cost).ravel(),
        "instances": instances.ravel().astype(np.int64),
        "sku": sku.ravel(),
        "unit_cost": unit_cost.ravel(),
    })


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--days", type=int, default=28)
    args = parser.parse_args()

    history = synthetic_history(args.services, args.days)
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    models = fit_all(history, AS_OF, ModelConfig(training_days=args.days))
    wall = time.perf_counter() - start
    rss_after = peak_rss_mib()

    mix = Counter((m.scaling, m.cost_model, m.kind) for m in models)
    print(f"| services | hourly rows | fit_all wall (s) | ms / service | peak RSS before fit (MiB) | peak RSS after fit (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(models)} | {history.height:,} | {wall:.1f} | {1000 * wall / len(models):.1f} | {rss_before:.0f} | {rss_after:.0f} |")
    print()
    print("| scaling | cost_model | kind | services |")
    print("|---|---|---|---:|")
    for (scaling, cost_model, kind), n in sorted(mix.items()):
        print(f"| {scaling} | {cost_model} | {kind} | {n} |")


if __name__ == "__main__":
    main()
