"""Did the projection come true? The realized cost change of every shipped cell.

After a cell ships (experiments.yaml `shipped: {cell, date}`), each service it moved is
measured against a synthetic control built only from data before the ship date and
priced by the cost model of the decision day (the last day before shipping):

* load: the service's hourly load (in its cost model's driver) divided by a reference
  load, the requests of the entry services no cell moved, is fitted over the pre-ship
  weeks as ratio x prod_e (1 + sum_c share_c(h) x delta_c) over every experiment cell
  priced on the service (treated shares from `treated_share`). Each delta starts from
  the decision's (the traces) and is pulled by production wherever the shares moved
  (ramps), so the shipped cell's own effect comes mostly from production. After the ship
  date the counterfactual is reference x ratio x the other experiments' factors: the
  world in which the cell did not ship, every other test as it runs (or as shipped);
* cost: realized change = actual hourly cost - model(counterfactual load), less the
  model's mean error on the fitted load over the last pre-ship week, summed over the
  post-ship hours and scaled to 30 days, comparable with `incremental_cost_usd_30d`;
* interval: the day-to-day spread of that pre-ship error through the post-ship sum and
  the bias taken out, plus the synthetic control's own uncertainty (posterior draws of
  ratio and deltas).

A service is measured when the decision saw the cell move it (significant after BH) or
the production fit does. `calibration` then sets projected beside realized for every
shipped cell: signed error, whether the realized change fell inside the projected
interval, coverage, and whether the projections are systematically biased.

Known limit: a cost-structure change on a measured service counts as part of shipping
the cell (it is in the actual cost, not in the pre-ship model); two cells shipped the
same day onto the same service would share it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from cost_attribution.estimation.models import FittedCostModel

HOURS_30D = 720.0
Z95 = 1.959964


@dataclass(frozen=True)
class OutcomeSettings:
    pre_days: int = 28  # pre-ship hours the synthetic control is fitted on
    bias_days: int = 7  # the model's recent error, taken out and giving the interval
    production_z: float = 3.0  # a service the traces did not see move is measured when production ...
    min_production_delta: float = 0.05  # ... shows the cell's effect this many sd and this far from 0
    draws: int = 200  # posterior draws of the synthetic control's parameters
    seed: int = 12
    bias_alpha: float = 0.05  # systematic bias: mean relative error's interval excludes 0 at this level ...
    min_bias_pct: float = 10.0  # ... and the mean is at least this large (a few % is the model's own error)
    miss_pct: float = 20.0  # a cell's projection misses when off by more than this share of the realized change


@dataclass(frozen=True)
class ServiceOutcome:
    service: str
    realized: float  # USD per 30 days
    se: float
    post_hours: int
    own_delta: float  # the shipped cell's effect on the driver, fitted from production with the traces' prior
    own_delta_sd: float
    reference: str  # the reference load's services, comma-separated ("" = level only)


def with_model_versions(cells: pl.DataFrame, services: pl.DataFrame) -> pl.DataFrame:
    """Each logged cell with model_versions: a JSON object service -> the cost-model version
    that priced it (from the cell's per-service rows)."""
    versions: dict[tuple[str, str], dict[str, str]] = {}
    for experiment_id, cell, service, version in services.select(
            "experiment_id", "cell", "service", "model_version").iter_rows():
        versions.setdefault((experiment_id, cell), {})[service] = version
    return cells.with_columns(model_versions=pl.Series(
        [json.dumps(versions.get((e, c), {})) for e, c in cells.select("experiment_id", "cell").iter_rows()],
        dtype=pl.Utf8))


def moved(rows: pl.DataFrame) -> pl.DataFrame:
    """Decision rows where the cell moved the service (significant after Benjamini-Hochberg)."""
    return rows.filter(pl.col("significant"))


def reference_services(decision_services: pl.DataFrame, all_services: list[str], roots: list[str]) -> list[str]:
    """The synthetic control's donors: the entry services (called by no other service in
    the traces) that no cell moved on the decision day; without any, every service no
    cell moved."""
    touched = set(moved(decision_services)["service"].to_list())
    donors = [s for s in roots if s not in touched]
    return sorted(donors or [s for s in all_services if s not in touched])


def _series(history: pl.DataFrame, service: str, column: str, hours: np.ndarray) -> np.ndarray:
    """One service's hourly column aligned to `hours` (NaN where missing)."""
    rows = history.filter(pl.col("service") == service).drop_nulls(column)
    out = np.full(len(hours), np.nan)
    if rows.is_empty():
        return out
    stamps = rows["hour"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    positions = np.searchsorted(hours, stamps)
    ok = (positions < len(hours)) & (hours[np.minimum(positions, len(hours) - 1)] == stamps)
    out[positions[ok]] = rows[column].to_numpy().astype(float)[ok]
    return out


def _share(shares: pl.DataFrame, experiment_id: str, cell: str, hours: np.ndarray) -> np.ndarray:
    rows = shares.filter((pl.col("experiment_id") == experiment_id) & (pl.col("cell") == cell))
    out = np.zeros(len(hours))
    if rows.is_empty():
        return out
    stamps = rows["hour"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    positions = np.searchsorted(hours, stamps)
    ok = (positions < len(hours)) & (hours[np.minimum(positions, len(hours) - 1)] == stamps)
    out[positions[ok]] = rows["share"].to_numpy()[ok]
    return out


@dataclass(frozen=True)
class Arm:
    """One experiment cell acting on the service: its hourly share and the trace prior."""

    experiment_id: str
    cell: str
    share: np.ndarray  # per hour; for a shipped experiment 1 / 0 from its ship date on
    prior: float  # the decision's delta
    prior_sd: float
    significant: bool = False  # the traces saw it move the service


def arms_on(service: str, decision_services: pl.DataFrame, shares: pl.DataFrame,
            ships: dict[str, tuple[str, dt.date]], hours: np.ndarray) -> list[Arm]:
    """Every experiment cell the decision priced on `service`, with its treated share per
    hour (after an experiment's ship date: 1 for the shipped cell, 0 for the others)."""
    arms = []
    for row in decision_services.filter(pl.col("service") == service).iter_rows(named=True):
        if not all(_finite(row[k]) for k in ("delta_used", "delta_ci_low_used", "delta_ci_high_used")):
            continue
        share = _share(shares, row["experiment_id"], row["cell"], hours)
        ship = ships.get(row["experiment_id"])
        if ship:
            after = hours >= np.datetime64(ship[1].isoformat(), "us")
            share[after] = 1.0 if ship[0] == row["cell"] else 0.0
        sd = max((row["delta_ci_high_used"] - row["delta_ci_low_used"]) / (2 * Z95), 1e-4)
        arms.append(Arm(row["experiment_id"], row["cell"], share, float(row["delta_used"]), sd,
                        bool(row.get("significant"))))
    return arms


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _factors(arms: list[Arm], deltas: np.ndarray, n: int, skip: str | None = None) -> np.ndarray:
    """prod over experiments of (1 + sum over its cells of share x delta), per hour."""
    by_experiment: dict[str, np.ndarray] = {}
    for arm, delta in zip(arms, deltas):
        if arm.experiment_id != skip:
            by_experiment.setdefault(arm.experiment_id, np.ones(n))
            by_experiment[arm.experiment_id] += arm.share * delta
    return np.prod(list(by_experiment.values()), axis=0) if by_experiment else np.ones(n)


def fit_everyone_control(y: np.ndarray, arms: list[Arm], iterations: int = 8
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """(ratio, deltas, their covariance) of y = ratio x prod_e (1 + sum_c share_c x delta_c) over pre-ship hours:
    Gauss-Newton, every delta pulled towards the decision's (its prior from the traces) by
    the decision's own uncertainty, so production decides where the shares moved and the
    traces where they did not."""
    n = len(y)
    deltas = np.array([a.prior for a in arms], dtype=float)
    ratio = float(np.median(y / _factors(arms, deltas, n)))
    prior = np.array([a.prior for a in arms], dtype=float)
    prior_sd = np.array([a.prior_sd for a in arms], dtype=float)
    shares = np.array([a.share for a in arms]).reshape(len(arms), n)
    sigma = float(np.std(y / _factors(arms, deltas, n) / ratio)) or 0.01
    for _ in range(iterations):
        total = _factors(arms, deltas, n)
        own = np.array([1.0 + sum(b.share * d for b, d in zip(arms, deltas) if b.experiment_id == a.experiment_id)
                        for a in arms]).reshape(len(arms), n)
        fitted = ratio * total
        residual = y - fitted
        sigma = max(float(np.std(residual / fitted)), 1e-4)
        jacobian = np.column_stack([total, (ratio * total * shares / own).T]) / (sigma * fitted)[:, None]
        rows = np.vstack([jacobian, np.column_stack([np.zeros(len(arms)), np.diag(1.0 / prior_sd)])])
        target = np.concatenate([residual / (sigma * fitted), (prior - deltas) / prior_sd])
        step = np.linalg.lstsq(rows, target, rcond=None)[0]
        ratio, deltas = ratio + step[0], deltas + step[1:]
        deltas = np.maximum(deltas, -0.999)
        if np.abs(step[1:]).max(initial=0.0) < 1e-6 and abs(step[0]) < 1e-9 * abs(ratio):
            break
    covariance = np.linalg.pinv(rows.T @ rows)
    return float(ratio), deltas, covariance


def service_outcome(
    service: str,
    experiment_id: str,
    cell: str,
    ship_date: dt.date,
    model: FittedCostModel,
    history: pl.DataFrame,
    reference: list[str],
    decision_services: pl.DataFrame,
    shares: pl.DataFrame,
    ships: dict[str, tuple[str, dt.date]],
    end: dt.datetime,
    settings: OutcomeSettings = OutcomeSettings(),
) -> ServiceOutcome | None:
    """The realized change of one service after shipping (module docstring), or None when
    there is no post-ship hour or too little pre-ship history."""
    ship = dt.datetime.combine(ship_date, dt.time())
    start = ship - dt.timedelta(days=settings.pre_days)
    n = int((end.replace(tzinfo=None) - start).total_seconds() // 3600)
    hours = (np.datetime64(start, "h") + np.arange(n)).astype("datetime64[us]")
    post = hours >= np.datetime64(ship, "us")
    driver = (model.features or ["requests"])[0]
    load = _series(history, service, driver, hours)
    cost = _series(history, service, "cost", hours)
    ref = np.nansum([_series(history, s, "requests", hours) for s in reference], axis=0) if reference else np.ones(n)
    if reference:
        ref[ref <= 0] = np.nan
    pre = ~post & np.isfinite(load) & np.isfinite(ref) & np.isfinite(cost)
    done = post & np.isfinite(cost) & np.isfinite(ref)
    if done.sum() == 0 or pre.sum() < 48:
        return None
    arms = arms_on(service, decision_services, shares, {**ships, experiment_id: (cell, ship_date)}, hours)
    ratio, deltas, covariance = fit_everyone_control(load[pre] / ref[pre], [_during(a, pre) for a in arms])
    # Other experiments that neither the traces nor production see moving the service are
    # left out (a spurious small effect would be multiplied up when one of them ships), then refit.
    sd = np.sqrt(np.clip(np.diag(covariance)[1:], 0.0, None))
    keep = [a.experiment_id == experiment_id or a.significant or abs(d) > max(settings.production_z * e,
                                                                            settings.min_production_delta)
            for a, d, e in zip(arms, deltas, sd)]
    if not all(keep):
        arms = [a for a, k in zip(arms, keep) if k]
        ratio, deltas, covariance = fit_everyone_control(load[pre] / ref[pre], [_during(a, pre) for a in arms])
    recent = pre & (hours >= np.datetime64(ship - dt.timedelta(days=settings.bias_days), "us"))

    def realized_sum(ratio: float, deltas: np.ndarray) -> tuple[float, np.ndarray]:
        fitted = ref * ratio * _factors(arms, deltas, n)  # the load as it was
        counterfactual = ref * ratio * _factors(arms, deltas, n, skip=experiment_id)  # the cell never shipped
        error = cost[recent] - model.predict(fitted[recent])
        return float((cost[done] - model.predict(counterfactual[done]) - error.mean()).sum()), error

    total, error = realized_sum(ratio, deltas)
    n_post = int(done.sum())
    daily = _daily_sums(error - error.mean())
    sd_day = float(np.std(daily, ddof=1)) if len(daily) > 1 else float(np.abs(error).sum())
    post_days, bias_days = n_post / 24.0, max(len(daily), 1)
    # The model's own error through the post-ship sum and the bias taken out, plus the
    # synthetic control's: its parameters drawn from their posterior.
    rng = np.random.default_rng(settings.seed)
    draws = rng.multivariate_normal(np.concatenate([[ratio], deltas]), covariance, size=settings.draws,
                                    check_valid="ignore")
    spread = np.std([realized_sum(d[0], np.maximum(d[1:], -0.999))[0] for d in draws]) if len(arms) else 0.0
    se_sum = math.sqrt(sd_day ** 2 * (post_days + post_days ** 2 / bias_days) + spread ** 2)
    scale = HOURS_30D / n_post
    change = np.array([total])
    index = next((i for i, a in enumerate(arms) if (a.experiment_id, a.cell) == (experiment_id, cell)), None)
    own = float(deltas[index]) if index is not None else 0.0
    own_sd = float(math.sqrt(max(covariance[index + 1, index + 1], 0.0))) if index is not None else math.inf
    return ServiceOutcome(service, float(change.sum() * scale), se_sum * scale, n_post, own, own_sd,
                          ",".join(reference))


def _during(arm: Arm, mask: np.ndarray) -> Arm:
    return Arm(arm.experiment_id, arm.cell, arm.share[mask], arm.prior, arm.prior_sd, arm.significant)


def _moves(outcome: ServiceOutcome | None, settings: OutcomeSettings) -> bool:
    """Production shows the cell moving the service: the fitted effect is clear of 0."""
    return outcome is not None and abs(outcome.own_delta) > max(settings.production_z * outcome.own_delta_sd,
                                                                settings.min_production_delta)


def _daily_sums(values: np.ndarray) -> np.ndarray:
    whole = len(values) // 24 * 24
    return values[len(values) - whole:].reshape(-1, 24).sum(axis=1)


def measure_outcomes(
    as_of: dt.date,
    decisions: pl.DataFrame,
    decision_services: pl.DataFrame,
    models: dict[dt.date, dict[str, FittedCostModel]],
    history: pl.DataFrame,
    shares: pl.DataFrame,
    roots: list[str],
    settings: OutcomeSettings = OutcomeSettings(),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per shipped cell, per service) outcome frames as of `as_of`.

    decisions: one decision-log row per shipped cell (the last before its ship date, with
    ship_date); decision_services: the decision log's service rows of those decision days
    (every cell, for the reference and the other experiments' shares); models: decision
    day -> the registry's models; history: service_hourly_history; shares: treated_share;
    roots: services no other service calls (trace edges). A service is measured when the
    decision saw the cell move it (significant) or production does (the fitted effect is
    clear of 0: a move the traces missed is a miss too)."""
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    ships = {r["experiment_id"]: (r["cell"], r["ship_date"]) for r in decisions.iter_rows(named=True)}
    all_services = sorted(history["service"].unique().to_list())
    cells, services = [], []
    for decision in decisions.iter_rows(named=True):
        day_rows = decision_services.filter(pl.col("as_of") == decision["as_of"])
        for other in decisions.iter_rows(named=True):  # a cell shipped earlier: its own pre-ship effect
            if other["experiment_id"] not in day_rows["experiment_id"].to_list():
                day_rows = pl.concat([day_rows, decision_services.filter(
                    (pl.col("as_of") == other["as_of"]) & (pl.col("experiment_id") == other["experiment_id"]))])
        reference = reference_services(day_rows, all_services, roots)
        priced = day_rows.filter((pl.col("experiment_id") == decision["experiment_id"])
                                 & (pl.col("cell") == decision["cell"]) & ~pl.col("service").is_in(reference))
        measured = []
        for row in priced.iter_rows(named=True):
            model = models.get(decision["as_of"], {}).get(row["service"])
            if model is None:
                continue
            outcome = service_outcome(row["service"], decision["experiment_id"], decision["cell"],
                                      decision["ship_date"], model, history, reference, day_rows, shares, ships,
                                      end, settings)
            seen_by = "traces" if row["significant"] else "production" if _moves(outcome, settings) else None
            if outcome is None or seen_by is None:
                continue
            measured.append(outcome)
            services.append({
                "as_of": as_of, "experiment_id": decision["experiment_id"], "cell": decision["cell"],
                "service": row["service"], "model_version": row["model_version"],
                "projected_usd_30d": row["incremental_cost_usd_30d"], "realized_usd_30d": outcome.realized,
                "realized_se_usd_30d": outcome.se, "own_delta": outcome.own_delta,
                "own_delta_sd": outcome.own_delta_sd, "moved_in": seen_by, "reference_services": outcome.reference,
                "post_ship_hours": outcome.post_hours,
            })
        if measured:
            cells.append(cell_outcome(as_of, decision, measured, settings))
    return pl.DataFrame(cells, schema=OUTCOME_SCHEMA), pl.DataFrame(services, schema=OUTCOME_SERVICE_SCHEMA)


OUTCOME_SCHEMA = {
    "as_of": pl.Date,
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "ship_date": pl.Date,
    "decision_as_of": pl.Date,
    "post_ship_hours": pl.Int64,
    "projected_usd_30d": pl.Float64,
    "projected_ci_low_usd_30d": pl.Float64,
    "projected_ci_high_usd_30d": pl.Float64,
    "realized_usd_30d": pl.Float64,
    "realized_ci_low_usd_30d": pl.Float64,
    "realized_ci_high_usd_30d": pl.Float64,
    "error_usd_30d": pl.Float64,  # projected - realized: > 0 over-projected
    "error_pct": pl.Float64,  # of the realized change
    "realized_in_projected_interval": pl.Boolean,
    "verdict": pl.Utf8,  # on_target | over_projected | under_projected
    "services_measured": pl.Utf8,
}
OUTCOME_SERVICE_SCHEMA = {
    "as_of": pl.Date,
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "service": pl.Utf8,
    "model_version": pl.Utf8,
    "projected_usd_30d": pl.Float64,
    "realized_usd_30d": pl.Float64,
    "realized_se_usd_30d": pl.Float64,
    "own_delta": pl.Float64,
    "own_delta_sd": pl.Float64,
    "moved_in": pl.Utf8,  # traces (significant on the decision day) | production (the fitted effect)
    "reference_services": pl.Utf8,
    "post_ship_hours": pl.Int64,
}


def cell_outcome(as_of: dt.date, decision: dict, services: list[ServiceOutcome],
                 settings: OutcomeSettings = OutcomeSettings()) -> dict:
    """One shipped cell: projected (the decision) beside realized (the sum over services,
    errors added in quadrature). verdict: the projected point estimate lies outside the
    realized change's 95% interval and misses it by more than miss_pct of it."""
    realized = float(sum(s.realized for s in services))
    se = math.sqrt(sum(s.se ** 2 for s in services))
    low, high = realized - Z95 * se, realized + Z95 * se
    projected = float(decision["incremental_cost_usd_30d"])
    p_low, p_high = float(decision["ci_low_usd_30d"]), float(decision["ci_high_usd_30d"])
    verdict = "on_target"
    material = abs(projected - realized) > settings.miss_pct / 100.0 * abs(realized)
    if projected < low and material:
        verdict = "under_projected"
    elif projected > high and material:
        verdict = "over_projected"
    return {
        "as_of": as_of, "experiment_id": decision["experiment_id"], "cell": decision["cell"],
        "ship_date": decision["ship_date"], "decision_as_of": decision["as_of"],
        "post_ship_hours": max((s.post_hours for s in services), default=0),
        "projected_usd_30d": projected, "projected_ci_low_usd_30d": p_low, "projected_ci_high_usd_30d": p_high,
        "realized_usd_30d": realized, "realized_ci_low_usd_30d": low, "realized_ci_high_usd_30d": high,
        "error_usd_30d": projected - realized,
        "error_pct": 100.0 * (projected - realized) / abs(realized) if realized else None,
        "realized_in_projected_interval": bool(p_low <= realized <= p_high),
        "verdict": verdict,
        "services_measured": ",".join(s.service for s in services),
    }


@dataclass(frozen=True)
class Calibration:
    n: int
    coverage: float | None  # share of realized changes inside the projected interval
    mean_signed_error_usd_30d: float | None
    mean_signed_error_pct: float | None  # of the realized change, averaged over cells
    mean_error_ci_pct: tuple[float, float] | None
    systematic_bias: bool
    missed: list[str]  # experiment:cell whose projection missed the realized change (verdict over/under)

    def to_dict(self) -> dict:
        return {
            "shipped_cells": self.n, "coverage": self.coverage,
            "mean_signed_error_usd_30d": self.mean_signed_error_usd_30d,
            "mean_signed_error_pct": self.mean_signed_error_pct,
            "mean_signed_error_ci_pct": list(self.mean_error_ci_pct) if self.mean_error_ci_pct else None,
            "systematic_bias": self.systematic_bias, "missed": self.missed,
        }


def calibration(outcomes: pl.DataFrame, settings: OutcomeSettings = OutcomeSettings()) -> Calibration:
    """Projected vs realized over every shipped cell. Systematic bias: the mean relative
    error's t interval excludes 0 and it is at least min_bias_pct (needs three cells or
    more); a miss: verdict over/under (cell_outcome)."""
    if outcomes.is_empty():
        return Calibration(0, None, None, None, None, False, [])
    from scipy import stats

    n = outcomes.height
    missed = [f"{e}:{c}" for e, c, v in outcomes.select("experiment_id", "cell", "verdict").iter_rows()
              if v != "on_target"]
    pct = outcomes["error_pct"].drop_nulls().to_numpy()
    mean_pct = float(pct.mean()) if len(pct) else None
    interval, biased = None, False
    if len(pct) >= 3:
        half = stats.t.ppf(1 - settings.bias_alpha / 2, len(pct) - 1) * pct.std(ddof=1) / math.sqrt(len(pct))
        interval = (float(mean_pct - half), float(mean_pct + half))
        biased = bool((interval[0] > 0 or interval[1] < 0) and abs(mean_pct) >= settings.min_bias_pct)
    coverage = float(outcomes["realized_in_projected_interval"].mean())
    return Calibration(n, coverage, float(outcomes["error_usd_30d"].mean()), mean_pct, interval, biased, missed)
