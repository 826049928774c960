"""The report.json contract (docs/contract.md) as code: `contract_errors(report)`
lists every way a report departs from it. Extra keys are allowed; missing keys,
wrong types and unknown enum values are not."""

from __future__ import annotations

from typing import Any

NUMBER = (int, float)
COST_MODELS = {"ml", "heuristic", "static"}
SCALING = {"autoscale", "static"}

EXPERIMENT_KEYS = {
    "experiment_id": str,
    "cell": str,
    "control_cell": str,
    "incremental_cost_usd_30d": NUMBER,
    "ci_low_usd_30d": NUMBER,
    "ci_high_usd_30d": NUMBER,
    "bill_change_usd_30d": NUMBER,
    "bill_ci_low_usd_30d": NUMBER,
    "bill_ci_high_usd_30d": NUMBER,
    "services": list,
    "flags": list,
    "business_metrics": list,
}
EXPERIMENT_SERVICE_KEYS = {
    "service": str,
    "delta_pct": NUMBER,
    "ci_low_pct": NUMBER,
    "ci_high_pct": NUMBER,
    "p_value": NUMBER,
    "q_value": NUMBER,
    "significant": bool,
    "cost_model": str,
    "work_delta_pct": NUMBER,
    "work_ci_low_pct": NUMBER,
    "work_ci_high_pct": NUMBER,
    "incremental_cost_usd_30d": NUMBER,
    "ci_low_usd_30d": NUMBER,
    "ci_high_usd_30d": NUMBER,
    "trace_coverage": NUMBER,
}
SERVICE_KEYS = {"service": str, "scaling": str, "cost_model": str, "drift_detected": bool, "model_error_pct": NUMBER}
FLAG_KEYS = {"kind": str, "detail": str}
METRIC_KEYS = {"metric": str, "delta_pct": NUMBER, "ci_low_pct": NUMBER, "ci_high_pct": NUMBER}


def _check(obj: Any, keys: dict, where: str, errors: list[str], nullable: set[str] = frozenset()) -> None:
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, kind in keys.items():
        if key not in obj:
            errors.append(f"{where}: missing {key!r}")
        elif obj[key] is None:
            if key not in nullable:
                errors.append(f"{where}.{key}: null")
        elif kind is NUMBER and isinstance(obj[key], bool):
            errors.append(f"{where}.{key}: expected a number, got a bool")
        elif not isinstance(obj[key], kind):
            errors.append(f"{where}.{key}: expected {kind}, got {type(obj[key]).__name__}")


def contract_errors(report: dict) -> list[str]:
    errors: list[str] = []
    _check(
        report,
        {"as_of": str, "experiments": list, "services": list, "trace_completeness": dict, "data_quality": dict},
        "report",
        errors,
    )
    if errors:
        return errors
    for i, exp in enumerate(report["experiments"]):
        where = f"experiments[{i}]"
        _check(exp, EXPERIMENT_KEYS, where, errors)
        if not isinstance(exp, dict):
            continue
        for point_key, low_key, high_key in (
            ("incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"),
            ("bill_change_usd_30d", "bill_ci_low_usd_30d", "bill_ci_high_usd_30d"),
        ):
            lo, point, hi = exp.get(low_key), exp.get(point_key), exp.get(high_key)
            if all(isinstance(v, NUMBER) for v in (lo, point, hi)) and not lo <= point <= hi:
                errors.append(f"{where}: interval [{lo}, {hi}] does not contain {point_key} {point}")
        for j, svc in enumerate(exp.get("services") or []):
            # A service with no production volume or model is unpriced (cost_model null,
            # flagged), and one with no control traffic has no delta: both stay visible.
            _check(
                svc,
                EXPERIMENT_SERVICE_KEYS,
                f"{where}.services[{j}]",
                errors,
                nullable={"cost_model", "delta_pct", "ci_low_pct", "ci_high_pct", "p_value", "q_value", "trace_coverage",
                          "work_delta_pct", "work_ci_low_pct", "work_ci_high_pct"},
            )
            if isinstance(svc, dict) and svc.get("cost_model") not in COST_MODELS | {None}:
                errors.append(f"{where}.services[{j}].cost_model: {svc.get('cost_model')!r} not in {sorted(COST_MODELS)}")
        for j, flag in enumerate(exp.get("flags") or []):
            _check(flag, FLAG_KEYS, f"{where}.flags[{j}]", errors)
            if isinstance(flag, dict) and "service" not in flag:
                errors.append(f"{where}.flags[{j}]: missing 'service'")
        for j, metric in enumerate(exp.get("business_metrics") or []):
            _check(metric, METRIC_KEYS, f"{where}.business_metrics[{j}]", errors, nullable={"ci_low_pct", "ci_high_pct"})
    for i, svc in enumerate(report["services"]):
        _check(svc, SERVICE_KEYS, f"services[{i}]", errors, nullable={"model_error_pct"})
        if isinstance(svc, dict):
            if svc.get("scaling") not in SCALING:
                errors.append(f"services[{i}].scaling: {svc.get('scaling')!r} not in {sorted(SCALING)}")
            if svc.get("cost_model") not in COST_MODELS:
                errors.append(f"services[{i}].cost_model: {svc.get('cost_model')!r} not in {sorted(COST_MODELS)}")
    completeness = report["trace_completeness"]
    _check(completeness, {"overall": NUMBER, "services": list, "broken_edges": list}, "trace_completeness", errors, nullable={"overall"})
    for j, svc in enumerate(completeness.get("services") or []):
        _check(svc, {"service": str, "coverage": NUMBER}, f"trace_completeness.services[{j}]", errors, nullable={"coverage"})
    for j, edge in enumerate(completeness.get("broken_edges") or []):
        _check(edge, {"caller": str, "callee": str}, f"trace_completeness.broken_edges[{j}]", errors)
    quality = report["data_quality"]
    _check(quality, {"quarantined": dict, "unattributed_cost_usd": NUMBER}, "data_quality", errors)
    for reason, count in (quality.get("quarantined") or {}).items():
        if not isinstance(count, int) or isinstance(count, bool):
            errors.append(f"data_quality.quarantined[{reason!r}]: expected an integer count")
    return errors
