"""Per-service cost models: hourly request volume -> hourly cost, and two-universe projection.

For each service we learn, from its trailing hourly history (cost from FOCUS rows tagged
with the service, volume from metrics), a curve that is monotone in volume and keeps
rising past the historical peak, because projecting a winner at +40% volume is exactly
extrapolation. Which curve depends on what the data shows:

* autoscale (fleet size follows volume): scikit-learn candidates fitted on all but the
  most recent ``holdout_days``, the best out-of-sample MAPE wins, then it is refitted on
  the whole window -> ``cost_model="ml"``;
* static (same fleet whatever the volume): flat cost until an assumed capacity, then one
  more instance per block of volume -> ``cost_model="static"``;
* drift (instance type, unit price or cost level changed recently, so a model trained on
  the trailing window prices yesterday's structure): a simple heuristic fitted only on
  the data since the change -> ``cost_model="heuristic"``. Same when the history is too
  short or too dirty to train on.

``project_incremental_cost`` then prices the given hourly volumes twice (as observed and
scaled by 1 + delta) and returns the difference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from cost_attribution.estimation.curve_models import (
    EXTRAPOLATING_KINDS,
    evaluate_curve,
    fit_curve,
    fit_monotone_linear,
    static_params,
)
from cost_attribution.estimation.drift import (
    cost_per_request_shift,
    find_structural_break,
    residual_shift,
)
from cost_attribution.estimation.scaling import classify_scaling, static_capacity

log = logging.getLogger(__name__)

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "hour": pl.Datetime("us", "UTC"),
    "requests": pl.Float64,
    "cost": pl.Float64,
    "instances": pl.Int64,     # distinct ResourceId billed that hour
    "sku": pl.Utf8,            # dominant SkuId that hour
    "unit_cost": pl.Float64,   # cost / instances
}
_REQUIRED = ("hour", "requests", "cost")


@dataclass(frozen=True)
class ModelConfig:
    training_days: int = 28
    """Trailing days of history (hour < as_of) a model may learn from."""
    holdout_days: int = 3
    """Most recent days kept out of fitting to measure (and select on) MAPE."""
    drift_window_days: int = 3
    """Most recent days compared against the earlier history for drift."""
    static_headroom: float = 0.5
    """Assumed spare capacity of a static fleet over its observed peak hourly volume.

    A fleet that never resizes never reveals its capacity; the data only proves it
    handled the busiest hour seen. Default 0.5: statically provisioned fleets are
    usually sized for ~2/3 utilisation at peak, so extra volume is free up to 1.5x the
    observed peak and then costs one instance per (capacity / instances) requests.
    0.0 is the conservative bound ("at capacity at the observed peak"): the largest
    cost the data allows. Recorded in params as ``static_headroom``.
    """
    static_headroom_by_service: Mapping[str, float] = field(default_factory=dict)
    """Per-service override of ``static_headroom`` (e.g. 0.0 for a fleet known to be full)."""
    candidate_models: tuple[str, ...] = ("monotone-linear", "isotonic+linear-tail")
    """ML candidates for autoscaling services. "hist-gbm+linear-tail" is also available
    but ~40x slower per service (~100 ms vs ~2 ms); only curves that extrapolate past the peak are allowed."""
    n_knots: int = 64
    """Knots used to store a non-linear curve (quantile grid of training volumes)."""
    min_training_hours: int = 48
    """Fewer usable hours than this -> heuristic, with the reason recorded."""
    min_post_change_days_for_ml: float = 14.0
    """After a structural break, retrain the ML model on post-change data only if this
    many days of it exist (two weekly cycles); otherwise the service is drifted."""
    price_change_tolerance: float = 0.05
    """Relative change of the cost per instance-hour that counts as a price change
    (hour-to-hour noise in FOCUS EffectiveCost is well under 1%)."""
    residual_shift_tolerance: float = 0.10
    """|actual / predicted - 1| over the drift window that counts as a cost-level shift."""
    cost_per_request_shift_tolerance: float = 0.10
    """Same for cost per request vs earlier hours of matching volume."""
    recent_level_hours: int = 6
    """Hours that define "today's" SKU and unit price when looking for a break."""

    def headroom_for(self, service: str) -> float:
        return float(self.static_headroom_by_service.get(service, self.static_headroom))

    def __post_init__(self) -> None:
        if self.training_days <= 0 or self.holdout_days < 0 or self.drift_window_days <= 0:
            raise ValueError("training_days and drift_window_days must be > 0, holdout_days >= 0")
        if self.holdout_days >= self.training_days or self.drift_window_days >= self.training_days:
            raise ValueError("holdout_days and drift_window_days must be shorter than training_days")
        if self.static_headroom < 0 or any(h < 0 for h in self.static_headroom_by_service.values()):
            raise ValueError("static headroom must be >= 0")
        bad = [k for k in self.candidate_models if k not in EXTRAPOLATING_KINDS]
        if bad or not self.candidate_models:
            raise ValueError(f"candidate_models must be non-empty and among {EXTRAPOLATING_KINDS}; got {bad}")


@dataclass
class FittedCostModel:
    service: str
    scaling: str                 # "autoscale" | "static"
    cost_model: str              # "ml" | "heuristic" | "static"
    drift_detected: bool
    drift_reasons: list[str]     # evidence of drift; also why a heuristic was used when history was unusable
    model_error_pct: float       # out-of-sample MAPE (%) on the most recent holdout hours; NaN if none could be held out
    capacity_requests_per_hour: float | None  # static: tipping point; None for autoscale
    training_start: datetime
    training_end: datetime
    kind: str                    # e.g. "monotone-linear", "isotonic+linear-tail", "post-change-linear", "static-capacity"
    features: list[str]
    params: dict                 # JSON-serialisable; params["curve"] rebuilds predict()

    def predict(self, requests_per_hour: np.ndarray) -> np.ndarray:
        """Hourly cost for each hourly request volume (non-decreasing in volume)."""
        v = np.asarray(requests_per_hour, dtype=float)
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"{self.service}: request volumes must be finite and >= 0")
        return evaluate_curve(self.params["curve"], v)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["training_start"] = self.training_start.isoformat()
        d["training_end"] = self.training_end.isoformat()
        if not math.isfinite(self.model_error_pct):
            d["model_error_pct"] = None  # JSON has no NaN
        return d

    def capacity_bounds(self) -> tuple[FittedCostModel, FittedCostModel] | None:
        """A static fleet's capacity is assumed, not measured (ModelConfig.static_headroom):
        the same model at no headroom (the fleet full at its observed peak: the largest cost
        the data allows) and at twice the assumed headroom. None for a fleet that scales."""
        curve, peak = self.params["curve"], self.params.get("observed_peak_requests_per_hour")
        if curve["form"] != "static" or peak is None:
            return None
        headroom = float(self.params.get("static_headroom", 0.0))

        def at(room: float) -> FittedCostModel:
            capacity = static_capacity(peak, room)
            params = {**self.params, "static_headroom": room, "curve": {**curve, "capacity_requests_per_hour": capacity}}
            return dataclasses.replace(self, params=params, capacity_requests_per_hour=capacity)

        return at(0.0), at(2.0 * headroom)

    @classmethod
    def from_dict(cls, d: dict) -> FittedCostModel:
        d = dict(d)
        d["training_start"] = datetime.fromisoformat(d["training_start"])
        d["training_end"] = datetime.fromisoformat(d["training_end"])
        d["model_error_pct"] = float("nan") if d.get("model_error_pct") is None else float(d["model_error_pct"])
        return cls(**d)


# --------------------------------------------------------------------------- history


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def prepare_history(history: pl.DataFrame, as_of: datetime, config: ModelConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Trailing training window, one row per hour, in hour order; dirty rows counted by reason.

    Returns the clean frame (HISTORY_SCHEMA) and {reason: rows set aside}. Missing
    required columns are a contract violation and raise; dirty values never do.
    """
    missing = [c for c in _REQUIRED if c not in history.columns]
    if missing:
        raise ValueError(f"history is missing required column(s) {missing}; expected {list(HISTORY_SCHEMA)}")
    as_of = _utc(as_of)
    df = history
    for col in ("instances", "sku", "unit_cost"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None).alias(col))
    hour = pl.col("hour")
    if df.schema["hour"] == pl.Utf8:
        hour = hour.str.to_datetime(time_zone="UTC", strict=False)
    elif isinstance(df.schema["hour"], pl.Datetime) and df.schema["hour"].time_zone is None:
        hour = hour.dt.replace_time_zone("UTC")
    df = df.select(
        hour.dt.convert_time_zone("UTC").dt.cast_time_unit("us").alias("hour"),
        pl.col("requests").cast(pl.Float64, strict=False),
        pl.col("cost").cast(pl.Float64, strict=False),
        pl.col("instances").cast(pl.Float64, strict=False),
        pl.col("sku").cast(pl.Utf8, strict=False),
        pl.col("unit_cost").cast(pl.Float64, strict=False),
    )
    start = as_of - timedelta(days=config.training_days)
    df = df.filter(pl.col("hour").is_null() | ((pl.col("hour") >= start) & (pl.col("hour") < as_of)))

    quality: dict[str, int] = {}
    checks = {
        "missing_hour": pl.col("hour").is_null(),
        "invalid_requests": pl.col("requests").is_null() | ~pl.col("requests").is_finite() | (pl.col("requests") < 0),
        "invalid_cost": pl.col("cost").is_null() | ~pl.col("cost").is_finite(),
        "negative_cost": pl.col("cost") < 0,
    }
    for reason, bad in checks.items():
        n_bad = df.filter(bad.fill_null(False)).height
        if n_bad:
            quality[reason] = n_bad
            df = df.filter(~bad.fill_null(False))
    n_before = df.height
    df = df.sort("hour", maintain_order=True).unique("hour", keep="first", maintain_order=True)  # first delivery wins
    if df.height < n_before:
        quality["duplicate_hour"] = n_before - df.height
    bad_inst = (pl.col("instances") <= 0) | ~pl.col("instances").is_finite()
    n_bad_inst = df.filter(bad_inst.fill_null(False)).height
    if n_bad_inst:
        quality["invalid_instances"] = n_bad_inst  # kept: volume and cost are still usable
    df = df.with_columns(pl.when(bad_inst.fill_null(False)).then(None).otherwise(pl.col("instances")).alias("instances"))
    df = df.with_columns(
        pl.when(pl.col("unit_cost").is_finite() & (pl.col("unit_cost") > 0))
        .then(pl.col("unit_cost"))
        .otherwise(pl.col("cost") / pl.col("instances"))
        .alias("unit_cost"),
        pl.col("instances").round(0).cast(pl.Int64),
    )
    return df, quality


