"""Traced members: identity, client domain (sampler), activity level and experiment cells."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import CONTROL, NOT_ALLOCATED, CallGraph
from cost_attribution.simulator.config import ExperimentSpec, WorldConfig
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.seasonality import day_factor, rng_for


@dataclass
class Population:
    member_ids: np.ndarray  # [n] str
    sampler: np.ndarray  # [n] index into Samplers (the member's client domain)
    activity: np.ndarray  # [n] expected root requests/day at day_factor 1
    cells: np.ndarray  # [n, n_experiments] NOT_ALLOCATED / CONTROL / treatment cells 1, 2, ...
    allocated_at: np.ndarray  # [n, n_experiments] datetime64[s]
    # [n, n_experiments] datetime64[s]: when the member's cell starts to act. In the original
    # world every allocated member is treated from the experiment's start (the first trace
    # day after the pre-period); an experiment in production treats from allocated_at.
    treated_from: np.ndarray
    # (experiment index, shipped cell code, ship time datetime64[s]): from then on every
    # member's traffic gets that cell.
    shipped: tuple[tuple[int, int, np.datetime64], ...] = ()

    @property
    def size(self) -> int:
        return len(self.member_ids)

    @functools.cached_property
    def member_id_series(self) -> pl.Series:
        return pl.Series("member_id", self.member_ids, dtype=pl.String)


def build_population(config: WorldConfig, samplers: Samplers) -> Population:
    n = config.n_members
    rng = rng_for(config.seed, "population")
    member_ids = _unique_member_ids(rng, n)
    sampler = rng.permutation(_domain_assignment(config, n))
    shape = config.activity_shape
    activity = rng.gamma(shape, config.mean_root_requests_per_member_day / shape, size=n)
    cells, allocated_at, treated_from = _allocate(config, rng, n)
    return Population(member_ids, sampler, activity, cells, allocated_at, treated_from, shipped_cells(config))


def shipped_cells(config: WorldConfig) -> tuple[tuple[int, int, np.datetime64], ...]:
    out = []
    for x, exp in enumerate(config.experiments):
        day = config.ship_date_of(exp)
        if day is not None:
            out.append((x, exp.cell_names.index(exp.shipped.cell), _midnight(day)))
    return tuple(out)


def scale_to_target_spans(config: WorldConfig, population: Population, graph: CallGraph,
                          samplers: Samplers) -> None:
    """Rescale activity so an experiment day holds about target_spans_per_day spans."""
    if config.target_spans_per_day is None:
        return
    expected = expected_spans_per_day(config, population, graph, samplers)
    population.activity *= config.target_spans_per_day / expected


def expected_spans_per_day(config: WorldConfig, population: Population, graph: CallGraph,
                           samplers: Samplers) -> float:
    rates = graph.edge_rates(population.cells, active=True)
    calls = graph.calls_per_root(rates)  # [n, n_edges]
    # Each call is a CLIENT span plus, unless context is dropped, the callee's SERVER span;
    # every SERVER span (an anonymous trace is one) has internal_spans_per_server INTERNAL
    # children on average.
    internal = config.internal_spans_per_server
    servers_per_root = 1.0 + (calls * np.where(graph.broken, 0.0, 1.0)).sum(axis=1)
    spans_per_root = servers_per_root * (1.0 + internal) + calls.sum(axis=1)
    mean_factor = np.mean([day_factor(config, d) for d in config.trace_dates])
    roots = population.activity * mean_factor
    traced = (roots * samplers.probability[population.sampler] * spans_per_root).sum()
    anonymous = ((roots * calls[:, graph.broken].sum(axis=1)).sum() * config.broken_callee_sampling_probability
                 * (1.0 + internal))
    return float(traced + anonymous)


def _unique_member_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = np.empty(0, dtype=np.uint64)
    while len(ids) < n:
        fresh = rng.integers(0, 2**48, size=n - len(ids), dtype=np.uint64)
        ids = np.unique(np.concatenate([ids, fresh]))
    ids = rng.permutation(ids)[:n]
    return np.array([f"m{v:012x}" for v in ids.tolist()])


def _domain_assignment(config: WorldConfig, n: int) -> np.ndarray:
    """Exact member counts per domain; every domain with a share gets at least one member."""
    shares = np.array([d.member_share for d in config.sampling_domains], dtype=float)
    counts = np.maximum(np.round(shares / shares.sum() * n).astype(int), (shares > 0).astype(int))
    counts[np.argmax(counts)] += n - counts.sum()
    return np.repeat(np.arange(len(counts)), counts)


def _allocate(config: WorldConfig, rng: np.random.Generator,
              n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells drawn with the experiment's weights (multinomial), allocation times along its ramp."""
    n_exp = len(config.experiments)
    cells = np.full((n, n_exp), NOT_ALLOCATED, dtype=np.int8)
    first_day = config.first_trace_day
    window_end = _midnight(first_day)
    data_end = _midnight(config.end_date) + np.timedelta64(86_400, "s")
    lead_seconds = config.allocation_lead_days * 86_400
    allocated_at = np.full((n, n_exp), np.datetime64("NaT"), dtype="datetime64[s]")
    treated_from = allocated_at.copy()
    for x, exp in enumerate(config.experiments):
        if exp.start_days_before_end is None:  # the original world's shared stream
            allocated = rng.random(n) < exp.allocation_fraction
            cells[allocated, x] = _draw_cells(exp.cell_weights, rng.random(n))[allocated]
            offsets = rng.integers(1, lead_seconds, size=int(allocated.sum()))
            allocated_at[allocated, x] = window_end - offsets.astype("timedelta64[s]")
            treated_from[allocated, x] = _midnight(config.experiment_start)
            continue
        # Its own stream: adding or changing one experiment leaves the others' members alone.
        own = rng_for(config.seed, f"allocation-{exp.id}")
        allocated = own.random(n) < exp.allocation_fraction
        cells[allocated, x] = _draw_cells(exp.cell_weights, own.random(n))[allocated]
        start = _midnight(config.start_of(exp))
        days = _ramp_days(exp, own.random(int(allocated.sum())))
        at = start + np.round(days * 86_400).astype("timedelta64[s]")
        rows = np.flatnonzero(allocated)
        late = at >= data_end  # the ramp has not reached them yet
        cells[rows[late], x] = NOT_ALLOCATED
        allocated_at[rows[~late], x] = at[~late]
        treated_from[rows[~late], x] = at[~late]
    return cells, allocated_at, treated_from


