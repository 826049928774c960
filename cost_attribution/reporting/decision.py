"""What a product manager and a finance partner decide from: per experiment cell, the two
costs in proportion (annualized, share of the bill, per point of each business metric),
whether the cost is distinguishable from $0 and from what size it would be, the net value
where a metric point has a configured value, and the flags in plain words with the owner
to talk to. Pure functions over report rows and warehouse frames; no Dagster, no HTML.

Minimum detectable effect (MDE): the smallest change the current traffic detects with
80% power at the report's interval: the interval's half width (always-valid or fixed
horizon, whichever produced it) plus z(0.8) standard errors. For a fixed-horizon 95%
interval that is the textbook (1.96 + 0.84) x SE.
"""

from __future__ import annotations

import math

import polars as pl
from scipy.stats import norm

from cost_attribution.estimation.projection import HORIZON_DAYS

DAYS_PER_YEAR = 365.0
POWER = 0.8
Z95 = float(norm.ppf(0.975))
Z_POWER = float(norm.ppf(POWER))

# Flags in plain words: (headline, what to do). {service}, {owner} are filled in.
PLAIN_FLAGS = {
    "deprecated_dependency": ("Leans on a deprecated service", "Shipping grows traffic to {service}, which is being retired."),
    "new_dependency": ("Adds a new dependency", "The treatment calls {service}, which its control never does."),
    "low_trace_coverage": ("Blind spot in the traces",
                           "Part of {service}'s traffic is invisible to tracing, so its change is estimated indirectly "
                           "or not at all."),
    "low_trace_coverage_day": ("A day with thin traces",
                               "{detail}: its traffic counts only where it reached a member, so the numbers rest on "
                               "less data and their intervals are wider; they are shown rather than withheld."),
    "cost_over_threshold": ("Above the cost alert threshold", "The 30-day cost passes the configured alert threshold."),
    "capacity_tipping_point": ("Fleet would have to grow",
                               "At 100% rollout {service}'s fixed fleet runs past its capacity and must be resized."),
    "beyond_historical_peak": ("Priced beyond anything seen",
                               "At 100% rollout {service} peaks above its busiest hour on record: its cost curve is "
                               "extrapolated there."),
    "static_headroom": ("Fixed fleet: free until its tipping point", "{detail}"),
    "drifted_cost_model": ("Recent price change", "{service}'s cost per request changed recently; priced at the new rate."),
    "unpriced_service": ("Not priced", "{service} moves but has no cost model or production volume, so it adds $0 here."),
    "sample_ratio_mismatch": ("Split looks wrong",
                              "Members did not land in the cells in the planned proportions; every number of this "
                              "experiment is suspect."),
}


DRIVER_UNITS = {"requests": "requests", "cpu_seconds": "CPU-seconds"}


def driver_unit(driver: str | None) -> str:
    """The load unit a cost model is driven by, in words."""
    return DRIVER_UNITS.get(driver or "requests", (driver or "requests").replace("_", " "))


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def mde(se: float | None, ci_low: float | None, ci_high: float | None) -> float | None:
    """Minimum detectable effect (same unit as the inputs): interval half width + z(0.8) SE."""
    if not _finite(se):
        return None
    half = (ci_high - ci_low) / 2.0 if _finite(ci_low) and _finite(ci_high) else Z95 * se
    return abs(half) + Z_POWER * abs(se)


def service_mdes(deltas: pl.DataFrame) -> dict[tuple[str, str, str], dict]:
    """(experiment_id, cell, service) -> {mde_pct, work_mde_pct} from main.usage_deltas rows
    (relative deltas, their SEs and intervals; member counts in n_treatment / n_control)."""
    out = {}
    for r in deltas.iter_rows(named=True) if deltas.height else []:
        requests = mde(r.get("se"), r.get("ci_low"), r.get("ci_high"))
        work = mde(r.get("work_se"), r.get("work_ci_low"), r.get("work_ci_high"))
        out[(r["experiment_id"], r["cell"], r["service"])] = {
            "mde_pct": None if requests is None else round(requests * 100.0, 3),
            "work_mde_pct": None if work is None else round(work * 100.0, 3),
            "members_treatment": r.get("n_treatment"),
            "members_control": r.get("n_control"),
        }
    return out


