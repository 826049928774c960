"""Ground truth of a simulated world, in the sample world's truth.json structure.

delta: relative change of a service's expected requests per member when the cell is
rolled out to 100% (every other experiment in control), from the true call graph.
incremental_cost_usd_30d: the current (post-drift) instance model applied to the
history's usage_metrics volume x (1 + delta) minus applied to the volume itself,
scaled by 30 / history_days. baseline_cost_usd_30d: the latter, per service.

Live worlds (production as it really is) key one entry per non-control cell
"experiment:cell" with kind, start, weights, its treated share and, per service, delta,
work_delta (total work = cpu), new_dependency and two prices on the service's driver
(cpu_seconds for autoscaled services, requests for static ones), both at the current
cost structure and scaled by 30 / history_days:
- incremental_cost_usd_30d = f(B (1 + d)) - f(B), B the load with every experiment's
  treated share taken out (everyone in control);
- bill_change_usd_30d = f(L (1 + d) / (1 + sum_c s_c(h) d_c)) - f(L), L the load as it
  was (this experiment's share replaced by 100% of the cell, the others as they are).
shipped["experiment:cell"] (live worlds, per ShipSpec): the ship date, and per service and in
total the realized change over the days after shipping, scaled to 30 days,
sum_h f_h(L(h)) - f_pre(L(h) / F(h)), F the experiment's load factor (1 + the cell's delta),
f_h the cost structure in force (any capacity change that came with shipping), f_pre the one
just before shipping; beside it the true incremental cost priced on the 28 days before the
ship date at the pre-ship structure (what a perfect projection would have said).
treated_share[experiment][cell]: the cell's share of each hour's load (hourly, daily,
means over the history, the trace window and the last day).
"""

from __future__ import annotations

import datetime

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.costs import InstanceModel
from cost_attribution.simulator.population import Population
from cost_attribution.simulator.production import Production, arm_effect
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.trace_files import DayFileStats


def true_deltas(graph: CallGraph, arm: int) -> tuple[np.ndarray, np.ndarray]:
    """Per service: (delta at 100% rollout, reached through an edge control never uses).

    arm: a non-control cell (in a world of two-cell experiments, the experiment's index)."""
    effect = arm_effect(graph, arm)
    return effect.delta, effect.new_dependency


