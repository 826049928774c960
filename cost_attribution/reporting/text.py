"""The report as a person reads it in a terminal: the money first, then why."""

from __future__ import annotations

import re

# C0/C1 control characters (ANSI escapes start with one) and Unicode bidi/zero-width
# controls: a name in the landing zone must not be able to drive the user's terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def safe_text(text: str) -> str:
    """Text for a terminal: control characters removed (newlines and tabs kept)."""
    return _CONTROL.sub("", text)


def _clean(value):
    """Every string of the report on one line and without control characters."""
    if isinstance(value, str):
        return _CONTROL.sub("", value.replace("\n", " ").replace("\t", " "))
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _usd(value) -> str:
    if value is None:
        return "n/a"
    return f"-${-value:,.0f}" if round(value) < 0 else f"${value:,.0f}"


def _pct(value) -> str:
    return "    n/a" if value is None else f"{value:+7.1f}%"


def _q(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def render_summary(report: dict, truth: dict | None = None) -> str:
    """One line per experiment cell: cost vs not shipping and the bill change, each with its
    95% interval (and the simulator's truth beside it for a demo world)."""
    report = _clean(report)
    known = (truth or {}).get("experiments", {})
    lines = [
        f"As of {report['as_of']}: what shipping each cell adds over 30 days vs not shipping it, and the change",
        "the bill will show vs the last 28 days (which already carried the running test); 95% intervals:",
        f"  {'cell':<34} {'vs not shipping':>28} {'bill change':>28}" + ("   truth (vs / bill)" if known else ""),
    ]
    for exp in sorted(report["experiments"], key=lambda e: -(e["incremental_cost_usd_30d"] or 0)):
        name = f"{exp['experiment_id']}:{exp['cell']}"
        vs = f"{_usd(exp['incremental_cost_usd_30d'])} [{_usd(exp['ci_low_usd_30d'])}, {_usd(exp['ci_high_usd_30d'])}]"
        bill = f"{_usd(exp.get('bill_change_usd_30d'))} [{_usd(exp.get('bill_ci_low_usd_30d'))}, {_usd(exp.get('bill_ci_high_usd_30d'))}]"
        line = f"  {name:<34} {vs:>28} {bill:>28}"
        if name in known:
            line += f"   {_usd(known[name]['incremental_cost_usd_30d'])} / {_usd(known[name].get('bill_change_usd_30d'))}"
        lines.append(line)
    return "\n".join(lines)


def render_text(report: dict, truth: dict | None = None) -> str:
    report = _clean(report)
    lines = [f"Cost attribution report as of {report['as_of']}", ""]
    lines.append("What shipping each cell to 100% adds over 30 days vs not shipping it (95% interval);")
    lines.append("'bill' is the change the cloud bill will show vs the last 28 days, which already carried the test:")
    for exp in sorted(report["experiments"], key=lambda e: -(e["incremental_cost_usd_30d"] or 0)):
        name = f"{exp['experiment_id']}:{exp['cell']}"
        line = (
            f"  {name:<32} {_usd(exp['incremental_cost_usd_30d']):>10}  "
            f"[{_usd(exp['ci_low_usd_30d'])} .. {_usd(exp['ci_high_usd_30d'])}]"
        )
        if truth and name in truth.get("experiments", {}):
            line += f"   (simulator truth {_usd(truth['experiments'][name]['incremental_cost_usd_30d'])})"
        lines.append(line)
        if exp.get("bill_change_usd_30d") is not None:
            bill = (
                f"  {'':<32} {_usd(exp['bill_change_usd_30d']):>10}  "
                f"[{_usd(exp['bill_ci_low_usd_30d'])} .. {_usd(exp['bill_ci_high_usd_30d'])}] bill"
            )
            if truth and "bill_change_usd_30d" in truth.get("experiments", {}).get(name, {}):
                bill += f"   (simulator truth {_usd(truth['experiments'][name]['bill_change_usd_30d'])})"
            lines.append(bill)
        for svc in exp["services"]:
            if svc["significant"]:
                work = svc.get("work_delta_pct")
                lines.append(
                    f"      {svc['service']:<20} {_pct(svc['delta_pct'])} requests"
                    f"{'' if work is None else f', {work:+.1f}% work'}"
                    f"  q={_q(svc['q_value'])}  {svc['cost_model'] or 'unpriced':<9} {_usd(svc['incremental_cost_usd_30d'])}"
                )
        reading = (exp.get("decision") or {}).get("cost_reading")
        if reading:
            lines.append(f"      = {reading['text']}")
        for flag in exp["flags"]:
            lines.append(f"      ! {flag['kind']}: {flag['detail']}")
        for metric in exp.get("business_metrics", []):
            lines.append(
                f"      business: {metric['metric']} {metric['delta_pct']:+.2f}% [{metric['ci_low_pct']:+.2f}, {metric['ci_high_pct']:+.2f}]"
            )
    lines.append("")
    lines.append("Services (scaling, cost model, holdout error):")
    for svc in report["services"]:
        drift = "  DRIFT -> heuristic" if svc["drift_detected"] else ""
        error = svc["model_error_pct"]
        lines.append(
            f"  {svc['service']:<20} {svc['scaling']:<9} {svc['cost_model']:<9} "
            f"{'' if error is None else f'{error:.1f}% MAPE'}{drift}"
        )
    completeness = report["trace_completeness"]
    lines.append("")
    overall = completeness["overall"]
    lines.append(f"Trace completeness: {'n/a' if overall is None else f'{overall:.1%}'} of adjusted work reaches a member")
    for edge in completeness["broken_edges"]:
        lines.append(f"  broken edge: {edge['caller']} -> {edge['callee']} (trace context dropped: a blind spot)")
    quality = report["data_quality"]
    lines.append("")
    lines.append(f"Quarantined records: {quality['quarantined'] or 'none'}")
    lines.append(f"Unattributed cost (untagged, support, credits) in the window: {_usd(quality['unattributed_cost_usd'])}")
    return "\n".join(lines)
