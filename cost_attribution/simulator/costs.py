"""True per-service instance models and the FOCUS 1.x hourly cost rows they produce.

One Usage row per instance-hour (ResourceId per instance, SkuId = instance type),
tagged with app/env; plus unattributable rows without an app tag: a daily support fee,
daily credits (negative) and an untagged bastion host.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from cost_attribution.simulator.config import ServiceSpec, WorldConfig
from cost_attribution.simulator.seasonality import rng_for

FOCUS_COLUMNS = [
    "BillingAccountId", "SubAccountId", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
    "ChargePeriodEnd", "ChargeCategory", "ChargeDescription", "ProviderName", "PublisherName",
    "InvoiceIssuerName", "ServiceCategory", "ServiceName", "RegionId", "ResourceId", "ResourceType",
    "SkuId", "PricingQuantity", "PricingUnit", "ConsumedQuantity", "ConsumedUnit", "ListCost",
    "BilledCost", "EffectiveCost", "BillingCurrency", "Tags",
]
ACCOUNT = "123456789012"
EC2 = "Amazon Elastic Compute Cloud"


@dataclass(frozen=True)
class InstanceModel:
    """A service's cost structure over a period: what an instance costs and serves."""

    scaling: str
    sku: str
    list_price_per_hour: float
    effective_price_per_hour: float
    capacity_per_instance_hour: float
    min_instances: int
    static_instances: int  # fleet size for static services, 0 for autoscale
    # The usage_metrics column the fleet follows; capacity_per_instance_hour is in its unit.
    driver: str = "requests"

    def instances(self, hourly_load: np.ndarray) -> np.ndarray:
        if self.scaling == "static":
            return np.full(hourly_load.shape, self.static_instances, dtype=np.int64)
        needed = np.ceil(hourly_load / self.capacity_per_instance_hour).astype(np.int64)
        return np.maximum(self.min_instances, needed)

    def cost(self, hourly_load: np.ndarray) -> float:
        return float(self.instances(hourly_load).sum() * self.effective_price_per_hour)


ModelHistory = tuple[InstanceModel, InstanceModel, "datetime.date | None"]


def instance_models(config: WorldConfig, usage: pl.DataFrame) -> dict[str, ModelHistory]:
    """service -> (model before drift, current model, first day of the current model).

    The change is the world's drift or the capacity change that came with shipping a cell
    (ShipSpec.capacity_factors); a service has at most one (WorldConfig validation)."""
    peak = dict(usage.group_by("service").agg(pl.col("requests").max()).iter_rows())
    models = {}
    for spec in config.services:
        before = _model(spec, config, spec.sku, spec.list_price_per_hour, spec.capacity_per_instance_hour,
                        peak[spec.name])
        current, switch_day = before, None
        if config.drift is not None and config.drift.service == spec.name:
            drift = config.drift
            current = _model(spec, config, drift.new_sku, drift.new_list_price_per_hour,
                             drift.new_capacity_per_instance_hour, peak[spec.name])
            switch_day = config.end_date - datetime.timedelta(days=drift.days_before_end - 1)
        for exp in config.experiments:  # a cost-structure change that came with shipping a cell
            factor = dict(exp.shipped.capacity_factors).get(spec.name) if exp.shipped else None
            if factor is not None:
                current = _model(spec, config, spec.sku, spec.list_price_per_hour,
                                 spec.capacity_per_instance_hour * factor, peak[spec.name])
                switch_day = config.ship_date_of(exp)
        models[spec.name] = (before, current, switch_day)
    return models


def _model(spec: ServiceSpec, config: WorldConfig, sku: str, price: float, capacity: float,
           peak_requests: float) -> InstanceModel:
    if spec.scaling == "static":
        static = math.ceil(peak_requests * spec.static_headroom / capacity)
        return InstanceModel(spec.scaling, sku, price, price * (1 - config.discount), capacity,
                             spec.min_instances, static)
    if config.live:  # autoscaling on CPU: an instance serves `capacity` requests of base work
        return InstanceModel(spec.scaling, sku, price, price * (1 - config.discount),
                             capacity * spec.cpu_seconds_per_request, spec.min_instances, 0, "cpu_seconds")
    return InstanceModel(spec.scaling, sku, price, price * (1 - config.discount), capacity, spec.min_instances, 0)


def focus_rows(config: WorldConfig, usage: pl.DataFrame, models: dict) -> pl.DataFrame:
    rng = rng_for(config.seed, "focus")
    instance_hours = []
    for service, (before, current, switch_day) in models.items():
        hourly = usage.filter(pl.col("service") == service).sort("hour")
        hours = hourly["hour"].to_numpy()
        load = hourly[current.driver].to_numpy()
        switch = switch_day.isoformat() if switch_day else "9999-12-31"
        is_current = np.array([h >= switch for h in hours]) if switch_day else np.zeros(len(hours), bool)
        for model, mask in ((before, ~is_current), (current, is_current)):
            if mask.any():
                instance_hours.append(pl.DataFrame({
                    "service": service, "hour": hours[mask], "sku": model.sku,
                    "price": model.list_price_per_hour, "n": model.instances(load[mask]),
                }))
    fleet = pl.concat(instance_hours).with_columns(j=pl.int_ranges(0, pl.col("n"))).explode("j")
    pools = _resource_pools(config, fleet)
    fleet = fleet.join(pools, on=["service", "sku", "j"], how="left")
    n = fleet.height
    list_cost = fleet["price"].to_numpy() * (1 + rng.normal(0, config.list_price_jitter, n))
    usage_rows = pl.DataFrame({
        "ChargePeriodStart": fleet["hour"],
        "ChargeCategory": "Usage",
        "ChargeDescription": fleet["sku"] + " On Demand Linux",
        "ServiceCategory": "Compute",
        "ServiceName": EC2,
        "RegionId": "us-east-1",
        "ResourceId": fleet["resource_id"],
        "ResourceType": "Instance",
        "SkuId": fleet["sku"],
        "PricingUnit": "Hours",
        "ListCost": list_cost,
        "EffectiveCost": list_cost * (1 - config.discount),
        "Tags": fleet["service"].replace_strict(
            {s: json.dumps({"app": s, "env": "prod"}) for s in models}, return_dtype=pl.String),
    })
    rows = pl.concat([usage_rows, _unattributable_rows(config, usage)], how="diagonal_relaxed")
    return _finish_focus(rows)


