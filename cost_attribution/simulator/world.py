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
from cost_attribution.simulator.config import ExperimentSpec, ShipSpec, WorldConfig, live_experiments
from cost_attribution.simulator.costs import focus_rows, instance_models
from cost_attribution.simulator.population import build_population, scale_to_target_spans
from cost_attribution.simulator.production import production
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

    live = production(config, population, graph) if config.live else None
    usage = usage_metrics(config, population, graph, scale, live)
    usage.write_csv(out_dir / "usage_metrics" / "requests_hourly.csv")
    models = instance_models(config, usage)
    focus = focus_rows(config, usage, models)
    (out_dir / "costs" / "focus_hourly.csv.gz").write_bytes(gzip.compress(focus.write_csv().encode(), 1, mtime=0))
    unattributable = focus.filter(~pl.col("Tags").str.contains('"app"'))["EffectiveCost"].sum()

    truth = build_truth(config, graph, usage, models, day_stats, scale, samplers, population, unattributable, live)
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def _validate(config: WorldConfig) -> None:
    unknown = set(config.span_formats) - {"otlp_json", "parquet"}
    if unknown or not config.span_formats:
        raise ValueError(f"span_formats must be a non-empty subset of otlp_json, parquet: {config.span_formats}")
    if config.trace_days < 1 or config.history_days < 1:
        raise ValueError("trace_days and history_days must be >= 1")
    if not config.internal_spans_per_server >= 0:
        raise ValueError(f"internal_spans_per_server must be >= 0, got {config.internal_spans_per_server}")
    if config.drift is not None and config.drift.days_before_end > config.history_days:
        raise ValueError("drift must happen inside the cost history")
    for exp in config.experiments:
        names = exp.cell_names
        if len(set(names)) != len(names):
            raise ValueError(f"{exp.id}: cell names must be distinct, got {names}")
        _ = exp.cell_weights  # raises on weights that do not fit the cells
        if exp.kind not in ("ab", "aa"):
            raise ValueError(f"{exp.id}: kind must be ab or aa, got {exp.kind!r}")
        changes = any(c.edge_multipliers or c.new_edges or c.work_multipliers for c in exp.treatment_cells)
        if exp.kind == "aa" and changes:
            raise ValueError(f"{exp.id}: an A/A experiment (kind aa) cannot change anything")
        if exp.start_days_before_end is not None and (not config.live or exp.start_days_before_end < 0):
            raise ValueError(f"{exp.id}: start_days_before_end needs a live world and a value >= 0")
        if exp.shipped is not None:
            _validate_shipped(config, exp)
    changed = [s for exp in config.experiments if exp.shipped for s, _ in exp.shipped.capacity_factors]
    if config.drift is not None:
        changed.append(config.drift.service)
    if len(changed) != len(set(changed)):
        raise ValueError(f"a service can change its cost structure once (drift or shipping): {changed}")


def _validate_shipped(config: WorldConfig, exp: ExperimentSpec) -> None:
    ship = exp.shipped
    if not config.live:
        raise ValueError(f"{exp.id}: shipping a cell needs a live world")
    if ship.cell not in exp.cell_names or ship.cell == exp.control_cell:
        raise ValueError(f"{exp.id}: shipped cell {ship.cell!r} must be one of the treatment cells {exp.cell_names[1:]}")
    if exp.start_days_before_end is None or not 0 <= ship.days_before_end < exp.start_days_before_end:
        raise ValueError(f"{exp.id}: ship days_before_end {ship.days_before_end} must be >= 0 and after the start")
    unknown = {s for s, _ in ship.capacity_factors} - {s.name for s in config.services}
    if unknown or any(f <= 0 for _, f in ship.capacity_factors):
        raise ValueError(f"{exp.id}: capacity_factors need known services and positive factors: {ship.capacity_factors}")


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


def live_world_config(seed: int = 7) -> WorldConfig:
    """Production as it really is (issue 15), demo-sized like WorldConfig(): experiments
    started weeks before the traces on uneven, partial ramps; an A/A; a static-only, a
    three-cell, a heavier-requests, a savings and a new-dependency experiment; cpu_seconds;
    pre-period traces; a trace day whose member tags were mostly lost (coverage under the
    gate); INTERNAL spans (1.5 per SERVER span); plus the blind callee, drift and dirty
    records of every world."""
    trace_days, pre_period_days = 4, 1
    return WorldConfig(seed=seed, live=True, trace_days=trace_days, pre_period_days=pre_period_days,
                       experiments=live_experiments(trace_days, pre_period_days), untagged_day=(1, 0.6),
                       internal_spans_per_server=1.5)


def small_live_world_config(seed: int = 3) -> WorldConfig:
    """live_world_config's features in a world of seconds, for tests."""
    trace_days, pre_period_days = 2, 1
    return dataclasses.replace(
        live_world_config(seed),
        n_members=800,
        trace_days=trace_days,
        pre_period_days=pre_period_days,
        experiments=live_experiments(trace_days, pre_period_days),
        target_spans_per_day=5_000,
        spans_per_line=200,
        # The tests' small worlds keep the SERVER and CLIENT spans they were tuned on: with
        # INTERNAL spans inside the same 5,000, every member would have fewer of them
        # (INTERNAL spans are tested in test_simulator_units, test_work_and_periods and, in the
        # demo-sized live world, test_demo_world_acceptance).
        internal_spans_per_server=0.0,
    )


def shipped_world_config(seed: int = 7, small: bool = False) -> WorldConfig:
    """Issue 12's closed loop: live_world_config (or its small version) whose trace window
    covers three cells going to 100%. Smarter Pre-fetch ships and metadata-svc moves to
    instances with 25% more capacity (over-projected); HD images ships and images-svc then
    needs 30% more instances per unit of work (under-projected); Personalized search
    ships a day later with no surprise (profile-svc +33%). The drift moves out of the post-ship days."""
    trace_days, pre_period_days = 5, 1  # decisions on the 3rd and 4th trace day, 3 and 2 days after
    base = small_live_world_config(seed) if small else live_world_config(seed)
    ships = {
        "smarter-prefetch": ShipSpec("treatment", 2, capacity_factors=(("metadata-svc", 1.25),)),
        "hd-images": ShipSpec("hd", 2, capacity_factors=(("images-svc", 0.7),)),
        "search-personalization": ShipSpec("treatment", 1),
    }
    starts = {"hd-images": 14}  # weeks of ramp before shipping (the live world starts it with the traces)
    experiments = tuple(
        dataclasses.replace(exp, shipped=ships[exp.id],
                            start_days_before_end=starts.get(exp.id, exp.start_days_before_end))
        if exp.id in ships else exp
        for exp in live_experiments(trace_days, pre_period_days)
    )
    drift = dataclasses.replace(base.drift, days_before_end=12) if base.drift else None
    return dataclasses.replace(base, trace_days=trace_days, pre_period_days=pre_period_days,
                               experiments=experiments, drift=drift)
