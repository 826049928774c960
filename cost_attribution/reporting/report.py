"""Assembles the contract's report.json for one as-of day from the warehouse tables."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import duckdb
import polars as pl

from cost_attribution.checks.trace_completeness import AS_OF_TABLES, overall_coverage
from cost_attribution.estimation.outcomes import calibration
from cost_attribution.estimation.projection import HORIZON_DAYS
from cost_attribution.partitions import trailing_window
from cost_attribution.reporting import decision
from cost_attribution.reporting.flags import experiment_flags
from cost_attribution.warehouse import read_frame, table_exists


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: unknown numbers are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100.0, 4)


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _frame(conn, table: str, sql: str, params: list) -> pl.DataFrame:
    if not table_exists(conn, table):
        return pl.DataFrame()
    return read_frame(conn, sql, params)


def quarantine_counts(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> dict[str, int]:
    counts: dict[str, int] = {}
    spans = _frame(conn, "raw.span_quarantine", "SELECT reason, count(*) AS n FROM raw.span_quarantine WHERE dt <= ? GROUP BY reason", [as_of])
    inputs = _frame(conn, "raw.input_quarantine", "SELECT reason, count(*) AS n FROM raw.input_quarantine GROUP BY reason", [])
    for frame in (spans, inputs):
        for reason, n in frame.iter_rows() if frame.height else []:
            counts[reason] = counts.get(reason, 0) + int(n)
    return dict(sorted(counts.items()))


def unattributed_cost(conn, as_of: dt.date, days: int) -> float:
    frame = _frame(
        conn,
        "main.unattributed_costs",
        "SELECT coalesce(sum(effective_cost), 0) AS usd FROM main.unattributed_costs WHERE day > ? AND day <= ?",
        [as_of - dt.timedelta(days=days), as_of],
    )
    return float(frame["usd"][0]) if frame.height else 0.0


def low_coverage_days(days: pl.DataFrame, min_coverage: float) -> list[dict]:
    """Trace days whose share of adjusted SERVER work reaching a member is under the gate."""
    if not days.height:
        return []
    below = days.filter(pl.col("coverage") < min_coverage).sort("dt")
    return [{"day": r["dt"].isoformat(), "coverage": r["coverage"]} for r in below.iter_rows(named=True)]


def completeness_section(conn, as_of: dt.date, min_coverage: float) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    """The contract's trace_completeness over the experiments' window, as the
    trace_completeness_as_of asset stored it; with the services and broken edges frames
    the flags read."""
    frames = {name: _frame(conn, table, f"SELECT * EXCLUDE (as_of) FROM {table} WHERE as_of = ?", [as_of])
              for name, table in AS_OF_TABLES.items()}
    services, broken, reconciliation = frames["services"], frames["broken_edges"], frames["reconciliation"]
    if not services.height:
        return {"overall": None, "services": [], "broken_edges": []}, pl.DataFrame(), pl.DataFrame()
    section = {
        "overall": overall_coverage(services),
        "services": [{"service": r["service"], "coverage": r["coverage"]} for r in services.iter_rows(named=True)],
        "broken_edges": [{"caller": r["caller"], "callee": r["callee"]} for r in broken.iter_rows(named=True)],
        # Extra: days under the coverage gate, whose estimates run on what was attributable.
        "days_below_gate": low_coverage_days(frames["days"], min_coverage),
        "gate": min_coverage,
        # Extra: sampling-corrected traced volume against the metrics' full counts.
        "volume_reconciliation": [
            {
                "service": r["service"],
                "traced_adjusted_requests": r["traced_requests"],
                "metrics_requests": r["metrics_requests"],
                "deviation_from_common_ratio": r["deviation"],
            }
            for r in reconciliation.iter_rows(named=True)
        ],
    }
    return section, services, broken


def _latency_entry(row: dict | None) -> dict | None:
    """Extra key `latency` of a report service: p50/p95 change vs control (percent, 95% CI)."""
    if row is None:
        return None
    entry = {}
    for q in ("p50", "p95"):
        entry[f"{q}_control_ms"] = None if row[f"{q}_control_ms"] is None else round(row[f"{q}_control_ms"], 3)
        entry[f"{q}_treatment_ms"] = None if row[f"{q}_treatment_ms"] is None else round(row[f"{q}_treatment_ms"], 3)
        entry[f"{q}_delta_pct"] = _pct(row[f"{q}_delta"])
        entry[f"{q}_ci_low_pct"] = _pct(row[f"{q}_ci_low"])
        entry[f"{q}_ci_high_pct"] = _pct(row[f"{q}_ci_high"])
    entry["significant"] = bool(row["significant"])
    entry["members_control"], entry["members_treatment"] = row["members_control"], row["members_treatment"]
    return entry


def _capacity_entry(row: dict | None) -> dict | None:
    """Extra key `capacity` of a report service: peak requests/s and instances, today vs at 100% rollout."""
    if row is None:
        return None
    return {
        "peak_requests_per_s": None if row["peak_requests_per_s"] is None else round(row["peak_requests_per_s"], 2),
        "instances_needed": row["instances_needed"],
        "instances_needed_low": row["instances_needed_low"],
        "instances_needed_high": row["instances_needed_high"],
        "additional_instances": row["additional_instances"],
    }


def _index(frame: pl.DataFrame, keys: tuple[str, ...]) -> dict:
    return {tuple(r[k] for k in keys): r for r in frame.iter_rows(named=True)} if frame.height else {}


def total_bill_30d(conn, as_of: dt.date, days: int) -> float | None:
    """The whole modelled bill over the projection window, scaled to 30 days."""
    start, end = trailing_window(as_of, days)
    frame = _frame(conn, "main.service_hourly_history",
                   "SELECT sum(cost) AS usd, count(DISTINCT CAST(hour AS DATE)) AS days FROM main.service_hourly_history "
                   "WHERE hour >= ? AND hour < ?", [start, end])
    if not frame.height or frame["usd"][0] is None or not frame["days"][0]:
        return None
    return float(frame["usd"][0]) * HORIZON_DAYS / float(frame["days"][0])


def _registry_peaks(registry: pl.DataFrame) -> pl.DataFrame:
    """service, scaling, capacity_requests_per_hour, observed_peak (the top of the model's
    fitted range), driver (the load unit both are in: requests or cpu_seconds)."""
    if not registry.height:
        return registry
    models = [json.loads(m) if m else {} for m in registry["model_json"].to_list()]
    return registry.select("service", "scaling", "capacity_requests_per_hour").with_columns(
        pl.Series("observed_peak", [m.get("params", {}).get("observed_peak_requests_per_hour") for m in models],
                  dtype=pl.Float64),
        pl.Series("driver", [(m.get("features") or ["requests"])[0] for m in models], dtype=pl.Utf8))


def decision_entry(exp: dict, *, projections: pl.DataFrame, registry_peaks: pl.DataFrame, capacity: pl.DataFrame,
                   total_bill: float | None, owners: dict, meta: dict, history: pl.DataFrame,
                   values_per_point: dict[str, float]) -> dict:
    """Extra key `decision` of a report experiment: what a PM or finance partner reads first."""
    cost, low, high = exp["incremental_cost_usd_30d"], exp["ci_low_usd_30d"], exp["ci_high_usd_30d"]
    services = exp["services"]
    own = projections.filter((pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"])) \
        if projections.height else projections
    usd, pct, service = decision.detectable_size(services)
    extra_flags = decision.peak_flags(services, registry_peaks, own)
    headroom = decision.static_headroom(services, registry_peaks, own, capacity)
    for h in headroom:
        if not any(f["kind"] == "capacity_tipping_point" and f["service"] == h["service"] for f in exp["flags"]):
            extra_flags.append({"kind": "static_headroom", "service": h["service"], "detail": h["explanation"]})
    return {
        "kind": meta.get("kind") or "ab",
        "owner": meta.get("owner"),
        "incremental_cost_usd_year": decision.annualize(cost),
        "ci_low_usd_year": decision.annualize(low),
        "ci_high_usd_year": decision.annualize(high),
        "bill_change_usd_year": decision.annualize(exp.get("bill_change_usd_30d")),
        "bill_ci_low_usd_year": decision.annualize(exp.get("bill_ci_low_usd_30d")),
        "bill_ci_high_usd_year": decision.annualize(exp.get("bill_ci_high_usd_30d")),
        "cost_reading": decision.reading(cost, low, high, what="Cost versus not shipping", detectable_usd=usd,
                                         detectable_pct=pct, detectable_service=service),
        "bill_reading": decision.reading(exp.get("bill_change_usd_30d"), exp.get("bill_ci_low_usd_30d"),
                                         exp.get("bill_ci_high_usd_30d"), what="Change on the bill"),
        "detectable_usd_30d": None if usd is None else round(usd, 2),
        "detectable_pct": None if pct is None else round(pct, 2),
        "detectable_service": service,
        **decision.bill_shares(services, cost, own, total_bill),
        "business": [decision.metric_economics(m, cost, low, high, values_per_point.get(m["metric"]))
                     for m in exp.get("business_metrics", [])],
        "static_headroom": headroom,
        "flags": decision.plain_flags(exp["flags"] + extra_flags, owners, meta.get("owner")),
        "history": decision.history_points(history.filter(
            (pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"])
        ) if history.height else history),
    }


def owner_view(experiments: list[dict], owners: dict[str, str | None]) -> list[dict]:
    """Extra key `owners`: per team, the experiment cells that move its services and what they cost."""
    teams: dict[str, list[dict]] = {}
    for exp in experiments:
        for s in exp["services"]:
            if not s["significant"]:
                continue
            team = owners.get(s["service"]) or "(no owner in services.yaml)"
            teams.setdefault(team, []).append({
                "experiment_id": exp["experiment_id"], "cell": exp["cell"], "service": s["service"],
                "kind": exp["decision"]["kind"], "delta_pct": s["delta_pct"],
                "incremental_cost_usd_30d": s["incremental_cost_usd_30d"],
                "ci_low_usd_30d": s["ci_low_usd_30d"], "ci_high_usd_30d": s["ci_high_usd_30d"],
            })
    return [{"owner": team, "cells": sorted(rows, key=lambda r: (r["experiment_id"], r["cell"], r["service"]))}
            for team, rows in sorted(teams.items())]


def build_report(conn: duckdb.DuckDBPyConnection, as_of: dt.date, *, projection_days: int,
                 blind_spot_coverage: float, min_trace_coverage: float, cost_alert_threshold_usd: float,
                 value_per_point_usd: dict[str, float], intervals: dict) -> dict:
    """report.json as of a day, assembled from the tables the assets wrote for that day."""
    deltas = _frame(conn, "main.usage_deltas", "SELECT * FROM main.usage_deltas WHERE as_of = ?", [as_of])
    projections = _frame(conn, "main.cost_projections", "SELECT * FROM main.cost_projections WHERE as_of = ?", [as_of])
    experiment_costs = _frame(conn, "main.experiment_costs", "SELECT * FROM main.experiment_costs WHERE as_of = ? ORDER BY experiment_id, cell", [as_of])
    cost_history = _frame(conn, "main.experiment_costs", "SELECT * FROM main.experiment_costs WHERE as_of <= ?", [as_of])
    experiment_meta = _frame(conn, "raw.experiments", "SELECT * FROM raw.experiments", [])
    registry = _frame(conn, "main.cost_model_registry", "SELECT * FROM main.cost_model_registry WHERE as_of = ? ORDER BY service", [as_of])
    catalog = _frame(conn, "raw.services", "SELECT * FROM raw.services", [])
    business = _frame(conn, "raw.business_metrics", "SELECT * FROM raw.business_metrics", [])
    srm = _frame(conn, "main.sample_ratio", "SELECT * FROM main.sample_ratio WHERE as_of = ?", [as_of])
    completeness, coverage_by_service, broken_edges = completeness_section(conn, as_of, min_trace_coverage)
    thin_days = [
        {"kind": "low_trace_coverage_day", "service": None,
         "detail": f"On {d['day']} only {d['coverage']:.0%} of traced work reached a member "
                   f"(gate {min_trace_coverage:.0%})"}
        for d in completeness.get("days_below_gate", [])
    ]
    # Extra (non-contract) inputs; absent tables simply add nothing.
    edge_shift_frame = _frame(conn, "main.edge_shifts", "SELECT * EXCLUDE (as_of) FROM main.edge_shifts WHERE as_of = ?",
                              [as_of])
    latency = _index(
        _frame(conn, "main.latency_impact", "SELECT * FROM main.latency_impact WHERE as_of = ?", [as_of]),
        ("experiment_id", "cell", "service"),
    )
    capacity_rows = _frame(conn, "main.capacity_plan", "SELECT * FROM main.capacity_plan WHERE as_of = ?", [as_of])
    capacity = _index(
        capacity_rows.filter(pl.col("scenario") == "rollout") if capacity_rows.height else capacity_rows,
        ("experiment_id", "cell", "service"),
    )
    mdes = decision.service_mdes(deltas)
    owners = {r["service"]: r["owner"] for r in catalog.iter_rows(named=True)} if catalog.height else {}
    meta = {r["experiment_id"]: {"kind": r.get("kind"), "owner": r.get("owner")}
            for r in experiment_meta.iter_rows(named=True)} if experiment_meta.height else {}
    registry_peaks = _registry_peaks(registry)
    total_bill = total_bill_30d(conn, as_of, projection_days)

    shares = _frame(
        conn, "main.treated_share",
        "SELECT experiment_id, cell, avg(share) AS mean_share, arg_max(share, hour) AS share_now "
        "FROM main.treated_share WHERE as_of = ? AND hour >= ? GROUP BY ALL",
        [as_of, trailing_window(as_of, projection_days)[0]],
    )
    treated_shares = {
        (r["experiment_id"], r["cell"]): {"mean_pct": _pct(r["mean_share"]), "now_pct": _pct(r["share_now"])}
        for r in shares.iter_rows(named=True)
    }

    experiments = []
    for exp in experiment_costs.iter_rows(named=True):
        rows = deltas.filter((pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"]))
        if projections.height:
            rows = rows.join(
                projections.filter((pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"]))
                .drop("as_of", "experiment_id", "cell"),
                on="service",
                how="left",
            )
        services = []
        for r in rows.sort("service").iter_rows(named=True):
            services.append(
                {
                    "service": r["service"],
                    "delta_pct": _pct(r["delta"]),
                    "ci_low_pct": _pct(r["ci_low"]),
                    "ci_high_pct": _pct(r["ci_high"]),
                    "p_value": r["p_value"],
                    "q_value": r["q_value"],
                    "significant": bool(r["significant"]),
                    "cost_model": r.get("cost_model"),
                    "work_delta_pct": _pct(r.get("work_delta")),
                    "work_ci_low_pct": _pct(r.get("work_ci_low")),
                    "work_ci_high_pct": _pct(r.get("work_ci_high")),
                    "work_p_value": r.get("work_p_value"),
                    "work_q_value": r.get("work_q_value"),
                    "priced_on": r.get("metric"),
                    "incremental_cost_usd_30d": _usd(r.get("incremental_cost_usd_30d")) or 0.0,
                    "ci_low_usd_30d": _usd(r.get("ci_low_usd_30d")) or 0.0,
                    "ci_high_usd_30d": _usd(r.get("ci_high_usd_30d")) or 0.0,
                    "bill_change_usd_30d": _usd(r.get("bill_change_usd_30d")) or 0.0,
                    "bill_ci_low_usd_30d": _usd(r.get("bill_ci_low_usd_30d")) or 0.0,
                    "bill_ci_high_usd_30d": _usd(r.get("bill_ci_high_usd_30d")) or 0.0,
                    "trace_coverage": r.get("trace_coverage"),
                    "measured_from": r.get("measured_from"),
                }
            )
            key = (exp["experiment_id"], exp["cell"], r["service"])
            services[-1].update(mdes.get(key, {}))
            services[-1]["owner"] = owners.get(r["service"])
            if key in latency:
                services[-1]["latency"] = _latency_entry(latency[key])
            if key in capacity:
                services[-1]["capacity"] = _capacity_entry(capacity[key])
        flags = experiment_flags(
            exp,
            rows,
            catalog=catalog,
            coverage=coverage_by_service,
            broken_edges=broken_edges,
            srm=srm,
            blind_spot_coverage=blind_spot_coverage,
            cost_alert_threshold_usd=cost_alert_threshold_usd,
            edge_shifts=edge_shift_frame,
        ) + thin_days
        metrics = business.filter(
            (pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"])
        ) if business.height else business
        experiments.append(
            {
                "experiment_id": exp["experiment_id"],
                "cell": exp["cell"],
                "control_cell": exp["control_cell"],
                "incremental_cost_usd_30d": _usd(exp["incremental_cost_usd_30d"]),
                "ci_low_usd_30d": _usd(exp["ci_low_usd_30d"]),
                "ci_high_usd_30d": _usd(exp["ci_high_usd_30d"]),
                "bill_change_usd_30d": _usd(exp.get("bill_change_usd_30d")),
                "bill_ci_low_usd_30d": _usd(exp.get("bill_ci_low_usd_30d")),
                "bill_ci_high_usd_30d": _usd(exp.get("bill_ci_high_usd_30d")),
                "treated_share": treated_shares.get((exp["experiment_id"], exp["cell"])),
                "services": services,
                "flags": flags,
                "business_metrics": [
                    {k: m[k] for k in ("metric", "delta_pct", "ci_low_pct", "ci_high_pct")}
                    for m in metrics.iter_rows(named=True)
                ],
            }
        )
        experiments[-1]["decision"] = decision_entry(
            experiments[-1], projections=projections, registry_peaks=registry_peaks, capacity=capacity_rows,
            total_bill=total_bill, owners=owners, meta=meta.get(exp["experiment_id"], {}), history=cost_history,
            values_per_point=value_per_point_usd,
        )

    service_models = [
        {
            "service": r["service"],
            "scaling": r["scaling"],
            "cost_model": r["cost_model"],
            "drift_detected": bool(r["drift_detected"]),
            "model_error_pct": r["model_error_pct"],
            "kind": r["kind"],
            "drift_reasons": r["drift_reasons"] or None,
            "capacity_requests_per_hour": r["capacity_requests_per_hour"],
        }
        for r in registry.iter_rows(named=True)
    ]
    report = {
        "as_of": as_of.isoformat(),
        "intervals": intervals,
        "experiments": experiments,
        "services": service_models,
        "owners": owner_view(experiments, owners),
        "trace_completeness": completeness,
        "data_quality": {
            "quarantined": quarantine_counts(conn, as_of),
            "unattributed_cost_usd": _usd(unattributed_cost(conn, as_of, projection_days)),
        },
    }
    calibration = calibration_section(conn, as_of)
    if calibration is not None:
        report["calibration"] = calibration
    return _clean(report)


POINT_ESTIMATE_IN_WORDS = {
    "shrinkage": "empirical-Bayes posterior median: every service's measured change shrunk towards 0 by how likely "
    "'no change' is, given all of the day's measured changes (adaptive shrinkage); exactly $0 where 'no change' is "
    "the likelier reading; intervals from joint posterior draws",
    "gate": "services whose change is not significant (BH q >= fdr_q) add $0",
}


def interval_notes(sequential: bool, dollar_interval: str, point_estimate: str) -> dict[str, str]:
    """Extra key `intervals`: which intervals and point estimate the report's figures carry, in words."""
    return {
        "deltas": "always-valid 95% (mixture sequential test)" if sequential else "fixed-horizon 95%",
        "dollars": "fixed-horizon 95% from the deltas' standard errors"
        if dollar_interval == "fixed" else "from the always-valid delta intervals",
        "point_estimate": POINT_ESTIMATE_IN_WORDS[point_estimate if dollar_interval == "fixed" else "gate"],
    }