def _resource_pools(config: WorldConfig, fleet: pl.DataFrame) -> pl.DataFrame:
    """Stable instance ids per (service, sku): instance j keeps its id across hours."""
    sizes = fleet.group_by("service", "sku").agg(pl.col("n").max()).sort("service", "sku")
    frames = []
    for service, sku, size in sizes.iter_rows():
        rng = rng_for(config.seed, f"resource-{service}-{sku}")
        raw = rng.integers(0, 16, size=(size, 17))
        ids = ["i-" + "".join("0123456789abcdef"[d] for d in row) for row in raw.tolist()]
        frames.append(pl.DataFrame({"service": service, "sku": sku, "j": np.arange(size, dtype=np.int64),
                                    "resource_id": ids}))
    return pl.concat(frames).with_columns(pl.col("j").cast(fleet.schema["j"]))


def _unattributable_rows(config: WorldConfig, usage: pl.DataFrame) -> pl.DataFrame:
    days = [d.isoformat() for d in config.history_dates]
    hours = usage["hour"].unique().sort()
    daily = len(days)
    support = pl.DataFrame({
        "ChargePeriodStart": days, "ChargeCategory": "Usage", "ChargeDescription": "Business support plan",
        "ServiceCategory": "Management and Governance", "ServiceName": "AWS Support (Business)",
        "SkuId": "SUP", "PricingUnit": "Units", "ListCost": [config.support_fee_per_day] * daily,
        "EffectiveCost": [config.support_fee_per_day] * daily, "Tags": "{}", "_period_hours": 24,
    })
    credits = pl.DataFrame({
        "ChargePeriodStart": days, "ChargeCategory": "Credit", "ChargeDescription": "Promotional credit",
        "ServiceCategory": "Compute", "ServiceName": EC2, "RegionId": "us-east-1", "SkuId": "CRED",
        "PricingUnit": "Units", "ListCost": 0.0, "EffectiveCost": [config.credit_per_day] * daily,
        "Tags": "{}", "_period_hours": 24,
    })
    bastion_price = config.untagged_instance_price_per_hour
    bastion = pl.DataFrame({
        "ChargePeriodStart": hours, "ChargeCategory": "Usage", "ChargeDescription": "t3.medium On Demand Linux",
        "ServiceCategory": "Compute", "ServiceName": EC2, "RegionId": "us-east-1",
        "ResourceId": "i-0bastion0000000001", "ResourceType": "Instance", "SkuId": "t3.medium",
        "PricingUnit": "Hours", "ListCost": bastion_price, "EffectiveCost": bastion_price * (1 - config.discount),
        "Tags": json.dumps({"env": "prod"}), "_period_hours": 1,
    })
    return pl.concat([
        support.with_columns(pl.col("ChargePeriodStart") + "T00:00:00Z"),
        credits.with_columns(pl.col("ChargePeriodStart") + "T00:00:00Z"),
        bastion,
    ], how="diagonal_relaxed")


def _finish_focus(rows: pl.DataFrame) -> pl.DataFrame:
    start = pl.col("ChargePeriodStart").str.to_datetime("%Y-%m-%dT%H:%M:%SZ")
    hours = pl.col("_period_hours").fill_null(1)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return rows.with_columns(
        BillingAccountId=pl.lit(ACCOUNT), SubAccountId=pl.lit(ACCOUNT),
        BillingPeriodStart=start.dt.truncate("1mo").dt.strftime(fmt),
        BillingPeriodEnd=start.dt.truncate("1mo").dt.offset_by("1mo").dt.strftime(fmt),
        ChargePeriodEnd=(start + pl.duration(hours=hours)).dt.strftime(fmt),
        ProviderName=pl.lit("AWS"), PublisherName=pl.lit("AWS"), InvoiceIssuerName=pl.lit("AWS"),
        PricingQuantity=pl.lit(1), ConsumedQuantity=pl.lit(1),
        ConsumedUnit=pl.col("PricingUnit"),
        ListCost=pl.col("ListCost").round(6),
        EffectiveCost=pl.col("EffectiveCost").round(6),
        BilledCost=pl.col("EffectiveCost").round(6),
        BillingCurrency=pl.lit("USD"),
    ).sort("ChargePeriodStart", "ChargeCategory", "ResourceId", nulls_last=True).select(FOCUS_COLUMNS)