# --------------------------------------------------------------------------- fitting helpers


def mape_pct(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error over hours that cost something (NaN if none)."""
    ok = actual > 0
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(predicted[ok] - actual[ok]) / actual[ok]) * 100.0)


@dataclass
class _Rows:
    """Numpy views of a clean history slice."""
    hours: list[datetime]
    requests: np.ndarray
    cost: np.ndarray
    instances: np.ndarray  # float, NaN where unknown
    sku: list[str | None]
    unit_cost: np.ndarray

    @classmethod
    def of(cls, df: pl.DataFrame) -> _Rows:
        return cls(
            hours=df["hour"].to_list(),
            requests=df["requests"].to_numpy(),
            cost=df["cost"].to_numpy(),
            instances=df["instances"].cast(pl.Float64).fill_null(float("nan")).to_numpy(),
            sku=df["sku"].to_list(),
            unit_cost=df["unit_cost"].fill_null(float("nan")).to_numpy(),
        )

    def __len__(self) -> int:
        return len(self.requests)

    def take(self, mask_or_slice) -> _Rows:
        idx = np.arange(len(self))[mask_or_slice]
        return _Rows(
            [self.hours[i] for i in idx], self.requests[idx], self.cost[idx],
            self.instances[idx], [self.sku[i] for i in idx], self.unit_cost[idx],
        )

    def before(self, cutoff: datetime) -> _Rows:
        return self.take(np.array([h < cutoff for h in self.hours], dtype=bool))

    def since(self, cutoff: datetime) -> _Rows:
        return self.take(np.array([h >= cutoff for h in self.hours], dtype=bool))


def _fit_static(rows: _Rows, headroom: float, recent_hours: int) -> dict:
    """Today's fleet size and unit price; capacity = observed peak x (1 + headroom)."""
    recent_inst = rows.instances[-recent_hours:]
    recent_inst = recent_inst[np.isfinite(recent_inst)]
    if len(recent_inst):
        values, counts = np.unique(recent_inst, return_counts=True)
        instances = int(values[np.argmax(counts)])
        unit = rows.unit_cost[-recent_hours:]
        unit = unit[np.isfinite(unit) & (unit > 0)]
        unit_cost = float(np.median(unit)) if len(unit) else float(np.median(rows.cost[-recent_hours:])) / instances
    else:  # no instance counts: treat the whole fleet as one unit of capacity
        instances, unit_cost = 1, float(np.median(rows.cost[-recent_hours:]))
    capacity = static_capacity(float(np.max(rows.requests)), headroom)
    return static_params(instances, unit_cost, capacity)


def _fit_autoscale_heuristic(rows: _Rows) -> tuple[str, dict]:
    """Marginal cost per request since the change; plain cost per request if too little spread."""
    v, c = rows.requests, rows.cost
    if len(v) >= 24 and np.quantile(v, 0.05) > 0 and np.quantile(v, 0.95) / np.quantile(v, 0.05) >= 1.2:
        return "post-change-linear", fit_monotone_linear(v, c)
    slope = float(c.sum() / v.sum()) if v.sum() > 0 else 0.0
    if v.sum() <= 0:
        return "flat", {"form": "flat", "cost": float(np.mean(c)) if len(c) else 0.0}
    return "cost-per-request", {"form": "linear", "intercept": 0.0, "slope": slope}


def _fit_heuristic(scaling: str, rows: _Rows, headroom: float, config: ModelConfig) -> tuple[str, dict]:
    if scaling == "static":
        return "static-capacity", _fit_static(rows, headroom, config.recent_level_hours)
    return _fit_autoscale_heuristic(rows)


def _heuristic_holdout_mape(scaling: str, rows: _Rows, headroom: float, config: ModelConfig) -> float:
    """Out-of-sample error of the heuristic: fit on the earlier part of its data, score the rest."""
    n_hold = min(config.holdout_days * 24, len(rows) // 2)
    if n_hold < 1 or len(rows) - n_hold < 12:
        return float("nan")
    _, params = _fit_heuristic(scaling, rows.take(slice(0, len(rows) - n_hold)), headroom, config)
    held = rows.take(slice(len(rows) - n_hold, None))
    return mape_pct(held.cost, evaluate_curve(params, held.requests))


# --------------------------------------------------------------------------- public API


def fit_service_model(
    service: str, history: pl.DataFrame, as_of: datetime, config: ModelConfig = ModelConfig()
) -> FittedCostModel:
    """Fit one service's cost model on its history with hour < as_of (see module docstring)."""
    as_of = _utc(as_of)
    frame, quality = prepare_history(history, as_of, config)
    headroom = config.headroom_for(service)
    rows = _Rows.of(frame)
    window_start = as_of - timedelta(days=config.drift_window_days)
    holdout_start = as_of - timedelta(days=config.holdout_days)
    nominal_start = as_of - timedelta(days=config.training_days)
    base_params: dict = {"data_quality": quality, "static_headroom": headroom, "notes": []}

    def build(scaling, cost_model, kind, curve, drift, reasons, mape, train_rows, extra=None) -> FittedCostModel:
        params = {**base_params, **(extra or {}), "curve": curve}
        if len(train_rows):
            params["observed_peak_requests_per_hour"] = float(np.max(train_rows.requests))
        return FittedCostModel(
            service=service, scaling=scaling, cost_model=cost_model, drift_detected=drift,
            drift_reasons=reasons, model_error_pct=mape,
            capacity_requests_per_hour=curve["capacity_requests_per_hour"] if curve["form"] == "static" else None,
            training_start=train_rows.hours[0] if len(train_rows) else nominal_start,
            training_end=(train_rows.hours[-1] + timedelta(hours=1)) if len(train_rows) else as_of,
            kind=kind, features=["requests"], params=params,
        )

    def heuristic(train_rows: _Rows, drift: bool, reasons: list[str]) -> FittedCostModel:
        scaling = classify_scaling(train_rows.requests, train_rows.cost, train_rows.instances) if len(train_rows) >= 3 else "autoscale"
        if not len(train_rows):
            return build(scaling, "heuristic", "flat", {"form": "flat", "cost": 0.0}, drift, reasons, float("nan"), train_rows)
        kind, curve = _fit_heuristic(scaling, train_rows, headroom, config)
        mape = _heuristic_holdout_mape(scaling, train_rows, headroom, config)
        return build(scaling, "heuristic", kind, curve, drift, reasons, mape, train_rows)

    if len(rows) < config.min_training_hours:
        return heuristic(rows, False, [f"insufficient history: {len(rows)} usable hours < {config.min_training_hours}"])

    # 1. A recent instance-type / price change makes the trailing window stale.
    brk = find_structural_break(rows.hours, rows.sku, rows.unit_cost, config.recent_level_hours, config.price_change_tolerance)
    if brk is not None:
        days_since = (as_of - brk.hour).total_seconds() / 86400
        if days_since < config.min_post_change_days_for_ml:
            reasons = brk.reasons + [
                f"only {days_since:.1f} days of post-change data (< {config.min_post_change_days_for_ml:g} to retrain): "
                "priced with a heuristic fitted on post-change data"
            ]
            return heuristic(rows.take(slice(brk.index, None)), True, reasons)
        base_params["notes"].append(f"trained on post-change data only: {'; '.join(brk.reasons)}")
        rows = rows.take(slice(brk.index, None))

    scaling = classify_scaling(rows.requests, rows.cost, rows.instances)
    fit_part = rows.before(holdout_start)
    if len(fit_part) < config.min_training_hours:
        return heuristic(rows, False, [f"insufficient history before the holdout: {len(fit_part)} hours < {config.min_training_hours}"])
    held = rows.since(holdout_start)

    # 2. Candidates, scored out of sample on the most recent holdout hours.
    if scaling == "static":
        fits = {"static-capacity": _fit_static(fit_part, headroom, config.recent_level_hours)}
    else:
        fits = {k: fit_curve(k, fit_part.requests, fit_part.cost, config.n_knots) for k in config.candidate_models}
    scores = {k: mape_pct(held.cost, evaluate_curve(p, held.requests)) if len(held) else float("nan") for k, p in fits.items()}
    kind = min(fits, key=lambda k: (math.isnan(scores[k]), scores[k]))

    # 3. Unexplained level shift in the drift window vs a model trained before it.
    reference = rows.before(window_start)
    window = rows.since(window_start)
    reasons: list[str] = []
    if len(window) and len(reference) >= config.min_training_hours:
        if window_start == holdout_start:
            ref_curve = fits[kind]
        elif scaling == "static":
            ref_curve = _fit_static(reference, headroom, config.recent_level_hours)
        else:
            ref_curve = fit_curve(kind, reference.requests, reference.cost, config.n_knots)
        shift = residual_shift(window.cost, evaluate_curve(ref_curve, window.requests))
        if abs(shift) > config.residual_shift_tolerance:
            reasons.append(f"cost {shift:+.1%} vs the {kind} model trained before {window_start:%Y-%m-%d} (residual shift)")
        # Cost per request only means something when the fleet follows volume.
        cpr = cost_per_request_shift(reference.requests, reference.cost, window.requests, window.cost) if scaling == "autoscale" else None
        if cpr is not None and abs(cpr) > config.cost_per_request_shift_tolerance:
            reasons.append(f"cost per request {cpr:+.1%} vs earlier hours of the same volume")
    if reasons:
        return heuristic(window, True, reasons + [f"priced with a heuristic fitted on the last {config.drift_window_days} days"])

    # 4. Refit the winner on the whole (post-change) window.
    if scaling == "static":
        curve = _fit_static(rows, headroom, config.recent_level_hours)
        cost_model = "static"
    else:
        curve = fit_curve(kind, rows.requests, rows.cost, config.n_knots)
        cost_model = "ml"
    extra = {"candidate_mape_pct": {k: (None if math.isnan(s) else round(s, 4)) for k, s in scores.items()}}
    return build(scaling, cost_model, kind, curve, False, [], scores[kind], rows, extra)


def fit_all(history: pl.DataFrame, as_of: datetime, config: ModelConfig = ModelConfig()) -> list[FittedCostModel]:
    """One model per service of a long history frame (HISTORY_SCHEMA + ``service``), by service name."""
    if "service" not in history.columns:
        raise ValueError("fit_all needs a 'service' column")
    n_unnamed = history.filter(pl.col("service").is_null()).height
    if n_unnamed:
        # No model can be attributed to them; say so rather than dropping silently.
        log.warning("fit_all: %d history rows without a service were not modelled", n_unnamed)
    parts = history.filter(pl.col("service").is_not_null()).partition_by("service", as_dict=True, maintain_order=False)
    models = []
    for (service,), part in sorted(parts.items(), key=lambda kv: str(kv[0][0])):
        driver = load_driver(part)
        try:
            # The curve is fitted on the driver's hourly values (the `requests` column
            # of the training rows); `features` records which load it is.
            model = fit_service_model(str(service), part.with_columns(pl.col(driver).alias("requests")), as_of, config)
        except Exception as exc:  # add the service to the message; a bug must stay loud
            raise RuntimeError(f"fitting cost model for service {service!r} failed: {exc}") from exc
        model.features = [driver]
        models.append(model)
    return models


def registry_frame(models: list[FittedCostModel], as_of) -> pl.DataFrame:
    """One row per service model: the version main.cost_model_registry keeps for the as-of day."""
    return pl.DataFrame(
        [
            {
                "as_of": as_of,
                "service": m.service,
                "version": f"{m.service}@{as_of.isoformat()}",
                "scaling": m.scaling,
                "cost_model": m.cost_model,
                "kind": m.kind,
                "drift_detected": m.drift_detected,
                "drift_reasons": "; ".join(m.drift_reasons),
                "model_error_pct": m.model_error_pct,
                "capacity_requests_per_hour": m.capacity_requests_per_hour,
                "training_start": m.training_start,
                "training_end": m.training_end,
                "features": ",".join(m.features),
                "model_json": json.dumps(m.to_dict(), default=str),
            }
            for m in models
        ],
        schema_overrides={"capacity_requests_per_hour": pl.Float64, "model_error_pct": pl.Float64},
    )


def load_driver(history: pl.DataFrame) -> str:
    """What a service's cost follows: CPU seconds where usage metrics carry them for every
    hour (heavier requests cost more even when there are not more of them), else requests."""
    if "cpu_seconds" in history.columns and history.height:
        cpu = history["cpu_seconds"]
        if cpu.null_count() == 0 and float(cpu.sum()) > 0:
            return "cpu_seconds"
    return "requests"


def project_incremental_cost(
    model: FittedCostModel, requests_per_hour: np.ndarray, delta: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Two universes over the same hours: observed volume vs volume x (1 + delta).

    Returns (sum of counterfactual - baseline cost, baseline cost per hour,
    counterfactual cost per hour). The caller scales to 30 days.
    """
    if not math.isfinite(delta) or delta <= -1.0:
        raise ValueError(f"delta must be a finite relative change > -1, got {delta}")
    volume = np.asarray(requests_per_hour, dtype=float)
    base = model.predict(volume)
    counterfactual = model.predict(volume * (1.0 + delta))
    return float(np.sum(counterfactual - base)), base, counterfactual
