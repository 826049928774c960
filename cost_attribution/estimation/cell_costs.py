"""The cost of shipping every experiment cell, as frames: the pure core of `cost_projections`.

For each (cell, service) the effect on the service's cost driver is chosen first
(`driver_effect`): work (busy time) when the cost model is driven by CPU seconds or
when only the work moved, request volume otherwise. Every running experiment's
treated share is taken out of the observed load with those effects, and each cell is
priced against both baselines (`projection.cell_curves`): everyone in control
(incremental cost) and the days as they were (bill change).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps

from cost_attribution.attribution.call_graph import CallerShares
from cost_attribution.estimation import projection, shrinkage
from cost_attribution.estimation.models import FittedCostModel
from cost_attribution.estimation.production_calibration import (
    ProductionScale,
    combine_cells,
    production_scale,
    reconcile,
)

# (experiment_id, cell, control_cell, services, metrics) -> correlation matrix of the deltas, or None
Correlation = Callable[[str, str, str, list[str], list[str]], "np.ndarray | None"]


@dataclass(frozen=True)
class Shrunk:
    """An effect's empirical-Bayes posterior (estimation.shrinkage): its mean, 95%
    interval, probability of no effect, and quantile table (cdf, deltas) for joint draws."""

    mean: float
    low: float
    high: float
    null_probability: float
    cdf: np.ndarray
    deltas: np.ndarray

    @property
    def median(self) -> float:
        return float(np.interp(0.5, self.cdf, self.deltas))


@dataclass(frozen=True)
class Effect:
    """One cell's estimated relative effect on one service's cost driver."""

    experiment_id: str
    cell: str
    service: str
    metric: str  # "work" | "requests"
    delta: float
    ci_low: float
    ci_high: float
    significant: bool
    source: str = "traces"  # "traces" | "traces+production"
    shrunk: Shrunk | None = None
    # Work effects: (requests delta, se) and (work per request delta, se), the two parts of
    # 1 + work delta = (1 + requests delta) x (1 + work per request delta), shrunk apart.
    parts: tuple[tuple[float, float], tuple[float, float]] | None = None
    # Var(control mean) / mean^2 of the metric priced: what the cells of one experiment
    # share, through their common control, in their measurement error.
    control_rel_var: float | None = None

    @property
    def centre(self) -> float:
        """What the point estimate uses: the posterior median under shrinkage (the estimate
        that minimises the expected absolute error, and exactly no effect wherever "no
        effect" is the likelier reading); under the significance gate the delta where
        significant, else no effect."""
        if self.shrunk is not None:
            return self.shrunk.median
        return self.delta if self.significant else 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        """The 95% interval the dollars are priced at: the posterior's under shrinkage."""
        if self.shrunk is not None:
            return self.shrunk.low, self.shrunk.high
        return self.ci_low, self.ci_high

    @property
    def half_width(self) -> float:
        return max(self.ci_high - self.delta, self.delta - self.ci_low, 1e-6)

    @property
    def best(self) -> tuple[float, float]:
        """(estimate, 95% half width) the traces give: the posterior's under shrinkage."""
        if self.shrunk is not None:
            return self.shrunk.mean, max((self.shrunk.high - self.shrunk.low) / 2.0, 1e-6)
        return self.delta, self.half_width


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def driver_effect(row: dict, model: FittedCostModel, fdr_q: float, interval: str = "fixed") -> Effect | None:
    """The effect that moves this service's cost: work where the model is driven by CPU
    seconds (or where requests got heavier without getting more numerous), request
    volume otherwise. None when neither has a finite interval (no control traffic).

    interval "fixed": the dollar interval is drawn from the delta's 95% fixed-horizon
    interval (delta +- 1.96 se); "sequential": from the always-valid interval the delta
    is reported with (wider: it stays valid however often the report is re-read)."""
    requests_ok = _finite(row["delta"], row["ci_low"], row["ci_high"])
    work_ok = _finite(row.get("work_delta"), row.get("work_ci_low"), row.get("work_ci_high"))
    requests_moved = row["q_value"] is not None and row["q_value"] < fdr_q
    work_moved = row.get("work_q_value") is not None and row["work_q_value"] < fdr_q
    cpu_driven = (model.features or ["requests"])[0] == "cpu_seconds"
    if work_ok and (cpu_driven or (work_moved and not requests_moved) or not requests_ok):
        metric, prefix = "work", "work_"
    elif requests_ok:
        metric, prefix = "requests", ""
    else:
        return None
    delta = float(row[f"{prefix}delta"])
    low, high = float(row[f"{prefix}ci_low"]), float(row[f"{prefix}ci_high"])
    se = row.get(f"{prefix}se")
    if interval == "fixed" and _finite(se):
        low, high = delta - projection.Z95 * se, delta + projection.Z95 * se
    parts = None
    if metric == "work" and _finite(row["delta"], row.get("se"), row.get("wpr_delta"), row.get("wpr_se")):
        parts = ((float(row["delta"]), float(row["se"])), (float(row["wpr_delta"]), float(row["wpr_se"])))
    shared = row.get(f"{prefix}control_rel_var")
    return Effect(row["experiment_id"], row["cell"], row["service"], metric, delta, low, high, bool(row["significant"]),
                  parts=parts, control_rel_var=float(shared) if _finite(shared) else None)


def _share_arrays(shares: pl.DataFrame, hours: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """(experiment_id, cell) -> share per hour of `hours` (0 where nothing was treated)."""
    out = {}
    index = {h: i for i, h in enumerate(hours.astype("datetime64[us]").tolist())}
    for (experiment_id, cell), group in shares.group_by("experiment_id", "cell", maintain_order=True):
        values = np.zeros(len(hours))
        for hour, share in zip(group["hour"].dt.replace_time_zone(None).to_list(), group["share"].to_list()):
            i = index.get(hour)
            if i is not None:
                values[i] = share
        out[(experiment_id, cell)] = values
    return out


def calibrate_with_production(
    effects: dict[tuple[str, str, str], Effect],
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    share_of: dict[str, dict],
    share_rel_se: dict[tuple[str, str], float] | None = None,
) -> tuple[dict[tuple[str, str, str], Effect], set[tuple[str, str]]]:
    """Each (experiment, service) whose treated share started inside the load history:
    its cells' deltas combined with what production load says (production_calibration),
    where the two agree. Returns the effects and the (experiment, service) pairs whose
    load does not carry the test at all (nothing to take out of it).
    series: service -> (hour starts, hourly load); share_of: service -> {(experiment,
    cell): share at those hours}; share_rel_se: (experiment, cell) -> relative standard
    error of the cell's share (attribution.treated_share.share_errors). Production's scale
    is the jump over the traces' sum of share x delta: an error in the shares is an error
    in the scale, added to the placebo's."""
    groups: dict[tuple[str, str], list[Effect]] = {}
    for effect in effects.values():
        groups.setdefault((effect.experiment_id, effect.service), []).append(effect)
    out, not_in_load = dict(effects), set()
    for (experiment_id, service), cells in groups.items():
        service_hours, values = series[service]
        shares = share_of[service]
        implied = np.zeros(len(service_hours))
        for effect in cells:
            if (experiment_id, effect.cell) in shares:
                implied += shares[(experiment_id, effect.cell)] * effect.centre
        moved = [e for e in cells if e.significant and e.delta != 0]
        if not implied.any() or not moved:
            continue
        scale = _with_share_error(
            production_scale(service_hours, values, implied), cells, shares, experiment_id, share_rel_se or {}
        )
        trace_relative_se = min(e.best[1] / projection.Z95 / max(abs(e.best[0]), 1e-9) for e in moved)
        verdict = reconcile(scale, trace_relative_se)
        if verdict == "absent":
            not_in_load.add((experiment_id, service))
        combined = None
        if verdict == "agrees":
            treated = implied != 0
            weights = np.array([shares[(experiment_id, e.cell)][treated].mean() if (experiment_id, e.cell) in shares
                                else 0.0 for e in moved])
            combined = combine_cells([e.best for e in moved], weights, scale, float(implied[treated].mean()),
                                     correlation=_shared_control_correlation(moved))
        for i, effect in enumerate(moved):
            if combined is not None:
                delta, half = combined[i]
                effect = Effect(experiment_id, effect.cell, service, effect.metric, delta, delta - half, delta + half,
                                True, "traces+production",
                                shrunk=None if effect.shrunk is None else _normal_shrunk(delta, half))
            elif verdict in ("absent", "disagrees"):
                effect = dataclasses.replace(effect, source=f"traces (production {verdict})")
            out[(experiment_id, effect.cell, service)] = effect
    return out, not_in_load


def _with_share_error(scale: ProductionScale | None, cells: list[Effect], shares: dict, experiment_id: str,
                      share_rel_se: dict[tuple[str, str], float]) -> ProductionScale | None:
    """The scale's standard error with the shares' own (cells' shares err independently:
    they are disjoint sets of members)."""
    if scale is None:
        return None
    parts = [(shares[(experiment_id, e.cell)].mean() * e.centre, share_rel_se.get((experiment_id, e.cell), 0.0))
             for e in cells if (experiment_id, e.cell) in shares]
    total = sum(p for p, _ in parts)
    if total == 0:
        return scale
    relative = float(np.sqrt(sum((p * r) ** 2 for p, r in parts))) / abs(total)
    return dataclasses.replace(scale, se=float(np.hypot(scale.se, scale.scale * relative)))


def _shared_control_correlation(cells: list[Effect]) -> np.ndarray:
    """Correlation of the cells' measured deltas through their common control:
    Cov(d_i, d_j) = (1 + d_i)(1 + d_j) Var(control mean) / mean^2 (delta method)."""
    k = len(cells)
    corr = np.eye(k)
    shared = [e.control_rel_var for e in cells]
    if k < 2 or any(v is None or v < 0 for v in shared):
        return corr
    relative = float(np.mean(shared))
    sd = np.array([e.half_width / projection.Z95 for e in cells])
    for i in range(k):
        for j in range(i + 1, k):
            cov = (1 + cells[i].delta) * (1 + cells[j].delta) * relative
            corr[i, j] = corr[j, i] = float(np.clip(cov / (sd[i] * sd[j]), -0.99, 0.99))
    return corr


PRODUCT_DRAWS = 4000


def _normal_shrunk(delta: float, half: float) -> Shrunk:
    """A normal posterior (e.g. traces and production combined) in Shrunk's form."""
    probabilities = np.linspace(0.0005, 0.9995, 801)
    deltas = delta + half / projection.Z95 * sps.norm.ppf(probabilities)
    return Shrunk(delta, delta - half, delta + half, 0.0, probabilities, deltas)


# Passes of shrinking callers before their callees: a chain of calls deeper than this keeps
# the last pass's implied deltas (they converge within a pass per level of the graph).
GRAPH_PASSES = 4


def _implied_by_callers(keys: list, slots: dict, totals: np.ndarray, spreads: np.ndarray,
                        callers: CallerShares) -> tuple[np.ndarray, np.ndarray]:
    """Per entry, the delta its service's callers imply (attribution.call_graph) and that
    implied delta's standard deviation, on the request-count entry of every effect. Only
    callers that moved count: one whose posterior median is exactly no change adds nothing,
    so an A/A's services keep their point mass at exactly no change."""
    count_entry = {key: slots[key][0] for key in keys}
    implied, variance = np.zeros(len(totals)), np.zeros(len(totals))
    for experiment_id, cell, service in keys:
        i = count_entry[(experiment_id, cell, service)]
        for caller, share in callers.get((experiment_id, service), ()):
            j = count_entry.get((experiment_id, cell, caller))
            if j is not None and totals[j] != 0.0:
                implied[i] += share * totals[j]
                variance[i] += (share * spreads[j]) ** 2
    return np.maximum(implied, shrinkage.MIN_RELATIVE), np.sqrt(variance)


def shrink_effects(
    effects: dict[tuple[str, str, str], Effect], callers: CallerShares | None = None
) -> dict[tuple[str, str, str], Effect]:
    """Every effect with its posterior under one prior fitted on all of the day's measured
    changes (estimation.shrinkage). A work effect with its two parts measured enters as
    both parts (request count, work per request), each shrunk on its own evidence; its
    posterior is that of their product, tabulated from draws.

    With the experiments' call graphs (`callers`), "no change" means "moved exactly as its
    callers imply": each service's request count is shrunk towards the delta its callers'
    shrunk deltas imply (attribution.call_graph), not towards 0, and carries the callers'
    uncertainty. A downstream move too small to stand out at the callee (a savings test's
    -5%) is then priced through the caller that causes it; a service that moved on its own
    (a new call) keeps its measurement. Callers are shrunk first: the graph is walked in
    passes until the implied deltas settle."""
    if not effects:
        return effects
    keys = list(effects)
    entries: list[tuple[float, float]] = []  # (delta, se) of every change that enters the prior
    slots: dict[tuple[str, str, str], list[int]] = {}
    for key in keys:
        effect = effects[key]
        measured = effect.parts or ((effect.delta, effect.half_width / projection.Z95),)
        slots[key] = list(range(len(entries), len(entries) + len(measured)))
        entries += measured
    delta, se = np.array([d for d, _ in entries]), np.array([e for _, e in entries])
    implied, implied_sd = np.zeros(len(entries)), np.zeros(len(entries))
    for attempt in range(GRAPH_PASSES if callers else 1):
        post = shrinkage.shrink(delta, se, centre=implied)[1].widened(implied_sd / (1.0 + implied))
        if not callers:
            break
        totals = (1.0 + implied) * (1.0 + post.medians()) - 1.0
        new, new_sd = _implied_by_callers(keys, slots, totals, (1.0 + totals) * post.sd(), callers)
        if (np.allclose(new, implied, atol=1e-6) and np.allclose(new_sd, implied_sd, atol=1e-6)) or attempt == GRAPH_PASSES - 1:
            break
        implied, implied_sd = new, new_sd
    means, nulls = (1.0 + implied) * (1.0 + post.mean()) - 1.0, post.null_probability()
    rng = np.random.default_rng(0)
    out = {}
    for key in keys:
        first, *rest = slots[key]
        if not rest:
            cdf, residuals = post.quantile_table(first)
            deltas = (1.0 + implied[first]) * (1.0 + residuals) - 1.0
            mean, null = float(means[first]), float(nulls[first])
        else:  # 1 + work delta = product of the parts' posteriors (independent)
            uniforms = rng.random((PRODUCT_DRAWS, len(slots[key])))
            factor = np.prod([(1.0 + implied[i]) * (1.0 + post.quantiles(i, uniforms[:, j]))
                              for j, i in enumerate(slots[key])], axis=0)
            deltas = np.sort(factor - 1.0)
            cdf = (np.arange(PRODUCT_DRAWS) + 0.5) / PRODUCT_DRAWS
            mean = float(np.prod([1.0 + means[i] for i in slots[key]]) - 1.0)
            null = float(np.prod([nulls[i] for i in slots[key]]))
        low, high = np.interp([0.025, 0.975], cdf, deltas)
        out[key] = dataclasses.replace(effects[key], shrunk=Shrunk(mean, float(low), float(high), null, cdf, deltas))
    return out


def _load_factors(effects: list[Effect], share_of: dict, n_hours: int, not_in_load: set) -> dict[str, np.ndarray]:
    """experiment_id -> 1 + sum_c share_c(h) x centre_c for one service's effects (1 where
    the service's load does not carry the experiment)."""
    factors: dict[str, np.ndarray] = {}
    for effect in effects:
        share = share_of.get((effect.experiment_id, effect.cell))
        factor = factors.setdefault(effect.experiment_id, np.ones(n_hours))
        if (effect.experiment_id, effect.service) in not_in_load:
            continue
        if share is not None and effect.centre != 0.0:
            factor += share * max(effect.centre, -0.999)
    return factors


def _capacity_envelope(model: FittedCostModel, curves_at: Callable, low: float, high: float,
                       priced: tuple[tuple[float, float], tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """(incremental, bill) interval ends widened to a static fleet's unknown capacity
    (FittedCostModel.capacity_bounds): the lowest low and highest high over the assumed
    headroom, none and twice it. Unknown, not random: the ends are bounds, not draws."""
    bounds = model.capacity_bounds()
    if bounds is None:
        return priced
    out = [list(pair) for pair in priced]
    for alternative in bounds:
        for k, curve in enumerate(curves_at(alternative)):
            out[k][0] = min(out[k][0], float(curve(low)))
            out[k][1] = max(out[k][1], float(curve(high)))
    return tuple((a, b) for a, b in out)


def project_cells(
    as_of: dt.date,
    deltas: pl.DataFrame,
    models: dict[str, FittedCostModel],
    load: dict[str, tuple[np.ndarray, np.ndarray]],
    hours: np.ndarray,
    shares: pl.DataFrame,
    scale: float,
    fdr_q: float,
    correlation: Correlation,
    projection_hours: int | None = None,
    interval: str = "fixed",
    point_estimate: str = "shrinkage",
    callers: CallerShares | None = None,
    share_rel_se: dict[tuple[str, str], float] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(per service, per experiment cell, hourly universes) frames for one as-of day.

    deltas: usage_deltas rows (request and work columns); hours: hour starts
    (datetime64) of the load history; load: service -> (positions in `hours`, hourly
    cost-driver load at those hours); shares: experiment_id, cell, hour, share over the
    same hours. The last `projection_hours` (default: all) are priced; the history
    before them lets production metrics calibrate the deltas. interval: see driver_effect.
    point_estimate: "shrinkage" (each effect at its empirical-Bayes posterior median, interval
    from posterior draws) or "gate" (significant deltas as measured, others 0). The
    always-valid (sequential) intervals keep the gate: a posterior has no such guarantee.
    callers: the experiments' call graphs (attribution.call_graph); shrinkage then centres
    each service on the delta its callers imply. share_rel_se: see calibrate_with_production."""
    all_shares = _share_arrays(shares, hours)
    history_shares = {
        service: {key: values[positions] for key, values in all_shares.items()}
        for service, (positions, _) in load.items()
    }
    first = len(hours) - (projection_hours or len(hours))
    in_window = {service: positions >= first for service, (positions, _) in load.items()}
    history = {service: (hours[positions], values) for service, (positions, values) in load.items()}
    service_shares = {
        service: {key: values[in_window[service]] for key, values in by_key.items()}
        for service, by_key in history_shares.items()
    }
    load = {service: (positions[in_window[service]], values[in_window[service]])
            for service, (positions, values) in load.items()}
    effects: dict[tuple[str, str, str], Effect] = {}
    for row in deltas.iter_rows(named=True):
        model = models.get(row["service"])
        if model is None or row["service"] not in load:
            continue
        effect = driver_effect(row, model, fdr_q, interval)
        if effect is not None:
            effects[(row["experiment_id"], row["cell"], row["service"])] = effect
    # Shrink first: production calibration then combines the traces' best estimate (for a
    # work effect, its count and weight parts shrunk apart) with what the load says.
    shrinking = point_estimate == "shrinkage" and interval == "fixed"
    if shrinking:
        effects = shrink_effects(effects, callers)
    effects, not_in_load = calibrate_with_production(effects, history, history_shares, share_rel_se)
    by_service: dict[str, list[Effect]] = {}
    for effect in effects.values():
        by_service.setdefault(effect.service, []).append(effect)
    factors = {
        service: _load_factors(found, service_shares[service], len(load[service][0]), not_in_load)
        for service, found in by_service.items()
    }

    service_rows, experiment_rows, universe_frames = [], [], []
    for (experiment_id, cell), group in deltas.group_by("experiment_id", "cell", maintain_order=True):
        control_cell = group["control_cell"][0]
        priced = [effects[(experiment_id, cell, s)] for s in group["service"] if (experiment_id, cell, s) in effects]
        increments, bills, rows = [], [], []
        capacity_widening = [[0.0, 0.0], [0.0, 0.0]]  # (incremental, bill) x (low, high)
        for effect in priced:
            positions, service_load = load[effect.service]
            n_hours = len(positions)
            factor = factors[effect.service]
            own_share = service_shares[effect.service].get((experiment_id, cell), np.zeros(n_hours))
            if (experiment_id, effect.service) in not_in_load:
                own_share = np.zeros(n_hours)
            shares_here = projection.LoadShares(
                own=factor[experiment_id] - own_share * max(effect.centre, -0.999),
                share=own_share,
                others=np.prod([f for e, f in factor.items() if e != experiment_id], axis=0)
                if len(factor) > 1 else np.ones(n_hours),
            )
            low, high = effect.bounds
            spread = effect.half_width
            lo = min(effect.delta, 0.0, low) - 4 * spread
            hi = max(effect.delta, 0.0, high) + 4 * spread
            if effect.shrunk is not None:  # every posterior draw lands on the grid
                lo, hi = min(lo, float(effect.shrunk.deltas[0])), max(hi, float(effect.shrunk.deltas[-1]))
            model = models[effect.service]
            curves_at = functools.partial(projection.cell_curves, load=service_load, shares=shares_here, scale=scale,
                                          lo=lo, hi=hi, exact=(effect.delta, effect.centre, low, high))
            incremental, bill = curves_at(model)
            increments.append(incremental)
            bills.append(bill)
            drawn = ((float(incremental(low)), float(incremental(high))), (float(bill(low)), float(bill(high))))
            (inc_low, inc_high), (bill_low_s, bill_high_s) = _capacity_envelope(model, curves_at, low, high, drawn)
            # What the cell's interval widens by: the same unknown capacity, added outright.
            for k, (a, b) in enumerate(((inc_low, inc_high), (bill_low_s, bill_high_s))):
                capacity_widening[k][0] += drawn[k][0] - a
                capacity_widening[k][1] += b - drawn[k][1]
            centre = effect.centre
            own_now = shares_here.own + shares_here.share * centre
            baseline_load = service_load / (own_now * shares_here.others)
            counterfactual_load = baseline_load * (1.0 + centre)
            capacity = model.capacity_requests_per_hour
            rows.append({
                "as_of": as_of, "experiment_id": experiment_id, "cell": cell, "service": effect.service,
                "cost_model": model.cost_model, "metric": effect.metric, "delta_used": centre,
                "delta_ci_low_used": low, "delta_ci_high_used": high, "delta_source": effect.source,
                "delta_measured": effect.delta,
                "null_probability": effect.shrunk.null_probability if effect.shrunk is not None else None,
                "incremental_cost_usd_30d": float(incremental(centre)),
                "ci_low_usd_30d": inc_low,
                "ci_high_usd_30d": inc_high,
                "bill_change_usd_30d": float(bill(centre)),
                "bill_ci_low_usd_30d": bill_low_s,
                "bill_ci_high_usd_30d": bill_high_s,
                "baseline_cost_usd_30d": float(model.predict(baseline_load).sum() * scale),
                "observed_cost_usd_30d": float(model.predict(service_load).sum() * scale),
                "peak_requests_per_hour": float(max(counterfactual_load.max(), service_load.max())),
                "exceeds_capacity": bool(capacity is not None and counterfactual_load.max() > capacity),
            })
            if effect.significant:
                universe_frames.append(pl.DataFrame({
                    "as_of": as_of, "experiment_id": experiment_id, "cell": cell, "service": effect.service,
                    "hour": hours[positions], "baseline_cost": model.predict(baseline_load),
                    "counterfactual_cost": model.predict(counterfactual_load),
                    "observed_cost": model.predict(service_load),
                }))
        services = [e.service for e in priced]
        corr = correlation(experiment_id, cell, control_cell, services, [e.metric for e in priced])
        if shrinking and priced:
            # The point: every service at its posterior median (the rows priced above), summed;
            # the interval: the cell's total over joint posterior draws.
            sampled = projection.posterior_draws([(e.shrunk.cdf, e.shrunk.deltas) for e in priced], corr)
            (point, low, high), (bill_point, bill_low, bill_high) = (
                projection.price_draws(increments, sampled, point=sum(r["incremental_cost_usd_30d"] for r in rows)),
                projection.price_draws(bills, sampled, point=sum(r["bill_change_usd_30d"] for r in rows)))
        else:
            (point, low, high), (bill_point, bill_low, bill_high) = projection.joint_intervals(
                [increments, bills],
                np.array([e.delta for e in priced]),
                np.array([e.half_width for e in priced]),
                np.array([e.significant for e in priced], dtype=bool),
                corr,
            )
        (inc_down, inc_up), (bill_down, bill_up) = capacity_widening
        low, high, bill_low, bill_high = low - inc_down, high + inc_up, bill_low - bill_down, bill_high + bill_up
        service_rows += rows
        experiment_rows.append({
            "as_of": as_of, "experiment_id": experiment_id, "cell": cell, "control_cell": control_cell,
            "incremental_cost_usd_30d": point, "ci_low_usd_30d": low, "ci_high_usd_30d": high,
            "bill_change_usd_30d": bill_point, "bill_ci_low_usd_30d": bill_low, "bill_ci_high_usd_30d": bill_high,
            "services_priced": len(priced), "services_unpriced": group.height - len(priced),
        })
    universes = (
        pl.concat(universe_frames).with_columns(pl.col("hour").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
        if universe_frames else pl.DataFrame(schema=UNIVERSE_SCHEMA)
    )
    return (
        pl.DataFrame(service_rows, schema=PROJECTION_SCHEMA),
        pl.DataFrame(experiment_rows, schema=EXPERIMENT_COST_SCHEMA),
        universes.cast(UNIVERSE_SCHEMA).select(list(UNIVERSE_SCHEMA)),
    )


# Both baselines' point and 95% interval, per service and per cell.
DOLLARS = {
    name: pl.Float64
    for name in ("incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d",
                 "bill_change_usd_30d", "bill_ci_low_usd_30d", "bill_ci_high_usd_30d")
}
PROJECTION_SCHEMA = {
    "as_of": pl.Date,
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "service": pl.Utf8,
    "cost_model": pl.Utf8,
    "metric": pl.Utf8,
    "delta_used": pl.Float64,
    "delta_ci_low_used": pl.Float64,
    "delta_ci_high_used": pl.Float64,
    "delta_source": pl.Utf8,
    # The delta as measured (delta_used is the posterior median under shrinkage), and the
    # posterior probability that the cell moves the service exactly as its callers imply
    # (attribution/call_graph.py; not at all where no caller moved).
    "delta_measured": pl.Float64,
    "null_probability": pl.Float64,
    **DOLLARS,
    "baseline_cost_usd_30d": pl.Float64,
    "observed_cost_usd_30d": pl.Float64,
    "peak_requests_per_hour": pl.Float64,
    "exceeds_capacity": pl.Boolean,
}
EXPERIMENT_COST_SCHEMA = {
    "as_of": pl.Date,
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "control_cell": pl.Utf8,
    **DOLLARS,
    "services_priced": pl.Int64,
    "services_unpriced": pl.Int64,
}
UNIVERSE_SCHEMA = {
    "as_of": pl.Date,
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "service": pl.Utf8,
    "hour": pl.Datetime("us", "UTC"),
    "baseline_cost": pl.Float64,
    "counterfactual_cost": pl.Float64,
    "observed_cost": pl.Float64,
}