def annualize(usd_30d: float | None) -> float | None:
    return None if usd_30d is None else round(usd_30d * DAYS_PER_YEAR / HORIZON_DAYS, 2)


def _money(value: float) -> str:
    return f"{'-' if value < 0 else ''}${abs(value):,.0f}"


def reading(point: float | None, low: float | None, high: float | None, *, what: str,
            detectable_usd: float | None = None, detectable_pct: float | None = None,
            detectable_service: str | None = None) -> dict:
    """A one-line reading of a 30-day dollar figure with its 95% interval.
    verdict: "adds" (interval above $0), "saves" (below), "unclear" (crosses $0)."""
    if not (_finite(point) and _finite(low) and _finite(high)):
        return {"verdict": "unknown", "text": f"{what}: not priced (no cost model or no production volume)."}
    if low > 0:
        return {"verdict": "adds", "text": f"{what}: likely between {_money(low)} and {_money(high)} more per 30 days."}
    if high < 0:
        return {"verdict": "saves",
                "text": f"{what}: likely saves between {_money(-high)} and {_money(-low)} per 30 days."}
    text = f"{what}: indistinguishable from $0 at this traffic (between {_money(low)} and {_money(high)})"
    if _finite(detectable_pct) and detectable_service:
        text += f"; detectable from about {detectable_pct:.1f}% change in {detectable_service}'s load"
        if _finite(detectable_usd):
            text += f" (about {_money(detectable_usd)} per 30 days)"
    return {"verdict": "unclear", "text": text + "."}


def detectable_size(services: list[dict]) -> tuple[float | None, float | None, str | None]:
    """(usd_30d, pct, service): the size of cost the current traffic would detect, taken
    from the priced service with the widest dollar interval (the one the verdict hinges on):
    its MDE on the metric it is priced on, converted to dollars at its own $/% slope."""
    best = None
    for s in services:
        width = (s.get("ci_high_usd_30d") or 0.0) - (s.get("ci_low_usd_30d") or 0.0)
        metric = "work_" if s.get("priced_on") == "work" else ""
        lo, hi = s.get(f"{metric}ci_low_pct"), s.get(f"{metric}ci_high_pct")
        pct = s.get("work_mde_pct" if metric else "mde_pct")
        if width <= 0 or not (_finite(lo) and _finite(hi) and _finite(pct)) or hi <= lo:
            continue
        if best is None or width > best[0]:
            best = (width, pct * width / (hi - lo), pct, s["service"])
    return (None, None, None) if best is None else best[1:]


def bill_shares(services: list[dict], cost: float | None, projections: pl.DataFrame,
                total_bill_30d: float | None) -> dict:
    """Cost as a share of the moved services' 30-day bill and of the whole bill.
    projections: main.cost_projections rows of the cell (baseline_cost_usd_30d per service)."""
    moved = {s["service"] for s in services if s["significant"]}
    base = 0.0
    if projections.height and moved:
        base = float(projections.filter(pl.col("service").is_in(sorted(moved)))["baseline_cost_usd_30d"]
                     .fill_null(0.0).sum())
    return {
        "affected_services": sorted(moved),
        "affected_services_bill_usd_30d": round(base, 2) if base > 0 else None,
        "share_of_affected_services_pct": round(100.0 * cost / base, 3) if _finite(cost) and base > 0 else None,
        "total_bill_usd_30d": None if total_bill_30d is None else round(total_bill_30d, 2),
        "share_of_total_bill_pct": round(100.0 * cost / total_bill_30d, 4)
        if _finite(cost) and total_bill_30d else None,
    }


