"""The daily report as one self-contained HTML page (no JS, no external CSS, no network).

Written for the people who decide: first a decision card per experiment cell (cost
versus not shipping and the change on the bill, 30 days and per year, each with its
interval and a one-line reading; the share of the bill; the cost per point of each
business metric and, where a point has a value, the net value and the chance it is
positive; the flags in plain words with the owner to talk to; the estimate's history).
Then every cell on one interval scale, the A/A calibration experiments, once cells
have shipped the projected-vs-realized calibration (report["calibration"]), a view by
owner, per experiment the services it touches (with the smallest change the traffic
detects), the two-universe and cost-vs-volume charts, capacity, the data the numbers
stand on, and a glossary. Colours mean the same everywhere: grey = observed / today,
blue = estimate / 100% rollout, red = reference lines ($0, historical peak), orange =
a cost-structure change. Charts are matplotlib PNGs inlined as base64; the HTML comes
from the Jinja2 templates beside this module (autoescaped).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import duckdb
import jinja2
import numpy as np
import polars as pl
from markupsafe import Markup
from matplotlib.dates import DateFormatter
from matplotlib.ticker import FuncFormatter, MaxNLocator

from cost_attribution.estimation.models import FittedCostModel
from cost_attribution.partitions import trailing_window
from cost_attribution.plots import figure_to_base64, plt
from cost_attribution.reporting import decision
from cost_attribution.reporting.report import decision_entry
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
nav a {{ color: {BLUE}; }}
.sub {{ color: #4b5563; font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }}
th, td {{ text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid #f3f4f6; vertical-align: middle; }}
th {{ color: #4b5563; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.up {{ color: {RED}; }} .down {{ color: #047857; }} .ci {{ color: #4b5563; font-size: 12px; }}
.flag {{ display: inline-block; font-size: 11px; padding: 1px 6px; border-radius: 3px; background: #fee2e2; color: #991b1b;
        margin-right: 4px; }}
.flag.info {{ background: #fef3c7; color: #92400e; }}
ul.flags {{ margin: 4px 0 8px; padding-left: 18px; font-size: 13px; }}
.charts {{ display: flex; gap: 12px; flex-wrap: wrap; }}
.charts img {{ border: 1px solid #f3f4f6; max-width: 100%; }}
.legend span {{ display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: middle; }}
.card {{ border: 1px solid #d1d5db; border-radius: 8px; padding: 12px 16px; margin: 14px 0; }}
.card header h3 {{ margin: 0; font-size: 17px; }}
.card-body {{ display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; margin-top: 8px; }}
.money {{ flex: 1 1 280px; max-width: 360px; }}
.money .label {{ display: block; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #4b5563; }}
.money b {{ font-size: 26px; font-variant-numeric: tabular-nums; }}
.money .unit {{ font-size: 13px; color: #4b5563; }}
.money .ci, .money .year {{ display: block; font-size: 12px; }}
.money .year {{ color: {INK}; font-size: 13px; }}
.reading {{ margin: 6px 0 0; font-size: 13px; padding-left: 8px; border-left: 3px solid #9ca3af; }}
.verdict-adds {{ border-color: {RED}; }} .verdict-saves {{ border-color: #047857; }}
.verdict-unclear {{ border-color: #9ca3af; }}
.history {{ margin: 0; flex: 0 0 auto; }} .history figcaption {{ max-width: 300px; }}
.share {{ font-size: 13px; margin: 8px 0; }}
.overview {{ font-size: 15px; }}
.verdict {{ font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 10px; margin-left: 8px;
           vertical-align: middle; border: 1px solid; }}
.verdict.verdict-adds {{ color: #991b1b; background: #fee2e2; }}
.verdict.verdict-saves {{ color: #065f46; background: #d1fae5; }}
.verdict.verdict-unclear, .verdict.verdict-unknown {{ color: #374151; background: #f3f4f6; }}
ul.plain-flags {{ font-size: 13px; padding-left: 18px; margin: 6px 0 0; }}
ul.plain-flags li.severe::marker {{ color: {RED}; }} ul.plain-flags li.info::marker {{ color: {ORANGE}; }}
.owner {{ color: #4b5563; }}
td.ok {{ color: #047857; font-weight: 600; }} td.bad {{ color: {RED}; font-weight: 600; }}
.headroom {{ font-size: 13px; background: #f9fafb; padding: 6px 10px; border-radius: 4px; }}
dl dt {{ font-weight: 600; margin-top: 8px; }} dl dd {{ margin-left: 16px; font-size: 13px; }}
"""

