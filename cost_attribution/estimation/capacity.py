"""Capacity plan: peak requests/s and the instances a service needs, today and at
100% rollout of each significant experiment cell that moves it.

Peak = the busiest hour of the projection window (the same trailing days the cost
projection prices). Instances needed = ceil(peak requests/s / requests per instance-s),
where requests per instance is what the fleet actually served at its busiest hour on
today's instance type (hours before the latest instance-type change are ignored: a
different SKU serves a different load). For a statically provisioned fleet this
observed throughput is a floor of its true capacity, so the plan is conservative
(it may ask for instances the fleet does not strictly need), never optimistic.
"""

from __future__ import annotations

import math

import polars as pl

CAPACITY_SCHEMA = {
    "service": pl.Utf8,
    "scenario": pl.Utf8,  # "baseline" | "rollout"
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "delta": pl.Float64,
    "peak_hour": pl.Datetime("us", "UTC"),
    "peak_requests_per_s": pl.Float64,
    "peak_requests_per_s_low": pl.Float64,
    "peak_requests_per_s_high": pl.Float64,
    "requests_per_instance_s": pl.Float64,
    "sku": pl.Utf8,
    "observed_instances_at_peak": pl.Int64,
    "instances_needed": pl.Int64,
    "instances_needed_low": pl.Int64,
    "instances_needed_high": pl.Int64,
    "additional_instances": pl.Int64,
}


def _instances(rps: float, per_instance: float | None) -> int | None:
    if per_instance is None or not per_instance > 0 or not math.isfinite(rps):
        return None
    return max(1, math.ceil(rps / per_instance - 1e-9))


def service_throughput(history: pl.DataFrame) -> dict | None:
    """Peak of one service's window and its observed requests per instance-second at the
    busiest hour on the current instance type. history: hour, requests, instances, sku."""
    usable = history.filter(pl.col("requests").is_not_null() & (pl.col("requests") >= 0)).sort("hour")
    if not usable.height:
        return None
    peak = usable.row(int(usable["requests"].arg_max()), named=True)
    per_instance, sku = None, None
    billed = usable.filter(pl.col("instances").is_not_null() & (pl.col("instances") > 0))
    if billed.height:
        skus = billed["sku"].to_list()
        sku = skus[-1]
        start = len(skus)
        while start > 0 and skus[start - 1] == sku:
            start -= 1
        current = billed.slice(start)
        busiest = current.row(int(current["requests"].arg_max()), named=True)
        per_instance = busiest["requests"] / busiest["instances"] / 3600.0
    return {
        "peak_hour": peak["hour"],
        "peak_requests_per_s": peak["requests"] / 3600.0,
        "observed_instances_at_peak": peak["instances"],
        "requests_per_instance_s": per_instance,
        "sku": sku,
    }


def capacity_plan(history: pl.DataFrame, deltas: pl.DataFrame) -> pl.DataFrame:
    """history: service, hour, requests, instances, sku (the projection window);
    deltas: experiment_id, cell, service, delta, ci_low, ci_high, significant."""
    rows = []
    moved = deltas.filter(pl.col("significant") & pl.col("delta").is_not_null()) if deltas.height else deltas
    for (service,), group in history.group_by("service", maintain_order=True):
        if service is None:
            continue
        stats = service_throughput(group)
        if stats is None:
            continue
        per_instance, peak = stats["requests_per_instance_s"], stats["peak_requests_per_s"]
        base = _instances(peak, per_instance)
        common = {"service": service, "peak_hour": stats["peak_hour"], "requests_per_instance_s": per_instance,
                  "sku": stats["sku"], "observed_instances_at_peak": stats["observed_instances_at_peak"]}
        rows.append({**common, "scenario": "baseline", "experiment_id": None, "cell": None, "delta": 0.0,
                     "peak_requests_per_s": peak, "peak_requests_per_s_low": peak, "peak_requests_per_s_high": peak,
                     "instances_needed": base, "instances_needed_low": base, "instances_needed_high": base,
                     "additional_instances": 0 if base is not None else None})
        for r in moved.filter(pl.col("service") == service).sort("experiment_id", "cell").iter_rows(named=True) if moved.height else []:
            factors = [max(1.0 + r[k], 0.0) if r[k] is not None else None for k in ("delta", "ci_low", "ci_high")]
            rates = [peak * f if f is not None else float("nan") for f in factors]
            needed = [_instances(x, per_instance) for x in rates]
            rows.append({**common, "scenario": "rollout", "experiment_id": r["experiment_id"], "cell": r["cell"],
                         "delta": r["delta"], "peak_requests_per_s": rates[0], "peak_requests_per_s_low": rates[1],
                         "peak_requests_per_s_high": rates[2], "instances_needed": needed[0],
                         "instances_needed_low": needed[1], "instances_needed_high": needed[2],
                         "additional_instances": (needed[0] - base) if needed[0] is not None and base is not None else None})
    return pl.DataFrame(rows, schema=CAPACITY_SCHEMA)