def _draw_cells(weights: tuple[float, ...], u: np.ndarray) -> np.ndarray:
    """u ~ U(0, 1) -> cell code. Treatment cells take [0, w1), [w1, w1 + w2), ...; control the rest."""
    bounds = np.cumsum(weights[1:])
    index = np.searchsorted(bounds, u, side="right")
    return np.where(index < len(bounds), index + 1, CONTROL).astype(np.int8)


def _ramp_days(exp: ExperimentSpec, u: np.ndarray) -> np.ndarray:
    """Days after the start at which the allocated members enter: the inverse of the ramp
    (fraction of the final allocation reached by then), piecewise linear from (0, 0)."""
    if exp.ramp_steps:
        days = np.array([0.0] + [d for d, _ in exp.ramp_steps])
        reached = np.array([0.0] + [f for _, f in exp.ramp_steps])
        if np.any(np.diff(days) <= 0) or np.any(np.diff(reached) < 0) or reached[-1] != 1.0:
            raise ValueError(f"{exp.id}: ramp_steps must have increasing days and reach 1.0, got {exp.ramp_steps}")
        return np.interp(u, reached, days)
    if exp.ramp_days <= 0:
        raise ValueError(f"{exp.id}: ramp_days must be > 0, got {exp.ramp_days}")
    return u * exp.ramp_days


def _midnight(day: datetime.date) -> np.datetime64:
    return np.datetime64(datetime.datetime(day.year, day.month, day.day), "s")