VERDICT_WORDS = {"adds": "Adds cost", "saves": "Saves money", "unclear": "Cannot tell from $0 yet",
                 "unknown": "Not priced"}

SEVERE_FLAGS = {"cost_over_threshold", "deprecated_dependency", "new_dependency", "capacity_tipping_point",
                "sample_ratio_mismatch"}

GLOSSARY = [
    ("Cost versus not shipping", "What the cloud bill would be with the cell shipped to all traffic, minus what it would "
     "be if nobody ever got it, over 30 days. The number to decide on."),
    ("Change on the bill", "The same, compared with the bill as it was (it already carried the test's own traffic): "
     "the change finance will see after shipping."),
    ("Per year", "The 30-day figure x 365/30, at today's traffic and prices."),
    ("95% interval", "The range the true value lies in with 95% confidence. The point is the best single guess."),
    ("Indistinguishable from $0", "The interval contains $0: at this traffic the cell's cost cannot be told apart from "
     "noise. It is not proof of no cost; the smallest detectable size says how large a cost could hide."),
    ("Smallest detectable (MDE)", "The change the experiment's current traffic would detect 80% of the time. Smaller "
     "real changes may be missed; it shrinks as more members are allocated."),
    ("Significant, q-value", "A service counts as moved when its q-value (the p-value corrected for testing many "
     "services at once) is below 0.05."),
    ("Treated share", "The share of production traffic that already gets the treatment today."),
    ("Share of the bill", "The cost as a percentage of what the services it moves, and the whole platform, cost per "
     "30 days."),
    ("Cost per +1%", "The 30-day cost divided by the business metric's change: what each point of the gain costs."),
    ("Net value, chance it pays for itself", "Where a value per metric point is configured: value of the gain minus "
     "the cost, and the probability that this is above $0 given both intervals."),
    ("A/A calibration", "An experiment whose cells are identical. Its cost must come out indistinguishable from $0; if "
     "it does not, the method or the data is biased."),
    ("Blind spot", "A service whose requests lose the trace context, so they cannot be tied to members and cells."),
    ("Sample ratio mismatch (SRM)", "The cells did not receive the planned share of members: the split is broken and "
     "the comparison is suspect."),
    ("CUPED", "A variance reduction: each member's behaviour before the experiment is used to take out noise, so "
     "smaller effects become visible."),
    ("Static fleet, tipping point", "A fleet of fixed size costs the same until traffic passes its capacity (the "
     "tipping point); only then must it grow, and only then does shipping cost money."),
    ("Beyond the historical peak", "The cell would push a service above the busiest hour ever seen; its cost there is "
     "extrapolated from the curve, not observed."),
    ("Cost model ml / heuristic / static", "How a service's cost follows its load: a fitted monotone curve (ml), the "
     "latest cost per request after a price change (heuristic), or a fixed fleet (static)."),
    ("MAPE", "Mean absolute percentage error of the cost model on recent hours it was not fitted on."),
    ("Drift", "The service's cost per unit of load changed recently (new instance type, new price)."),
]

