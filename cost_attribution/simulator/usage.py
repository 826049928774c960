"""Production request counts per service-hour (usage_metrics).

The traced members are a sample of production: production volume = the traced
members' expected volume x population_scale, with population_scale fixed so that the
root service receives production_root_requests_per_day on a weekday at end_date.
Experiment effects are in production from the experiments' start (the same members
are allocated), so the last days' metrics include them.

Live worlds: every hour's load is the everyone-in-control load times the treated shares'
factors (production.py), and a cpu_seconds column gives the work those requests did
(the same hourly noise, so without work changes cpu_seconds = requests x base work).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population
from cost_attribution.simulator.production import Production
from cost_attribution.simulator.seasonality import day_factor, experiments_active, hour_shares, rng_for


def population_scale(config: WorldConfig, population: Population) -> float:
    return config.production_root_requests_per_day / float(population.activity.sum())


def expected_daily_server_volume(population: Population, graph: CallGraph, active: bool) -> np.ndarray:
    """Traced members' expected SERVER requests per service on a day with factor 1: [n_svc]."""
    rates = graph.edge_rates(population.cells, active)
    return population.activity @ graph.server_volume_per_root(rates)


def usage_metrics(config: WorldConfig, population: Population, graph: CallGraph, scale: float,
                  live: Production | None = None) -> pl.DataFrame:
    rng = rng_for(config.seed, "usage-metrics")
    per_day = {active: expected_daily_server_volume(population, graph, active) for active in (False, True)}
    shares = hour_shares(config)
    hours, services, load = [], [], []
    for day in config.history_dates:
        # live: shares below; a tidy world's production may not show its tests at all.
        active = experiments_active(config, day) and live is None and config.tests_in_production
        daily = per_day[active] * day_factor(config, day) * scale
        expected = np.outer(shares, daily)  # [24, n_svc]
        noisy = expected * rng.lognormal(0.0, config.usage_noise, size=expected.shape)
        base = np.datetime64(day.isoformat(), "h")
        hours.append(np.repeat(base + np.arange(24), len(graph.services)))
        services.append(np.tile(np.arange(len(graph.services)), 24))
        load.append(noisy)
    hour = np.concatenate(hours)
    frame = pl.DataFrame({
        "hour": pl.Series(hour.astype("datetime64[ms]")).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "service": pl.Series(np.concatenate(services)).replace_strict(
            dict(enumerate(graph.services)), return_dtype=pl.String),
    })
    everyone_control = np.concatenate(load)  # [H, n_svc] in the live case
    if live is None:
        return frame.with_columns(requests=pl.Series(np.round(everyone_control).astype(np.int64).ravel()))
    requests = everyone_control * live.factor(work=False)
    cpu = everyone_control * graph.base_work * live.factor(work=True)
    return frame.with_columns(requests=pl.Series(np.round(requests).astype(np.int64).ravel()),
                              cpu_seconds=pl.Series(np.round(cpu, 1).ravel()))
