"""Ground truth of a simulated world, in the sample world's truth.json structure.

delta: relative change of a service's expected requests per member when the cell is
rolled out to 100% (every other experiment in control), from the true call graph.
incremental_cost_usd_30d: the current (post-drift) instance model applied to the
history's usage_metrics volume x (1 + delta) minus applied to the volume itself,
scaled by 30 / history_days. baseline_cost_usd_30d: the latter, per service.
"""

from __future__ import annotations

import datetime

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import TREATMENT, CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.costs import InstanceModel
from cost_attribution.simulator.population import Population
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.trace_files import DayFileStats


def true_deltas(graph: CallGraph, experiment: int) -> tuple[np.ndarray, np.ndarray]:
    """Per service: (delta at 100% rollout, reached through an edge control never uses)."""
    n_exp = graph.multipliers.shape[0]
    control = np.zeros((1, n_exp), dtype=np.int8)
    treatment = control.copy()
    treatment[0, experiment] = TREATMENT
    v_control = graph.server_volume_per_root(graph.edge_rates(control, True))[0]
    v_treatment = graph.server_volume_per_root(graph.edge_rates(treatment, True))[0]
    if np.any((v_control == 0) & (v_treatment > 0)):
        raise ValueError("a treatment may not call a service that control never calls (delta undefined)")
    delta = np.divide(v_treatment, v_control, out=np.ones_like(v_control), where=v_control > 0) - 1.0
    new_edges = (graph.base_rates == 0) & (graph.additions[experiment] > 0)
    new_dependency = np.zeros(len(graph.services), dtype=bool)
    new_dependency[graph.callees[new_edges]] = True
    return delta, new_dependency


def build_truth(config: WorldConfig, graph: CallGraph, usage: pl.DataFrame, models: dict,
                day_stats: dict[datetime.date, DayFileStats], scale: float, samplers: Samplers,
                population: Population, unattributable_cost: float) -> dict:
    to_30d = 30.0 / config.history_days
    hourly = {svc: usage.filter(pl.col("service") == svc).sort("hour")["requests"].to_numpy().astype(float)
              for svc in graph.services}
    current: dict[str, InstanceModel] = {svc: models[svc][1] for svc in graph.services}
    baseline = {svc: current[svc].cost(hourly[svc]) for svc in graph.services}

    experiments, new_dependency_edges = {}, {}
    for x, exp in enumerate(config.experiments):
        delta, new_dep = true_deltas(graph, x)
        services = {}
        for s, svc in enumerate(graph.services):
            extra = current[svc].cost(hourly[svc] * (1 + delta[s])) - baseline[svc] if delta[s] != 0 else 0.0
            services[svc] = {"delta": float(delta[s]), "incremental_cost_usd_30d": round(extra * to_30d, 2),
                             "new_dependency": bool(new_dep[s])}
        key = f"{exp.id}:treatment"
        experiments[key] = {
            "incremental_cost_usd_30d": round(sum(v["incremental_cost_usd_30d"] for v in services.values()), 2),
            "services": services,
        }
        new = (graph.base_rates == 0) & (graph.additions[x] > 0)
        new_dependency_edges[key] = [graph.edge_label(e) for e in np.flatnonzero(new)]

    days = sorted(day_stats)
    bad = {
        "malformed_lines": sum(s.malformed_lines for s in day_stats.values()),
        "duplicate_spans": sum(s.duplicate_spans for s in day_stats.values()),
        "negative_duration_spans": sum(s.negative_duration_spans for s in day_stats.values()),
        "missing_service_name_spans": sum(s.missing_service_name_spans for s in day_stats.values()),
    }
    by_name = {s.name: s for s in config.services}
    return {
        "n_spans": sum(s.valid_spans for s in day_stats.values()),
        "bad_input": bad,
        "trace_start": days[0].isoformat(),
        # Exclusive end, as in the sample world: the day after the last trace day.
        "end_date": (config.end_date + datetime.timedelta(days=1)).isoformat(),
        "experiments": experiments,
        "static_services": [s.name for s in config.services if s.scaling == "static"],
        "drifted_services": [config.drift.service] if config.drift else [],
        "broken_propagation": [f"{a}->{b}" for a, b in config.broken_edges],
        "deprecated_services": [s.name for s in config.services if s.deprecated],
        "baseline_cost_usd_30d": {svc: round(cost * to_30d, 2) for svc, cost in baseline.items()},
        # Extra keys, beyond the sample world's structure.
        "population_scale": scale,
        "last_trace_day": config.end_date.isoformat(),
        "experiment_start": config.experiment_start.isoformat(),
        "pre_period_days": config.pre_period_days,
        "trace_days": [d.isoformat() for d in days],
        "history_start": config.history_dates[0].isoformat(),
        "n_spans_by_day": {d.isoformat(): day_stats[d].valid_spans for d in days},
        "n_members": population.size,
        "allocated_members": {exp.id: int((population.cells[:, x] >= 0).sum())
                              for x, exp in enumerate(config.experiments)},
        "new_dependency_edges": new_dependency_edges,
        "unattributable_cost_usd": round(unattributable_cost, 2),
        "samplers": {
            name: {"probability": float(samplers.probability[i]), "convention": samplers.conventions[i],
                   "tracestate": samplers.tracestate[i] or None,
                   "members": int((population.sampler == i).sum())}
            for i, name in enumerate(samplers.names)
        },
        "services": {
            svc: {
                "scaling": model.scaling, "sku": model.sku,
                "capacity_per_instance_hour": model.capacity_per_instance_hour,
                "min_instances": model.min_instances, "static_instances": model.static_instances,
                "list_price_per_hour": model.list_price_per_hour,
                "effective_price_per_hour": round(model.effective_price_per_hour, 6),
                "previous_sku": models[svc][0].sku if models[svc][2] else None,
                "current_model_since": models[svc][2].isoformat() if models[svc][2] else None,
                "deprecated": by_name[svc].deprecated,
            }
            for svc, model in current.items()
        },
    }