def _usd(value, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{'+' if signed and value > 0 else ('-' if value < 0 else '')}${abs(value):,.0f}"


def _pct(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}%"


def _plain_pct(value, digits: int | None = None) -> str:
    """A share in percent (already x100): as many digits as make it readable."""
    if value is None:
        return "n/a"
    if digits is None:
        digits = 0 if abs(value) >= 10 else (1 if abs(value) >= 1 else 2)
    return f"{value:.{digits}f}%"


def _of_bill(value) -> str:
    """A share of a bill ("41% of"), or a multiple ("14.3×") once it passes twice the bill."""
    return "n/a" if value is None else (f"{value / 100:.1f}×" if abs(value) >= 200 else f"{_plain_pct(value)} of")


def _mde(value) -> str:
    return "n/a" if value is None else f"±{value:.1f}%" if abs(value) < 100 else f"±{value:,.0f}%"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _sig(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def human_units(value: float, _pos=None) -> str:
    """12_500_000 -> 12.5M: an axis label a person reads without an offset."""
    size = abs(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def usd_ticks(value: float, _pos=None) -> str:
    return ("-" if value < 0 else "") + "$" + human_units(abs(value))


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cost_attribution.reporting", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=False,
)
_ENV.filters.update(usd=_usd, pct=_pct, plain_pct=_plain_pct, mde=_mde, of_bill=_of_bill, share=_share, sig=_sig)


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


def interval_scale(values: list[float], width: int = 260) -> dict:
    """One shared dollar scale for the interval strips, with readable ticks."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = min([0.0, *finite]), max([0.0, *finite])
    pad = 0.05 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    ticks = [t for t in MaxNLocator(nbins=4).tick_values(lo, hi) if lo <= t <= hi]
    scale = {"lo": lo, "hi": hi, "width": width}
    return {**scale, "ticks": [{"x": round(_x(scale, t), 1), "label": usd_ticks(t)} for t in ticks],
            "x0": 6, "x1": width - 6}


def _x(scale: dict, value: float) -> float:
    span = (scale["hi"] - scale["lo"]) or 1.0
    return 6 + (scale["width"] - 12) * (min(max(value, scale["lo"]), scale["hi"]) - scale["lo"]) / span


def interval_strip(point: float, low: float, high: float, scale: dict, label: str) -> dict:
    """A one-row forest plot on the shared scale: interval whisker, point, the $0 line."""
    return {"width": scale["width"], "height": 22, "mid": 11, "label": label, "red": RED, "blue": BLUE,
            "zero": round(_x(scale, 0.0), 1), "low": round(_x(scale, low), 1), "high": round(_x(scale, high), 1),
            "point": round(_x(scale, point), 1)}


def history_chart(points: list[dict], title: str) -> str | None:
    """The cell's estimate by as-of day: point and 95% band, with $0 dashed."""
    points = [p for p in points if p["incremental_cost_usd_30d"] is not None]
    if len(points) < 2:
        return None
    days = [dt.date.fromisoformat(p["as_of"]) for p in points]
    mid = [p["incremental_cost_usd_30d"] for p in points]
    low = [p["ci_low_usd_30d"] if p["ci_low_usd_30d"] is not None else m for p, m in zip(points, mid)]
    high = [p["ci_high_usd_30d"] if p["ci_high_usd_30d"] is not None else m for p, m in zip(points, mid)]
    fig, ax = plt.subplots(figsize=(3.6, 1.9))
    ax.fill_between(days, low, high, color=BLUE, alpha=0.18, linewidth=0, label="95% interval")
    ax.plot(days, mid, color=BLUE, marker="o", markersize=3, linewidth=1.2, label="estimate")
    ax.axhline(0.0, color=RED, linestyle="--", linewidth=0.8)
    ax.set_title(title, fontsize=8, loc="left")
    ax.set_xlabel("as-of day", fontsize=7)
    ax.set_ylabel("USD per 30 days", fontsize=7)
    ax.yaxis.set_major_formatter(FuncFormatter(usd_ticks))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(DateFormatter("%m-%d"))
    ax.tick_params(labelsize=6)
    return figure_to_base64(fig)


def universe_chart(frame: pl.DataFrame, title: str, model: FittedCostModel | None) -> str:
    """Hourly cost over the projection window: baseline (as observed) vs counterfactual
    (volume x (1 + delta)), with the baseline's peak hour and any drift change point."""
    frame = frame.sort("hour")
    hours = frame["hour"].to_list()
    base, cf = frame["baseline_cost"].to_numpy(), frame["counterfactual_cost"].to_numpy()
    fig, ax = plt.subplots(figsize=(6.2, 2.7))
    ax.plot(hours, base, color=GREY, linewidth=1, label="not shipped (everyone in control)")
    ax.plot(hours, cf, color=BLUE, linewidth=1, label="shipped to 100%")
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
    ax.set_xlabel("hour (UTC)", fontsize=8)
    ax.set_ylabel("USD / hour", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, borderaxespad=0.1)
    ax.set_ylim(bottom=0)
    fig.autofmt_xdate()
    return figure_to_base64(fig)


def model_driver(model: FittedCostModel, history: pl.DataFrame) -> str:
    """The history column the model is priced on (its first feature), requests if absent."""
    driver = (model.features or ["requests"])[0]
    return driver if driver in history.columns else "requests"


def fit_chart(history: pl.DataFrame, model: FittedCostModel, title: str, rollout_peak: float | None) -> str:
    """Cost vs load in the unit the model is driven by (requests or CPU-seconds): the hourly
    history, the fitted model (its kind), the historical peak load and the peak at 100%
    rollout; hours after a drift change point in orange. Load ticks in readable units
    (12.5M), never a 1e7 offset."""
    driver = model_driver(model, history)
    history = history.filter(pl.col(driver).is_not_null() & pl.col("cost").is_not_null())
    volume, cost = history[driver].to_numpy(), history["cost"].to_numpy()
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
    ax.set_xlabel(f"{decision.driver_unit(driver)} per hour", fontsize=8)
    ax.set_ylabel("USD / hour", fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(human_units))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", frameon=False)
    return figure_to_base64(fig)


# ---------------------------------------------------------------------------- page data


def _anchor(exp: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{exp['experiment_id']}-{exp['cell']}")


def _name(exp: dict) -> str:
    return f"{exp['experiment_id']}:{exp['cell']}"


def _decision(exp: dict) -> dict:
    """The report's decision entry; reports stored before it existed get one from their own numbers."""
    if exp.get("decision"):
        return exp["decision"]
    empty = pl.DataFrame()
    return decision_entry(exp, projections=empty, registry_peaks=empty, capacity=empty, total_bill=None, owners={},
                          meta={}, history=empty, values_per_point={})


def _card(exp: dict) -> dict:
    d = _decision(exp)
    share = exp.get("treated_share") or {}
    return {
        "name": _name(exp), "anchor": _anchor(exp), "control": exp["control_cell"], "owner": d.get("owner"),
        "treated_now": share.get("now_pct"), "d": d,
        "cost": exp["incremental_cost_usd_30d"], "low": exp["ci_low_usd_30d"], "high": exp["ci_high_usd_30d"],
        "bill": exp.get("bill_change_usd_30d"), "bill_low": exp.get("bill_ci_low_usd_30d"),
        "bill_high": exp.get("bill_ci_high_usd_30d"),
        "history_png": history_chart(d.get("history", []), f"{_name(exp)} · cost vs not shipping by day"),
    }


def _summary(experiments: list[dict]) -> dict:
    scale = interval_scale([v for e in experiments
                            for v in (e["ci_low_usd_30d"], e["ci_high_usd_30d"], e["incremental_cost_usd_30d"])])
    rows = []
    for e in experiments:
        cost = e["incremental_cost_usd_30d"]
        rows.append({
            "name": _name(e), "anchor": _anchor(e), "control": e["control_cell"], "cost": cost,
            "low": e["ci_low_usd_30d"], "high": e["ci_high_usd_30d"], "bill": e.get("bill_change_usd_30d"),
            "bill_low": e.get("bill_ci_low_usd_30d"), "bill_high": e.get("bill_ci_high_usd_30d"),
            "strip": interval_strip(cost or 0.0, e["ci_low_usd_30d"] or 0.0, e["ci_high_usd_30d"] or 0.0, scale,
                                    _name(e)),
            "business": e.get("business_metrics", []),
            "flag_kinds": sorted({f["kind"] for f in e["flags"]}),
        })
    return {"axis": scale, "rows": rows}


def _calibration(exp: dict) -> dict:
    moved = sum(1 for s in exp["services"] if s["significant"])
    low, high = exp["ci_low_usd_30d"], exp["ci_high_usd_30d"]
    contains_zero = low is not None and high is not None and low <= 0 <= high
    clean = contains_zero and moved == 0
    verdict = ("Clean: indistinguishable from $0 and no service moved." if clean else
               f"Not clean: {'the interval excludes $0' if not contains_zero else f'{moved} service(s) moved'}; "
               "check the allocation split and the tracing before trusting the other experiments.")
    return {"name": _name(exp), "cost": exp["incremental_cost_usd_30d"], "low": low, "high": high,
            "moved": moved, "tested": len(exp["services"]), "clean": clean, "verdict": verdict}


def _latency_text(svc: dict) -> str:
    lat = svc.get("latency")
    if not lat:
        return "n/a"
    return "; ".join(f"{q} {_pct(lat.get(f'{q}_delta_pct'))} [{_pct(lat.get(f'{q}_ci_low_pct'))}, "
                     f"{_pct(lat.get(f'{q}_ci_high_pct'))}]" for q in ("p50", "p95"))


def _capacity_text(cap_rows: pl.DataFrame, service: str, experiment_id: str, cell: str) -> str:
    if not cap_rows.height:
        return "n/a"
    base = cap_rows.filter((pl.col("service") == service) & (pl.col("scenario") == "baseline"))
    roll = cap_rows.filter((pl.col("service") == service) & (pl.col("scenario") == "rollout")
                           & (pl.col("experiment_id") == experiment_id) & (pl.col("cell") == cell))
    if not base.height or not roll.height or base["instances_needed"][0] is None:
        return "n/a"
    return (f"{base['instances_needed'][0]} → {roll['instances_needed'][0]} "
            f"[{roll['instances_needed_low'][0]}, {roll['instances_needed_high'][0]}] "
            f"at {roll['peak_requests_per_s'][0]:,.0f} req/s")


def _service_row(s: dict, exp: dict, capacity: pl.DataFrame) -> dict:
    return {**{k: s.get(k) for k in (
        "service", "owner", "delta_pct", "ci_low_pct", "ci_high_pct", "work_delta_pct", "work_ci_low_pct",
        "work_ci_high_pct", "mde_pct", "work_mde_pct", "q_value", "cost_model", "priced_on",
        "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d")},
        "latency_text": _latency_text(s),
        "capacity_text": _capacity_text(capacity, s["service"], exp["experiment_id"], exp["cell"])}


def _detail(exp: dict, *, universes: pl.DataFrame, history: pl.DataFrame, models: dict[str, FittedCostModel],
            capacity: pl.DataFrame, window: str, fit_cache: dict) -> dict:
    name = _name(exp)
    moved = sorted((s for s in exp["services"] if s["significant"]), key=lambda s: -(s["incremental_cost_usd_30d"] or 0.0))
    quiet = [s for s in exp["services"] if not s["significant"]]
    charts = []
    for s in moved:
        service, model, images = s["service"], models.get(s["service"]), []
        frame = universes.filter(
            (pl.col("experiment_id") == exp["experiment_id"]) & (pl.col("cell") == exp["cell"]) & (pl.col("service") == service)
        ) if universes.height else universes
        if frame.height:
            images.append({"alt": f"{service}: hourly cost not shipped vs shipped",
                           "png": universe_chart(frame, f"{service} · hourly cost {window} · {name} not shipped vs "
                                                        "shipped to 100%", model)})
        svc_history = history.filter(pl.col("service") == service) if history.height and model is not None else pl.DataFrame()
        if svc_history.height:
            rollout_peak, driver = None, model_driver(model, svc_history)
            delta = s.get("work_delta_pct") if s.get("priced_on") == "work" else s["delta_pct"]
            if svc_history[driver].drop_nulls().len() and delta is not None:
                rollout_peak = float(svc_history[driver].max()) * max(1.0 + delta / 100.0, 0.0)
            key = (service, round(rollout_peak or 0.0))
            if key not in fit_cache:
                error = "" if model.model_error_pct is None or not math.isfinite(model.model_error_pct) \
                    else f" · MAPE {model.model_error_pct:.1f}%"
                fit_cache[key] = fit_chart(svc_history, model, f"{service} · cost vs load {window} · "
                                                               f"{model.cost_model} ({model.kind}){error}", rollout_peak)
            images.append({"alt": f"{service}: cost vs load with the {model.kind} model", "png": fit_cache[key]})
        if images:
            charts.append({"service": service, "images": images})
    return {
        "name": name, "anchor": _anchor(exp), "control": exp["control_cell"], "kind": _decision(exp).get("kind"),
        "cost": exp["incremental_cost_usd_30d"], "low": exp["ci_low_usd_30d"], "high": exp["ci_high_usd_30d"],
        "flags": exp["flags"], "moved": [_service_row(s, exp, capacity) for s in moved],
        "quiet": [_service_row(s, exp, capacity) for s in quiet],
        "headroom": _decision(exp).get("static_headroom", []), "charts": charts,
    }


def _capacity_rows(capacity: pl.DataFrame) -> list[dict]:
    rows = []
    for r in capacity.sort("service", "scenario", "experiment_id", nulls_last=False).iter_rows(named=True) \
            if capacity.height else []:
        rpi = r["requests_per_instance_s"]
        rows.append({
            "service": r["service"],
            "scenario": "today" if r["scenario"] == "baseline" else f"100% {r['experiment_id']}:{r['cell']}",
            "peak": f"{r['peak_requests_per_s']:,.1f}", "per_instance": "n/a" if rpi is None else f"{rpi:,.1f}",
            "needed": "n/a" if r["instances_needed"] is None else str(r["instances_needed"]),
            "added": "" if r["scenario"] == "baseline" or r["additional_instances"] is None
            else f"{r['additional_instances']:+d}",
        })
    return rows


OUTCOME_WORDS = {"on_target": "on target", "under_projected": "under-projected", "over_projected": "over-projected"}


def _projection_calibration(report: dict) -> dict | None:
    """Did the projections come true? One row per shipped cell (report["calibration"]);
    None while nothing has shipped."""
    cal = report.get("calibration")
    if not cal:
        return None
    cells = [{
        "name": f"{c['experiment_id']}:{c['cell']}", "ship_date": c["ship_date"], "decision_as_of": c["decision_as_of"],
        "projected": c["projected_usd_30d"], "projected_low": c["projected_ci_low_usd_30d"],
        "projected_high": c["projected_ci_high_usd_30d"], "realized": c["realized_usd_30d"],
        "realized_low": c["realized_ci_low_usd_30d"], "realized_high": c["realized_ci_high_usd_30d"],
        "error_pct": c.get("error_pct"), "verdict": OUTCOME_WORDS.get(c["verdict"], c["verdict"]),
        "missed": c["verdict"] != "on_target",
    } for c in cal["cells"]]
    return {"cells": cells, "coverage": cal.get("coverage"), "mean_signed_error_pct": cal.get("mean_signed_error_pct"),
            "systematic_bias": bool(cal.get("systematic_bias"))}


def _footer(report: dict) -> dict:
    tc = report.get("trace_completeness", {})
    dq = report.get("data_quality", {})
    return {
        "services": [{**s, "kind": s.get("kind"), "drift_reasons": s.get("drift_reasons"),
                      "error": "n/a" if s.get("model_error_pct") is None else f"{s['model_error_pct']:.1f}%"}
                     for s in report.get("services", [])],
        "overall": tc.get("overall"), "broken": tc.get("broken_edges", []), "coverage": tc.get("services", []),
        "quarantined": ", ".join(f"{k}: {v}" for k, v in (dq.get("quarantined") or {}).items()),
        "unattributed": dq.get("unattributed_cost_usd"),
    }


def _script_json(report: dict) -> Markup:
    """report.json for the page's readers: valid JSON that cannot close the script element."""
    text = json.dumps(report, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_html(report: dict, *, universes: pl.DataFrame, history: pl.DataFrame,
                models: dict[str, FittedCostModel], capacity: pl.DataFrame, window: str) -> str:
    fit_cache: dict = {}
    experiments = sorted(report["experiments"], key=lambda e: -(e["incremental_cost_usd_30d"] or 0.0))
    real = [e for e in experiments if _decision(e).get("kind") != "aa"]
    calibration = [e for e in experiments if _decision(e).get("kind") == "aa"]
    return _ENV.get_template("report.html.j2").render(
        as_of=report["as_of"], css=CSS, colours={"grey": GREY, "blue": BLUE, "red": RED, "orange": ORANGE},
        severe=SEVERE_FLAGS, verdict_words=VERDICT_WORDS, cards=[_card(e) for e in real],
        overview=decision.overview([{**e, "decision": _decision(e)} for e in real]), summary=_summary(real),
        calibration=[_calibration(e) for e in calibration], projection_calibration=_projection_calibration(report),
        owners=report.get("owners", []),
        details=[_detail(e, universes=universes, history=history, models=models, capacity=capacity, window=window,
                         fit_cache=fit_cache) for e in real + calibration],
        capacity={"rows": _capacity_rows(capacity)}, window=window, footer=_footer(report), glossary=GLOSSARY,
        report_json=_script_json(report),
    )


def build_html_report(conn: duckdb.DuckDBPyConnection, report: dict, projection_days: int) -> str:
    """Everything the page needs for the report's as-of day, read from the warehouse."""
    as_of = dt.date.fromisoformat(report["as_of"])
    start, end = trailing_window(as_of, projection_days)
    window = f"{start:%Y-%m-%d}..{as_of:%Y-%m-%d}"

    def frame(table: str, sql: str, params: list) -> pl.DataFrame:
        return read_frame(conn, sql, params) if table_exists(conn, table) else pl.DataFrame()

    universes = frame("main.projection_universes", "SELECT * FROM main.projection_universes WHERE as_of = ?", [as_of])
    history = frame(
        "main.service_hourly_history",
        "SELECT * FROM main.service_hourly_history WHERE hour >= ? AND hour < ? ORDER BY service, hour",
        [start, end],
    )
    capacity = frame("main.capacity_plan", "SELECT * FROM main.capacity_plan WHERE as_of = ?", [as_of])
    registry = frame("main.cost_model_registry", "SELECT service, model_json FROM main.cost_model_registry WHERE as_of = ?", [as_of])
    models = {
        r["service"]: FittedCostModel.from_dict(json.loads(r["model_json"])) for r in registry.iter_rows(named=True)
    } if registry.height else {}
    return render_html(report, universes=universes, history=history, models=models, capacity=capacity, window=window)
