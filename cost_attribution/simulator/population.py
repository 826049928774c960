"""Traced members: identity, client domain (sampler), activity level and experiment cells."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import CONTROL, NOT_ALLOCATED, TREATMENT, CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.seasonality import day_factor, rng_for


@dataclass
class Population:
    member_ids: np.ndarray  # [n] str
    sampler: np.ndarray  # [n] index into Samplers (the member's client domain)
    activity: np.ndarray  # [n] expected root requests/day at day_factor 1
    cells: np.ndarray  # [n, n_experiments] NOT_ALLOCATED / CONTROL / TREATMENT
    allocated_at: np.ndarray  # [n, n_experiments] datetime64[s]

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
    cells, allocated_at = _allocate(config, rng, n)
    return Population(member_ids, sampler, activity, cells, allocated_at)


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
    # Each call is a CLIENT span plus, unless context is dropped, the callee's SERVER span.
    spans_per_root = 1.0 + (calls * np.where(graph.broken, 1.0, 2.0)).sum(axis=1)
    mean_factor = np.mean([day_factor(config, d) for d in config.trace_dates])
    roots = population.activity * mean_factor
    traced = (roots * samplers.probability[population.sampler] * spans_per_root).sum()
    anonymous = (roots * calls[:, graph.broken].sum(axis=1)).sum() * config.broken_callee_sampling_probability
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


def _allocate(config: WorldConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    n_exp = len(config.experiments)
    cells = np.full((n, n_exp), NOT_ALLOCATED, dtype=np.int8)
    first_day = config.first_trace_day
    window_end = np.datetime64(datetime.datetime(first_day.year, first_day.month, first_day.day), "s")
    lead_seconds = config.allocation_lead_days * 86_400
    allocated_at = np.full((n, n_exp), np.datetime64("NaT"), dtype="datetime64[s]")
    for x, exp in enumerate(config.experiments):
        allocated = rng.random(n) < exp.allocation_fraction
        treated = rng.random(n) < exp.treatment_share
        cells[allocated, x] = np.where(treated[allocated], TREATMENT, CONTROL)
        offsets = rng.integers(1, lead_seconds, size=int(allocated.sum()))
        allocated_at[allocated, x] = window_end - offsets.astype("timedelta64[s]")
    return cells, allocated_at