def metric_economics(metric: dict, cost: float | None, cost_low: float | None, cost_high: float | None,
                     value_per_point_usd: float | None) -> dict:
    """Cost per +1% of a business metric and, when a point has a value (USD per 30 days
    for +1% of the metric), the net value and P(net > 0) under normal approximations of
    both intervals (independent)."""
    d, lo, hi = metric.get("delta_pct"), metric.get("ci_low_pct"), metric.get("ci_high_pct")
    out = {"metric": metric["metric"], "delta_pct": d, "ci_low_pct": lo, "ci_high_pct": hi,
           "metric_clear": bool(_finite(lo) and _finite(hi) and (lo > 0 or hi < 0)),
           "cost_per_point_usd_30d": round(cost / d, 2) if _finite(cost) and _finite(d) and d != 0 else None,
           "value_per_point_usd": value_per_point_usd, "net_value_usd_30d": None,
           "net_value_usd_year": None, "p_net_positive": None}
    if not (_finite(value_per_point_usd) and _finite(d) and _finite(cost)):
        return out
    net = value_per_point_usd * d - cost
    sd_value = abs(value_per_point_usd) * ((hi - lo) / (2 * Z95) if _finite(lo) and _finite(hi) else 0.0)
    sd_cost = (cost_high - cost_low) / (2 * Z95) if _finite(cost_low) and _finite(cost_high) else 0.0
    sd = math.hypot(sd_value, sd_cost)
    p = (1.0 if net > 0 else 0.0 if net < 0 else 0.5) if sd == 0 else float(norm.cdf(net / sd))
    out.update(net_value_usd_30d=round(net, 2), net_value_usd_year=annualize(net), p_net_positive=round(p, 4))
    return out


def overview(cells: list[dict]) -> str:
    """One sentence over all (non-calibration) cells: how many clearly add, clearly save, or cannot be told from $0."""
    verdicts = [c["decision"]["cost_reading"]["verdict"] for c in cells]
    parts = [(verdicts.count("adds"), "clearly add{s} cost"), (verdicts.count("saves"), "clearly save{s} money"),
             (verdicts.count("unclear"), "cannot be told from $0 at this traffic yet"),
             (verdicts.count("unknown"), "{are} not priced")]
    words = [f"{n} " + text.format(s="" if n != 1 else "s", are="are" if n != 1 else "is") for n, text in parts if n]
    return (f"{len(cells)} experiment cell{'s' if len(cells) != 1 else ''}: " + "; ".join(words) + ".") if cells else ""


def plain_flags(flags: list[dict], owners: dict[str, str | None], experiment_owner: str | None) -> list[dict]:
    """Each flag as {kind, title, text, service, owner}: a sentence a PM reads, and whom to ask."""
    out = []
    for f in flags:
        title, text = PLAIN_FLAGS.get(f["kind"], (f["kind"].replace("_", " ").capitalize(), "{service}"))
        service = f.get("service")
        owner = owners.get(service) if service else experiment_owner
        out.append({"kind": f["kind"], "service": service, "owner": owner, "title": title,
                    "text": text.format(service=service or "the experiment", detail=f.get("detail") or ""),
                    "detail": f.get("detail")})
    return out


def peak_flags(services: list[dict], registry: pl.DataFrame, projections: pl.DataFrame) -> list[dict]:
    """beyond_historical_peak: a service the cell raises, priced by a fitted curve (ml),
    whose load at 100% rollout passes the highest hourly load the curve was fitted on:
    its cost there is extrapolated, not observed."""
    if not registry.height or not projections.height:
        return []
    peaks = {r["service"]: (r.get("observed_peak"), driver_unit(r.get("driver"))) for r in registry.iter_rows(named=True)}
    out = []
    for s in services:
        if not s["significant"] or s.get("cost_model") != "ml":
            continue
        row = projections.filter((pl.col("service") == s["service"]) & (pl.col("delta_used") > 0))
        peak = row["peak_requests_per_hour"][0] if row.height else None
        seen, unit = peaks.get(s["service"], (None, "requests"))
        if _finite(peak) and _finite(seen) and seen > 0 and peak > seen * 1.0001:
            out.append({"kind": "beyond_historical_peak", "service": s["service"],
                        "detail": f"peak load at 100% rollout {peak:,.0f} {unit}/h is {peak / seen - 1:.0%} above "
                                  f"the busiest hour the model was fitted on ({seen:,.0f} {unit}/h)"})
    return out


