"""Flags a product team should see before shipping a cell.

Each flag is {kind, service, detail}; kinds:
- deprecated_dependency: the cell significantly raises calls to a deprecated service.
- new_dependency: the cell calls caller -> callee where its control never does (shift-left,
  see attribution/shift_left.py); service = the callee.
- low_trace_coverage: a service the cell moves (or whose caller it moves) sits behind a
  blind spot, so its volume is recovered from callers' CLIENT spans or not seen at all.
- cost_over_threshold: the projected 30-day cost passes the alert threshold.
- capacity_tipping_point: a statically provisioned service would pass its capacity.
- drifted_cost_model: a moved service is priced by the drift fallback heuristic.
- unpriced_service: a moved service has no cost model or no production volume.
- sample_ratio_mismatch: the allocation split is implausible; deltas are suspect.
"""

from __future__ import annotations

import polars as pl

from cost_attribution.attribution.shift_left import new_dependency_flags


def _flag(kind: str, service: str | None, detail: str) -> dict:
    return {"kind": kind, "service": service, "detail": detail}


def experiment_flags(
    experiment: dict,
    services: pl.DataFrame,
    *,
    catalog: pl.DataFrame,
    coverage: pl.DataFrame,
    broken_edges: pl.DataFrame,
    srm: pl.DataFrame,
    blind_spot_coverage: float,
    cost_alert_threshold_usd: float,
    edge_shifts: pl.DataFrame | None = None,
) -> list[dict]:
    flags: list[dict] = []
    deprecated = set(catalog.filter(pl.col("deprecated"))["service"].to_list()) if catalog.height else set()
    moved = services.filter(pl.col("significant")) if services.height else services
    moved_names = set(moved["service"].to_list()) if moved.height else set()
    # A caller changes how often it calls a blind callee only if its own request volume
    # moved (heavier requests alone do not make more calls).
    volume_moved = (
        set(moved.filter((pl.col("ci_low") > 0) | (pl.col("ci_high") < 0))["service"].to_list()) if moved.height else set()
    )

    for r in moved.iter_rows(named=True) if moved.height else []:
        if r["service"] in deprecated and (r["delta"] or 0) > 0:
            flags.append(
                _flag(
                    "deprecated_dependency",
                    r["service"],
                    f"{experiment['cell']} raises calls to deprecated {r['service']} by {r['delta']:+.0%} "
                    f"(95% CI {r['ci_low']:+.0%} to {r['ci_high']:+.0%})",
                )
            )
        if r.get("exceeds_capacity"):
            flags.append(
                _flag(
                    "capacity_tipping_point",
                    r["service"],
                    f"at 100% rollout {r['service']} peaks at {r.get('peak_requests_per_hour', 0):,.0f} requests/h, past "
                    "its provisioned capacity: it would have to be resized"
                    + (" (its capacity is assumed, never observed: the interval runs from a fleet full at its peak "
                       "to one with twice the assumed headroom)" if r.get("cost_model") == "static" else ""),
                )
            )
        if r.get("cost_model") == "heuristic":
            flags.append(
                _flag(
                    "drifted_cost_model",
                    r["service"],
                    f"{r['service']}'s cost structure changed recently; priced with the post-change cost per request",
                )
            )
        if r.get("cost_model") is None:
            flags.append(_flag("unpriced_service", r["service"], f"no cost model or production volume for {r['service']}"))

    if edge_shifts is not None:
        flags.extend(new_dependency_flags(experiment, edge_shifts, deprecated))

    if coverage.height:
        blind = coverage.filter(pl.col("coverage").fill_null(0.0) < blind_spot_coverage)
        for b in blind.iter_rows(named=True):
            callee = b["service"]
            callers = (
                broken_edges.filter(pl.col("callee") == callee)["caller"].to_list() if broken_edges.height else []
            )
            row = services.filter(pl.col("service") == callee) if services.height else services
            measured_from = row["measured_from"][0] if row.height and "measured_from" in row.columns else None
            moved_callers = [c for c in callers if c in volume_moved]
            if callee in moved_names or moved_callers or measured_from != "client":
                reason = (
                    f"{callee}: only {b['coverage']:.0%} of its requests reach a member"
                    + (f" (context dropped by {', '.join(callers)})" if callers else "")
                    + (
                        "; its delta is recovered from callers' CLIENT spans"
                        if measured_from == "client"
                        else "; its delta cannot be measured from its own spans"
                    )
                    + (f"; moved caller(s): {', '.join(moved_callers)}" if moved_callers else "")
                )
                flags.append(_flag("low_trace_coverage", callee, reason))

    cost = experiment.get("incremental_cost_usd_30d") or 0.0
    if cost > cost_alert_threshold_usd:
        flags.append(
            _flag(
                "cost_over_threshold",
                None,
                f"projected +${cost:,.0f} over 30 days (threshold ${cost_alert_threshold_usd:,.0f})",
            )
        )
    if srm.height:
        mismatch = srm.filter((pl.col("experiment_id") == experiment["experiment_id"]) & pl.col("mismatch"))
        if mismatch.height:
            flags.append(
                _flag(
                    "sample_ratio_mismatch",
                    None,
                    f"allocation counts {mismatch['cell_counts'][0]} are implausible (p={mismatch['p_value'][0]:.2g})",
                )
            )
    return flags