def headline(report: dict) -> pl.DataFrame:
    """One row per experiment cell: its projected 30-day cost, interval and flags (the asset's metadata)."""
    return pl.DataFrame([
        {
            "experiment": f"{e['experiment_id']}:{e['cell']}",
            "incremental_cost_usd_30d": e["incremental_cost_usd_30d"],
            "ci_low_usd_30d": e["ci_low_usd_30d"],
            "ci_high_usd_30d": e["ci_high_usd_30d"],
            "flags": ", ".join(sorted({f["kind"] for f in e["flags"]})),
        }
        for e in report["experiments"]
    ])


def calibration_section(conn: duckdb.DuckDBPyConnection, as_of: dt.date) -> dict | None:
    """Extra key: projected vs realized for every shipped cell (projection_outcomes) and
    the calibration over them; None while nothing has shipped."""
    outcomes = _frame(conn, "main.projection_outcomes",
                      "SELECT * FROM main.projection_outcomes WHERE as_of = ? ORDER BY ship_date, experiment_id", [as_of])
    if outcomes.is_empty():
        return None
    cells = [
        {k: (v.isoformat() if isinstance(v, dt.date) else _usd(v) if k.endswith("usd_30d") else v)
         for k, v in row.items() if k != "as_of"}
        for row in outcomes.iter_rows(named=True)
    ]
    return {**calibration(outcomes).to_dict(), "cells": cells}


def latest_report(conn: duckdb.DuckDBPyConnection) -> dict | None:
    if not table_exists(conn, "main.reports"):
        return None
    rows = conn.execute("SELECT report_json FROM main.reports ORDER BY as_of DESC LIMIT 1").fetchall()
    return json.loads(rows[0][0]) if rows else None