def static_headroom(services: list[dict], registry: pl.DataFrame, projections: pl.DataFrame,
                    capacity: pl.DataFrame) -> list[dict]:
    """For each static service the cell moves significantly: the modelled capacity (the cost model's tipping point),
    today's peak, the peak at 100% rollout, the headroom before and after, and the capacity
    plan's instance count (observed-throughput floor, so it can ask for more instances
    than the cost model prices: the two are reconciled in `explanation`)."""
    if not registry.height:
        return []
    caps = {r["service"]: (r["capacity_requests_per_hour"], driver_unit(r.get("driver")))
            for r in registry.iter_rows(named=True) if r.get("scaling") == "static"}
    out = []
    for s in services:
        if not s["significant"]:
            continue
        cap, unit = caps.get(s["service"], (None, "requests"))
        if not _finite(cap) or cap <= 0:
            continue
        row = projections.filter(pl.col("service") == s["service"]) if projections.height else projections
        if not row.height:
            continue
        peak_after = row["peak_requests_per_hour"][0]
        delta = row["delta_used"][0]
        peak_now = peak_after / (1.0 + delta) if _finite(peak_after) and _finite(delta) and delta > -1 else None
        plan = s.get("capacity") or {}
        entry = {
            "service": s["service"], "load_unit": unit, "capacity_per_hour": round(cap, 1),
            "peak_per_hour_today": None if peak_now is None else round(peak_now, 1),
            "peak_per_hour_rollout": None if not _finite(peak_after) else round(peak_after, 1),
            "headroom_today_pct": None if not peak_now else round(100.0 * (cap / peak_now - 1.0), 1),
            "headroom_rollout_pct": None if not _finite(peak_after) or not peak_after
            else round(100.0 * (cap / peak_after - 1.0), 1),
            "tipping_delta_pct": None if not peak_now else round(100.0 * (cap / peak_now - 1.0), 1),
            "plan_instances_today": _plan_today(plan),
            "plan_instances_rollout": plan.get("instances_needed"),
        }
        crosses = entry["headroom_rollout_pct"] is not None and entry["headroom_rollout_pct"] < 0
        entry["crosses_tipping_point"] = crosses
        entry["explanation"] = _headroom_text(entry, crosses)
        out.append(entry)
    return out


def _plan_today(plan: dict) -> int | None:
    needed, added = plan.get("instances_needed"), plan.get("additional_instances")
    return None if needed is None or added is None else needed - added


def _headroom_text(e: dict, crosses: bool) -> str:
    unit = e["load_unit"]
    head = (f"{e['service']} is a fixed fleet: its cost model assumes it absorbs up to "
            f"{e['capacity_per_hour']:,.0f} {unit}/h (its tipping point) before it must grow")
    if e["peak_per_hour_today"] is None:
        return head + "."
    text = (f"{head}. Today's peak is {e['peak_per_hour_today']:,.0f} {unit}/h ({e['headroom_today_pct']:.0f}% "
            f"headroom); at 100% rollout it is {e['peak_per_hour_rollout']:,.0f} {unit}/h "
            f"({e['headroom_rollout_pct']:.0f}% headroom), ")
    text += ("past the tipping point, so instances and cost rise." if crosses else
             "still under the tipping point, so the bill does not move.")
    if e["plan_instances_today"] and e["plan_instances_rollout"] and e["plan_instances_rollout"] != e["plan_instances_today"]:
        text += (f" The capacity plan's {e['plan_instances_today']} -> {e['plan_instances_rollout']} instances is "
                 "sized on the requests per instance the fleet actually served at its busiest hour (a floor of "
                 "its true capacity): a conservative count for planning, not a cost the model expects.")
    return text


def history_points(experiment_costs: pl.DataFrame) -> list[dict]:
    """The estimate as it stood on each as-of day: main.experiment_costs rows of one cell."""
    cols = ("incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d",
            "bill_change_usd_30d", "bill_ci_low_usd_30d", "bill_ci_high_usd_30d")
    if not experiment_costs.height:
        return []
    return [
        {"as_of": r["as_of"].isoformat(), **{c: None if not _finite(r.get(c)) else round(r[c], 2) for c in cols}}
        for r in experiment_costs.sort("as_of").iter_rows(named=True)
    ]
