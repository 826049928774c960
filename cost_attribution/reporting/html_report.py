"""The daily report as one self-contained HTML page (no JS, no external CSS, no network).

Layout follows dashboard practice: the number people come for first (what each
experiment cell would add to the bill over 30 days, with its interval, beside the
business metrics it buys); then, per experiment, why (the services it moves, their
two-universe cost and their cost-vs-volume fit), flags, capacity and latency; then
the data the numbers stand on (trace completeness, data quality). Every chart title
names its filter (service, window, scenario). Colours mean the same thing everywhere:
grey = observed / baseline, blue = model / counterfactual (100% rollout), red =
reference lines (historical peak, zero), orange = a shift (drift change point).
Charts are matplotlib PNGs inlined as base64, tables plain HTML.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import re

import duckdb
import numpy as np
import polars as pl

from cost_attribution.estimation.models import FittedCostModel
from cost_attribution.plots import plt
from cost_attribution.warehouse import read_frame, table_exists

GREY = "#6b7280"
BLUE = "#2563eb"
RED = "#dc2626"
ORANGE = "#d97706"
INK = "#111827"

_CHANGE_AT = re.compile(r" at (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z)")

CSS = f"""
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: {INK}; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; line-height: 1.4; }}
h1 {{ font-size: 22px; margin-bottom: 2px; }} h2 {{ font-size: 18px; margin-top: 32px; border-bottom: 1px solid #e5e7eb; }}
h3 {{ font-size: 15px; margin: 18px 0 6px; }}
.sub {{ color: {GREY}; font-size: 13px; }}
.kpi {{ display: flex; gap: 16px; margin: 16px 0; flex-wrap: wrap; }}
.kpi div {{ border: 1px solid #e5e7eb; border-radius: 6px; padding: 10px 14px; min-width: 200px; }}
.kpi b {{ display: block; font-size: 24px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }}
th, td {{ text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid #f3f4f6; vertical-align: middle; }}
th {{ color: {GREY}; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.up {{ color: {RED}; }} .ci {{ color: {GREY}; font-size: 12px; }}
.flag {{ display: inline-block; font-size: 11px; padding: 1px 6px; border-radius: 3px; background: #fee2e2; color: #991b1b;
        margin-right: 4px; }}
.flag.info {{ background: #fef3c7; color: #92400e; }}
ul.flags {{ margin: 4px 0 8px; padding-left: 18px; font-size: 13px; }}
.charts {{ display: flex; gap: 12px; flex-wrap: wrap; }}
.charts img {{ border: 1px solid #f3f4f6; max-width: 100%; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: middle; }}
"""

SEVERE_FLAGS = {"cost_over_threshold", "deprecated_dependency", "new_dependency", "capacity_tipping_point",
                "sample_ratio_mismatch"}


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _usd(value, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{'+' if signed and value > 0 else ('-' if value < 0 else '')}${abs(value):,.0f}"


def _pct(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}%"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def change_point(model: FittedCostModel | None) -> dt.datetime | None:
    """The drift change point of a model: the hour its cost structure changed, if known."""
    if model is None or not model.drift_detected:
        return None
    for reason in model.drift_reasons:
        match = _CHANGE_AT.search(reason)
        if match:
            return dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%MZ").replace(tzinfo=dt.timezone.utc)
    return model.training_start  # residual shift: the heuristic's own window starts at the shift


# ---------------------------------------------------------------------------- charts


def interval_svg(point: float, low: float, high: float, lo: float, hi: float, width: int = 260, height: int = 22) -> str:
    """A one-row forest plot (inline SVG, shared scale across rows): interval whisker,
    point, and the $0 line."""
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return 6 + (width - 12) * (min(max(v, lo), hi) - lo) / span

    zero = x(0.0)
    mid = height / 2
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="interval">'
        f'<line x1="{zero:.1f}" y1="2" x2="{zero:.1f}" y2="{height - 2}" stroke="{RED}" stroke-dasharray="2,2"/>'
        f'<line x1="{x(low):.1f}" y1="{mid}" x2="{x(high):.1f}" y2="{mid}" stroke="{BLUE}" stroke-width="2"/>'
        f'<circle cx="{x(point):.1f}" cy="{mid}" r="4" fill="{BLUE}"/></svg>'
    )


def universe_chart(frame: pl.DataFrame, title: str, model: FittedCostModel | None) -> str:
    """Hourly cost over the projection window: baseline (as observed) vs counterfactual
    (volume x (1 + delta)), with the baseline's peak hour and any drift change point."""
    frame = frame.sort("hour")
    hours = frame["hour"].to_list()
    base, cf = frame["baseline_cost"].to_numpy(), frame["counterfactual_cost"].to_numpy()
    fig, ax = plt.subplots(figsize=(6.2, 2.7))
    ax.plot(hours, base, color=GREY, linewidth=1, label="baseline (observed volume)")
    ax.plot(hours, cf, color=BLUE, linewidth=1, label="counterfactual (100% rollout)")
    ax.fill_between(hours, base, cf, color=BLUE, alpha=0.12, linewidth=0)
    if len(base):
        i = int(np.argmax(cf))
        ax.axvline(hours[i], color=RED, linestyle=":", linewidth=1)
        ax.annotate(f"peak ${cf[i]:,.1f}/h", (hours[i], cf[i]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color=RED)
    point = change_point(model)
    if point is not None and hours and hours[0] <= point <= hours[-1]:
        ax.axvline(point, color=ORANGE, linestyle="--", linewidth=1.2)
        ax.annotate(f"cost structure changed {point:%m-%d %H:%M}", (point, 0.0), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(-4, 4), ha="right", fontsize=7, color=ORANGE,
                    backgroundcolor="white")
    ax.set_title(title, fontsize=9, loc="left", pad=16)
    ax.set_ylabel("USD / hour", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, borderaxespad=0.1)
    ax.set_ylim(bottom=0)
    fig.autofmt_xdate()
    return _png(fig)


def fit_chart(history: pl.DataFrame, model: FittedCostModel, title: str, rollout_peak: float | None) -> str:
    """Cost vs volume: the hourly history, the fitted model (its kind), the historical
    peak volume and the peak at 100% rollout; hours after a drift change point in orange."""
    history = history.filter(pl.col("requests").is_not_null() & pl.col("cost").is_not_null())
    volume, cost = history["requests"].to_numpy(), history["cost"].to_numpy()
    fig, ax = plt.subplots(figsize=(5.2, 2.7))
    point = change_point(model)
    if point is not None:
        after = np.array([h >= point for h in history["hour"].to_list()], dtype=bool)
        ax.scatter(volume[~after], cost[~after], s=5, alpha=0.45, color=GREY, label="hourly history")
        ax.scatter(volume[after], cost[after], s=7, alpha=0.8, color=ORANGE, label=f"since change {point:%m-%d %H:%M}")
    else:
        ax.scatter(volume, cost, s=5, alpha=0.45, color=GREY, label="hourly history")
    top = max(float(volume.max()) if volume.size else 1.0, rollout_peak or 0.0)
    grid = np.linspace(0.0, top * 1.15, 200)
    ax.plot(grid, model.predict(grid), color=BLUE, linewidth=1.5, label=f"model: {model.cost_model} ({model.kind})")
    if volume.size:
        ax.axvline(volume.max(), color=RED, linestyle=":", linewidth=1, label="historical peak")
    if rollout_peak:
        ax.axvline(rollout_peak, color=BLUE, linestyle="--", linewidth=1, label="peak at 100% rollout")
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("requests / hour", fontsize=8)
    ax.set_ylabel("USD / hour", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", frameon=False)
    return _png(fig)


# ---------------------------------------------------------------------------- sections


def _flag_items(flags: list[dict]) -> str:
    if not flags:
        return '<p class="sub">No flags.</p>'
    items = []
    for f in flags:
        css = "flag" if f["kind"] in SEVERE_FLAGS else "flag info"
        items.append(f'<li><span class="{css}">{_e(f["kind"])}</span>{_e(f.get("service") or "")} '
                     f'&mdash; {_e(f["detail"])}</li>')
    return '<ul class="flags">' + "".join(items) + "</ul>"


def _business(metrics: list[dict]) -> str:
    if not metrics:
        return '<span class="sub">none reported</span>'
    return "<br>".join(
        f"{_e(m['metric'])} <b>{_pct(m['delta_pct'], 2)}</b> "
        f"<span class=\"ci\">[{_pct(m['ci_low_pct'], 2)}, {_pct(m['ci_high_pct'], 2)}]</span>"
        for m in metrics
    )


def headline_section(report: dict) -> str:
    experiments = sorted(report["experiments"], key=lambda e: -(e["incremental_cost_usd_30d"] or 0.0))
    as_of = report["as_of"]
    if not experiments:
        return f"<h2>Projected 30-day cost of 100% rollout &middot; as of {_e(as_of)}</h2><p>No running experiments.</p>"
    values = [v for e in experiments for v in (e["ci_low_usd_30d"], e["ci_high_usd_30d"], e["incremental_cost_usd_30d"]) if v is not None]
    lo, hi = min([0.0, *values]), max([0.0, *values])
    pad = 0.05 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    top = experiments[0]
    flagged = sum(1 for e in experiments if any(f["kind"] in SEVERE_FLAGS for f in e["flags"]))
    kpis = (
        '<div class="kpi">'
        f'<div>Costliest rollout<b id="top-cost">{_usd(top["incremental_cost_usd_30d"])}</b>'
        f'<span class="sub">{_e(top["experiment_id"])}:{_e(top["cell"])} &middot; 30 days &middot; '
        f'95% [{_usd(top["ci_low_usd_30d"])}, {_usd(top["ci_high_usd_30d"])}]</span></div>'
        f'<div>Experiment cells<b>{len(experiments)}</b><span class="sub">running as of {_e(as_of)}</span></div>'
        f'<div>Cells with severe flags<b>{flagged}</b><span class="sub">see each experiment below</span></div>'
        "</div>"
    )
    rows = []
    for e in experiments:
        kinds = sorted({f["kind"] for f in e["flags"]})
        badges = "".join(f'<span class="{"flag" if k in SEVERE_FLAGS else "flag info"}">{_e(k)}</span>' for k in kinds)
        cost = e["incremental_cost_usd_30d"]
        rows.append(
            "<tr>"
            f'<td><a href="#exp-{_e(e["experiment_id"])}-{_e(e["cell"])}">{_e(e["experiment_id"])}:{_e(e["cell"])}</a>'
            f'<br><span class="ci">vs {_e(e["control_cell"])}</span></td>'
            f'<td class="num{" up" if (cost or 0) > 0 else ""}"><b>{_usd(cost)}</b><br>'
            f'<span class="ci">[{_usd(e["ci_low_usd_30d"])}, {_usd(e["ci_high_usd_30d"])}]</span></td>'
            f'<td>{interval_svg(cost or 0.0, e["ci_low_usd_30d"] or 0.0, e["ci_high_usd_30d"] or 0.0, lo, hi)}</td>'
            f"<td>{_business(e.get('business_metrics', []))}</td>"
            f"<td>{badges}</td></tr>"
        )
    return (
        f"<h2>Projected 30-day cost of 100% rollout &middot; all experiment cells &middot; as of {_e(as_of)}</h2>"
        + kpis
        + '<p class="sub">What rolling each cell out to all traffic would add to the bill over 30 days (two-universe '
        "projection, 95% interval; the dashed red line is $0), beside the business metrics the cell moves.</p>"
        + '<table id="headline"><tr><th>Experiment cell</th><th>30-day cost</th>'
        f'<th>Interval (scale {_usd(lo)} .. {_usd(hi)})</th><th>Business metrics (95% CI)</th><th>Flags</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _latency_cell(svc: dict) -> str:
    lat = svc.get("latency")
    if not lat:
        return '<span class="ci">n/a</span>'
    parts = []
    for q in ("p50", "p95"):
        delta = lat.get(f"{q}_delta_pct")
        parts.append(f"{q} {_pct(delta)} <span class=\"ci\">[{_pct(lat.get(f'{q}_ci_low_pct'))}, "
                     f"{_pct(lat.get(f'{q}_ci_high_pct'))}]</span>")
    return "<br>".join(parts)


def _capacity_cell(cap_rows: pl.DataFrame, service: str, experiment_id: str, cell: str) -> str:
    if not cap_rows.height:
        return '<span class="ci">n/a</span>'
    base = cap_rows.filter((pl.col("service") == service) & (pl.col("scenario") == "baseline"))
    roll = cap_rows.filter((pl.col("service") == service) & (pl.col("scenario") == "rollout")
                           & (pl.col("experiment_id") == experiment_id) & (pl.col("cell") == cell))
    if not base.height or not roll.height or base["instances_needed"][0] is None:
        return '<span class="ci">n/a</span>'
    return (f"{base['instances_needed'][0]} &rarr; <b>{roll['instances_needed'][0]}</b> "
            f"<span class=\"ci\">[{roll['instances_needed_low'][0]}, {roll['instances_needed_high'][0]}] "
            f"at {roll['peak_requests_per_s'][0]:,.0f} req/s</span>")


def experiment_section(exp: dict, *, universes: pl.DataFrame, history: pl.DataFrame,
                       models: dict[str, FittedCostModel], capacity: pl.DataFrame, window: str,
                       fit_cache: dict) -> str:
    name = f"{exp['experiment_id']}:{exp['cell']}"
    moved = [s for s in exp["services"] if s["significant"]]
    quiet = [s["service"] for s in exp["services"] if not s["significant"]]
    parts = [
        f'<h2 id="exp-{_e(exp["experiment_id"])}-{_e(exp["cell"])}">{_e(name)} vs {_e(exp["control_cell"])} &middot; '
        f'{_usd(exp["incremental_cost_usd_30d"])} over 30 days '
        f'<span class="ci">[{_usd(exp["ci_low_usd_30d"])}, {_usd(exp["ci_high_usd_30d"])}]</span></h2>',
        f'<p class="sub">Business metrics: {_business(exp.get("business_metrics", []))}</p>',
        "<h3>Flags</h3>" + _flag_items(exp["flags"]),
    ]
    if moved:
        rows = []
        for s in sorted(moved, key=lambda s: -(s["incremental_cost_usd_30d"] or 0.0)):
            q_value = "n/a" if s.get("q_value") is None else f"{s['q_value']:.2g}"
            rows.append(
                "<tr>"
                f"<td>{_e(s['service'])}</td>"
                f"<td class=\"num\">{_pct(s['delta_pct'])} <span class=\"ci\">[{_pct(s['ci_low_pct'])}, {_pct(s['ci_high_pct'])}]</span></td>"
                f"<td class=\"num\">{q_value}</td>"

                f"<td>{_e(s.get('cost_model') or 'unpriced')}</td>"
                f"<td class=\"num\"><b>{_usd(s['incremental_cost_usd_30d'])}</b> "
                f"<span class=\"ci\">[{_usd(s['ci_low_usd_30d'])}, {_usd(s['ci_high_usd_30d'])}]</span></td>"
                f"<td>{_latency_cell(s)}</td>"
                f"<td>{_capacity_cell(capacity, s['service'], exp['experiment_id'], exp['cell'])}</td></tr>"
            )
        parts.append(
            f"<h3>Services {_e(name)} moves (significant after FDR) &middot; as of window end</h3>"
            '<table><tr><th>Service</th><th>Volume per member</th><th>q</th><th>Cost model</th><th>30-day cost</th>'
            "<th>Latency vs control</th><th>Instances at peak (today &rarr; 100%)</th></tr>"
            + "".join(rows) + "</table>"
        )
    else:
        parts.append('<p class="sub">No service moves significantly.</p>')
    if quiet:
        parts.append(f'<p class="sub">Tested, not significant (contribute $0 to the point estimate, widen the '
                     f'interval): {_e(", ".join(quiet))}</p>')
    for s in moved:
        service = s["service"]
        model = models.get(service)
        charts = []
        frame = universes.filter(
            (pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"]) & (pl.col("service") == service)
        ) if universes.height else universes
        if frame.height:
            charts.append(_img(
                universe_chart(frame, f"{service} · hourly cost {window} · baseline vs {name} at 100%", model),
                f"{service} baseline vs counterfactual hourly cost",
            ))
        if model is not None:
            svc_history = history.filter(pl.col("service") == service) if history.height else history
            if svc_history.height:
                rollout_peak = None
                if svc_history["requests"].drop_nulls().len() and s["delta_pct"] is not None:
                    rollout_peak = float(svc_history["requests"].max()) * max(1.0 + s["delta_pct"] / 100.0, 0.0)
                key = (service, round(rollout_peak or 0.0))
                if key not in fit_cache:
                    error = "" if model.model_error_pct is None or not math.isfinite(model.model_error_pct) \
                        else f" · MAPE {model.model_error_pct:.1f}%"
                    fit_cache[key] = fit_chart(
                        svc_history, model,
                        f"{service} · cost vs volume {window} · {model.cost_model} ({model.kind}){error}", rollout_peak,
                    )
                charts.append(_img(fit_cache[key], f"{service} cost vs volume with {model.kind} model"))
        if charts:
            parts.append(f"<h3>{_e(service)}: two universes and cost model</h3><div class=\"charts\">" + "".join(charts) + "</div>")
    return "\n".join(parts)


def capacity_section(capacity: pl.DataFrame, window: str) -> str:
    if not capacity.height:
        return ""
    rows = []
    for r in capacity.sort("service", "scenario", "experiment_id", nulls_last=False).iter_rows(named=True):
        scenario = "today" if r["scenario"] == "baseline" else f"100% {r['experiment_id']}:{r['cell']}"
        rpi = r["requests_per_instance_s"]
        added = "" if r["scenario"] == "baseline" or r["additional_instances"] is None else f"{r['additional_instances']:+d}"
        needed = "n/a" if r["instances_needed"] is None else str(r["instances_needed"])
        per_instance = "n/a" if rpi is None else f"{rpi:,.1f}"
        rows.append(
            f"<tr><td>{_e(r['service'])}</td><td>{_e(scenario)}</td>"
            f"<td class=\"num\">{r['peak_requests_per_s']:,.1f}</td>"
            f"<td class=\"num\">{per_instance}</td><td class=\"num\">{needed}</td><td class=\"num\">{added}</td></tr>"
        )
    return (
        f"<h2>Capacity plan &middot; all services &middot; peak hour {window}</h2>"
        '<p class="sub">Peak requests/s and the instances that peak needs, from the requests per instance the fleet '
        "served at its busiest hour on its current instance type (a floor of true capacity for static fleets).</p>"
        "<table><tr><th>Service</th><th>Scenario</th><th>Peak req/s</th><th>Req/s per instance</th>"
        "<th>Instances needed</th><th>Added</th></tr>" + "".join(rows) + "</table>"
    )


def calibration_section(report: dict) -> str:
    """Did the projections come true? One row per shipped cell (report["calibration"])."""
    cal = report.get("calibration")
    if not cal:
        return ""
    rows = []
    for c in cal["cells"]:
        verdict = c["verdict"].replace("_", " ")
        mark = f'<span class="flag">{_e(verdict)}</span>' if c["verdict"] != "on_target" else _e(verdict)
        rows.append(
            f"<tr><td>{_e(c['experiment_id'])}:{_e(c['cell'])}</td><td>{_e(c['ship_date'])}</td>"
            f"<td>{_e(c['decision_as_of'])}</td>"
            f"<td class=\"num\">{_usd(c['projected_usd_30d'])} [{_usd(c['projected_ci_low_usd_30d'])}, "
            f"{_usd(c['projected_ci_high_usd_30d'])}]</td>"
            f"<td class=\"num\">{_usd(c['realized_usd_30d'])} [{_usd(c['realized_ci_low_usd_30d'])}, "
            f"{_usd(c['realized_ci_high_usd_30d'])}]</td>"
            f"<td class=\"num\">{_pct(c.get('error_pct'), 0)}</td><td>{mark}</td></tr>"
        )
    coverage = "n/a" if cal.get("coverage") is None else f"{cal['coverage']:.0%}"
    bias = ('<span class="flag">systematic bias</span>' if cal.get("systematic_bias") else "no systematic bias")
    return (
        "<h2>Calibration &middot; did the projections come true?</h2>"
        '<p class="sub">Per shipped cell: the projection logged on the last day before shipping (vs not shipping) '
        "beside the realized change (actual cost after shipping vs the pre-ship cost model on a synthetic control "
        f"of the load), both per 30 days. Coverage of the projected intervals: {coverage}; mean signed error "
        f"{_pct(cal.get('mean_signed_error_pct'), 0)} of the realized change; {bias}.</p>"
        "<table><tr><th>Cell</th><th>Shipped</th><th>Decision as of</th><th>Projected [95%]</th>"
        "<th>Realized [95%]</th><th>Error</th><th>Verdict</th></tr>" + "".join(rows) + "</table>"
    )


def footer_sections(report: dict) -> str:
    rows = []
    for s in report.get("services", []):
        error = "n/a" if s.get("model_error_pct") is None else f"{s['model_error_pct']:.1f}%"
        drift = '<span class="flag">drift</span>' + _e(s.get("drift_reasons") or "") if s["drift_detected"] else ""
        rows.append(
            f"<tr><td>{_e(s['service'])}</td><td>{_e(s['scaling'])}</td><td>{_e(s['cost_model'])}</td>"
            f"<td>{_e(s.get('kind'))}</td><td class=\"num\">{error}</td><td>{drift}</td></tr>"
        )
    rows = "".join(rows)
    tc = report.get("trace_completeness", {})
    overall = tc.get("overall")
    broken = "".join(f"<li>{_e(b['caller'])} &rarr; {_e(b['callee'])}</li>" for b in tc.get("broken_edges", []))
    coverage = "".join(
        f"<tr><td>{_e(c['service'])}</td><td class=\"num\">{_share(c['coverage'])}</td></tr>"
        for c in tc.get("services", [])
    )
    dq = report.get("data_quality", {})
    quarantined = ", ".join(f"{_e(k)}: {v}" for k, v in (dq.get("quarantined") or {}).items()) or "none"
    return (
        f"<h2>Cost models &middot; all services &middot; as of {_e(report['as_of'])}</h2>"
        "<table><tr><th>Service</th><th>Scaling</th><th>Cost model</th><th>Kind</th><th>Holdout MAPE</th><th>Drift</th></tr>"
        + rows + "</table>"
        + f"<h2>Trace completeness &middot; experiment window to {_e(report['as_of'])}</h2>"
        + f"<p>{_share(overall)} of adjusted work reaches a member.</p>"
        + ("<p>Broken edges (trace context dropped: blind spots):</p><ul>" + broken + "</ul>" if broken else "")
        + "<table><tr><th>Service</th><th>Coverage</th></tr>" + coverage + "</table>"
        + f"<h2>Data quality</h2><p>Quarantined records: {quarantined}. Unattributed cost in the window: "
        + f"{_usd(dq.get('unattributed_cost_usd'), signed=False)}.</p>"
    )


def render_html(report: dict, *, universes: pl.DataFrame, history: pl.DataFrame,
                models: dict[str, FittedCostModel], capacity: pl.DataFrame, window: str) -> str:
    as_of = report["as_of"]
    fit_cache: dict = {}
    experiments = sorted(report["experiments"], key=lambda e: -(e["incremental_cost_usd_30d"] or 0.0))
    body = [
        f"<h1>Cost impact of experiment winners &middot; as of {_e(as_of)}</h1>",
        '<p class="sub legend">Colours: <span style="background:' + GREY + '"></span>observed / baseline'
        '<span style="background:' + BLUE + '"></span>model / 100% rollout'
        '<span style="background:' + RED + '"></span>peak, $0'
        '<span style="background:' + ORANGE + '"></span>cost-structure change</p>',
        headline_section(report),
    ]
    for exp in experiments:
        body.append(experiment_section(exp, universes=universes, history=history, models=models, capacity=capacity,
                                       window=window, fit_cache=fit_cache))
    body.append(calibration_section(report))
    body.append(capacity_section(capacity, window))
    body.append(footer_sections(report))
    embedded = html.escape(json.dumps(report, separators=(",", ":")), quote=False)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Cost attribution report {_e(as_of)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + f'<script type="application/json" id="report-json">{embedded}</script>'
        + "</body></html>\n"
    )


def build_html_report(conn: duckdb.DuckDBPyConnection, report: dict, projection_days: int = 28) -> str:
    """Everything the page needs for the report's as-of day, read from the warehouse."""
    as_of = dt.date.fromisoformat(report["as_of"])
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    start = end - dt.timedelta(days=projection_days)
    window = f"{start:%Y-%m-%d}..{as_of:%Y-%m-%d}"

    def frame(table: str, sql: str, params: list) -> pl.DataFrame:
        return read_frame(conn, sql, params) if table_exists(conn, table) else pl.DataFrame()

    universes = frame("main.projection_universes", "SELECT * FROM main.projection_universes WHERE as_of = ?", [as_of])
    history = frame(
        "main.service_hourly_history",
        "SELECT service, hour, requests, cost FROM main.service_hourly_history WHERE hour >= ? AND hour < ? ORDER BY service, hour",
        [start, end],
    )
    capacity = frame("main.capacity_plan", "SELECT * FROM main.capacity_plan WHERE as_of = ?", [as_of])
    registry = frame("main.cost_model_registry", "SELECT service, model_json FROM main.cost_model_registry WHERE as_of = ?", [as_of])
    models = {
        r["service"]: FittedCostModel.from_dict(json.loads(r["model_json"])) for r in registry.iter_rows(named=True)
    } if registry.height else {}
    return render_html(report, universes=universes, history=history, models=models, capacity=capacity, window=window)
