"""generate_world: writes a complete landing zone plus truth.json for one WorldConfig."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import polars as pl

from cost_attribution.simulator.call_graph import build_call_graph
from cost_attribution.simulator.catalogs import (
    allocations_frame, business_metrics_frame, write_experiments_yaml, write_services_yaml)
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.costs import focus_rows, instance_models
from cost_attribution.simulator.population import build_population, scale_to_target_spans
from cost_attribution.simulator.sampling import build_samplers
from cost_attribution.simulator.spans import generate_day_spans
from cost_attribution.simulator.trace_files import write_trace_day
from cost_attribution.simulator.truth import build_truth
from cost_attribution.simulator.usage import population_scale, usage_metrics


def generate_world(out_dir: Path, config: WorldConfig | None = None) -> dict:
    """Write the landing zone (contract.md) and truth.json into out_dir; return the truth."""
    config = config or WorldConfig()
    _validate(config)
    out_dir = Path(out_dir)
    for sub in ("allocations", "costs", "usage_metrics", "business_metrics", "traces"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    graph = build_call_graph(config)
    samplers = build_samplers(config)
    population = build_population(config, samplers)
    scale_to_target_spans(config, population, graph, samplers)
    scale = population_scale(config, population)

    write_experiments_yaml(out_dir / "experiments.yaml", config)
    write_services_yaml(out_dir / "services.yaml", config)
    allocations_frame(config, population).write_csv(out_dir / "allocations" / "allocations.csv")
    business_metrics_frame(config).write_csv(out_dir / "business_metrics" / "business_metrics.csv")

    day_stats = {}
    for day in config.trace_dates:
        spans = generate_day_spans(config, day, population, graph, samplers)
        day_stats[day] = write_trace_day(out_dir, day, spans, config, graph.services, samplers, population)
        del spans  # a benchmark day holds several GB of columns; free before the next

    usage = usage_metrics(config, population, graph, scale)
    usage.write_csv(out_dir / "usage_metrics" / "requests_hourly.csv")
    models = instance_models(config, usage)
    focus = focus_rows(config, usage, models)
    (out_dir / "costs" / "focus_hourly.csv.gz").write_bytes(gzip.compress(focus.write_csv().encode(), 1, mtime=0))
    unattributable = focus.filter(~pl.col("Tags").str.contains('"app"'))["EffectiveCost"].sum()

    truth = build_truth(config, graph, usage, models, day_stats, scale, samplers, population, unattributable)
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _validate(config: WorldConfig) -> None:
    unknown = set(config.span_formats) - {"otlp_json", "parquet"}
    if unknown or not config.span_formats:
        raise ValueError(f"span_formats must be a non-empty subset of otlp_json, parquet: {config.span_formats}")
    if config.trace_days < 1 or config.history_days < 1:
        raise ValueError("trace_days and history_days must be >= 1")
    if config.drift is not None and config.drift.days_before_end > config.history_days:
        raise ValueError("drift must happen inside the cost history")


def small_world_config(seed: int = 3) -> WorldConfig:
    """A tiny world with every feature (pre-period, all experiments, three sampling
    conventions, broken edge, drift, dirty records) for fast full-pipeline tests."""
    return dataclasses.replace(
        WorldConfig(),
        seed=seed,
        n_members=800,
        trace_days=2,
        pre_period_days=1,
        target_spans_per_day=5_000,
        spans_per_line=200,
    )