def build_truth(config: WorldConfig, graph: CallGraph, usage: pl.DataFrame, models: dict,
                day_stats: dict[datetime.date, DayFileStats], scale: float, samplers: Samplers,
                population: Population, unattributable_cost: float, live: Production | None = None) -> dict:
    to_30d = 30.0 / config.history_days
    current: dict[str, InstanceModel] = {svc: models[svc][1] for svc in graph.services}
    hourly = {svc: usage.filter(pl.col("service") == svc).sort("hour")[current[svc].driver].to_numpy().astype(float)
              for svc in graph.services}
    baseline = {svc: current[svc].cost(hourly[svc]) for svc in graph.services}
    if live is None:
        experiments, new_dependency_edges = _trace_window_experiments(config, graph, hourly, current, to_30d)
    else:
        experiments, new_dependency_edges = _live_experiments(config, graph, hourly, current, live, to_30d)

    days = sorted(day_stats)
    bad = {
        "malformed_lines": sum(s.malformed_lines for s in day_stats.values()),
        "duplicate_spans": sum(s.duplicate_spans for s in day_stats.values()),
        "negative_duration_spans": sum(s.negative_duration_spans for s in day_stats.values()),
        "missing_service_name_spans": sum(s.missing_service_name_spans for s in day_stats.values()),
    }
    by_name = {s.name: s for s in config.services}
    truth = {
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
    if live is not None:
        for svc, model in current.items():
            truth["services"][svc]["driver"] = model.driver  # capacity_per_instance_hour is in its unit
            truth["services"][svc]["cpu_seconds_per_request"] = by_name[svc].cpu_seconds_per_request
        truth["treated_share"] = _treated_shares(config, graph, live)
        truth["history_hours"] = len(live.hours)
        truth["shipped"] = _shipped(config, graph, hourly, models, live)
    return truth


def _trace_window_experiments(config: WorldConfig, graph: CallGraph, hourly: dict[str, np.ndarray],
                              current: dict[str, InstanceModel], to_30d: float) -> tuple[dict, dict]:
    """The original world: the history's volume x (1 + delta) against the volume itself."""
    experiments, new_dependency_edges = {}, {}
    for x, exp in enumerate(config.experiments):
        delta, new_dep = true_deltas(graph, x)
        services = {}
        for s, svc in enumerate(graph.services):
            extra = current[svc].cost(hourly[svc] * (1 + delta[s])) - current[svc].cost(hourly[svc]) \
                if delta[s] != 0 else 0.0
            services[svc] = {"delta": float(delta[s]), "incremental_cost_usd_30d": round(extra * to_30d, 2),
                             "new_dependency": bool(new_dep[s])}
        key = f"{exp.id}:treatment"
        experiments[key] = {
            "incremental_cost_usd_30d": round(sum(v["incremental_cost_usd_30d"] for v in services.values()), 2),
            "services": services,
        }
        new_dependency_edges[key] = _new_edges(graph, x)
    return experiments, new_dependency_edges


def _live_experiments(config: WorldConfig, graph: CallGraph, hourly: dict[str, np.ndarray],
                      current: dict[str, InstanceModel], live: Production, to_30d: float) -> tuple[dict, dict]:
    """One entry per non-control cell, priced on each service's driver (cpu for autoscaled):

    incremental = f_now(B (1 + d)) - f_now(B), B = the load with every treated share taken out;
    bill = f_now(L (1 + d) / (1 + sum_c s_c d_c)) - f_now(L), L = the load as it was.
    """
    on_cpu = np.array([current[svc].driver == "cpu_seconds" for svc in graph.services])
    load = np.column_stack([hourly[svc] for svc in graph.services])  # [H, n_svc]
    everyone_control = load / np.where(on_cpu, live.factor(work=True), live.factor(work=False))
    experiments, new_dependency_edges = {}, {}
    for a, effect in enumerate(live.effects):
        x, code = int(graph.arm_experiment[a]), int(graph.arm_cell[a])
        exp = config.experiments[x]
        own_share = np.where(on_cpu, live.experiment_factor(x, work=True), live.experiment_factor(x, work=False))
        d = np.where(on_cpu, effect.work_delta, effect.delta)
        services = {}
        for s, svc in enumerate(graph.services):
            cost = current[svc].cost
            incremental = cost(everyone_control[:, s] * (1 + d[s])) - cost(everyone_control[:, s])
            bill = cost(load[:, s] * (1 + d[s]) / own_share[:, s]) - cost(load[:, s])
            services[svc] = {
                "delta": float(effect.delta[s]), "work_delta": float(effect.work_delta[s]),
                "incremental_cost_usd_30d": round(incremental * to_30d, 2),
                "bill_change_usd_30d": round(bill * to_30d, 2),
                "new_dependency": bool(effect.new_dependency[s]),
            }
        key = f"{exp.id}:{exp.cell_names[code]}"
        experiments[key] = {
            "experiment_id": exp.id, "cell": exp.cell_names[code], "control_cell": exp.control_cell,
            "kind": exp.kind, "start": config.start_of(exp).isoformat(),
            "weights": [round(w, 6) for w in exp.cell_weights],
            "incremental_cost_usd_30d": round(sum(v["incremental_cost_usd_30d"] for v in services.values()), 2),
            "bill_change_usd_30d": round(sum(v["bill_change_usd_30d"] for v in services.values()), 2),
            "treated_share": _share_summary(config, live.hours, live.shares[a], daily=False),
            "services": services,
        }
        new_dependency_edges[key] = _new_edges(graph, a)
    return experiments, new_dependency_edges


def _shipped(config: WorldConfig, graph: CallGraph, hourly: dict[str, np.ndarray], models: dict,
             live: Production) -> dict:
    out = {}
    for x, exp in enumerate(config.experiments):
        ship_day = config.ship_date_of(exp)
        if ship_day is None:
            continue
        ship = np.datetime64(ship_day.isoformat(), "s")
        after = live.hours >= ship
        before = (live.hours < ship) & (live.hours >= ship - np.timedelta64(28, "D"))
        a = next(a for a in np.flatnonzero(graph.arm_experiment == x)
                 if exp.cell_names[graph.arm_cell[a]] == exp.shipped.cell)
        to_30d = 720.0 / max(int(after.sum()), 1)
        services = {}
        for s, svc in enumerate(graph.services):
            old, new, switch = models[svc]
            pre = new if switch is not None and switch < ship_day else old
            changed = live.hours >= np.datetime64(switch.isoformat(), "s") if switch else np.zeros(len(after), bool)
            work = new.driver == "cpu_seconds"
            factor = live.experiment_factor(x, work=work)[:, s]
            delta = (live.effects[a].work_delta if work else live.effects[a].delta)[s]
            load, without = hourly[svc], hourly[svc] / factor
            actual = old.cost(load[after & ~changed]) + new.cost(load[after & changed])
            if svc in dict(exp.shipped.capacity_factors):  # the change came with this cell
                realized = actual - pre.cost(without[after])
            else:  # any other change happens either way
                realized = actual - old.cost(without[after & ~changed]) - new.cost(without[after & changed])
            baseline = load[before] / live.factor(work=work)[before, s]
            projected = pre.cost(baseline * (1 + delta)) - pre.cost(baseline)
            services[svc] = {
                "realized_change_usd_30d": round(realized * to_30d, 2),
                "incremental_cost_usd_30d_pre_ship": round(projected * 30.0 / 28.0, 2),
                "capacity_factor": dict(exp.shipped.capacity_factors).get(svc, 1.0),
            }
        out[f"{exp.id}:{exp.shipped.cell}"] = {
            "ship_date": ship_day.isoformat(), "post_ship_hours": int(after.sum()),
            "realized_change_usd_30d": round(sum(v["realized_change_usd_30d"] for v in services.values()), 2),
            "incremental_cost_usd_30d_pre_ship": round(
                sum(v["incremental_cost_usd_30d_pre_ship"] for v in services.values()), 2),
            "services": services,
        }
    return out


def _new_edges(graph: CallGraph, arm: int) -> list[str]:
    new = (graph.base_rates == 0) & (graph.additions[arm] > 0)
    return [graph.edge_label(e) for e in np.flatnonzero(new)]


def _treated_shares(config: WorldConfig, graph: CallGraph, live: Production) -> dict:
    """experiment -> cell -> the cell's share of production load over the history."""
    out = {exp.id: {exp.control_cell: _share_summary(config, live.hours, live.control_shares[x], daily=True)}
           for x, exp in enumerate(config.experiments)}
    for a, (x, code) in enumerate(zip(graph.arm_experiment, graph.arm_cell)):
        exp = config.experiments[x]
        out[exp.id][exp.cell_names[code]] = _share_summary(config, live.hours, live.shares[a], daily=True)
    return out


def _share_summary(config: WorldConfig, hours: np.ndarray, share: np.ndarray, daily: bool) -> dict:
    """Mean treated share over the history, the trace window and the last day (hourly means);
    with daily=True also every day's mean and every hour's share (history_hours long)."""
    first_trace = np.datetime64(config.first_trace_day.isoformat(), "s")
    in_traces = hours >= first_trace
    summary = {
        "mean_history": round(float(share.mean()), 6),
        "mean_trace_window": round(float(share[in_traces].mean()), 6) if in_traces.any() else None,
        "last_day": round(float(share[-24:].mean()), 6),
    }
    if daily:
        days = share.reshape(-1, 24).mean(axis=1)
        summary["daily"] = {d.isoformat(): round(float(v), 6) for d, v in zip(config.history_dates, days)}
        summary["hourly"] = [round(float(v), 6) for v in share]
    return summary
