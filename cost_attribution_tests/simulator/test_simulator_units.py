"""Building blocks of the simulator: OTEP 235 thresholds, call graph truth, day spans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cost_attribution.simulator import EdgeSpec, ExperimentSpec, WorldConfig
from cost_attribution.simulator.call_graph import build_call_graph
from cost_attribution.simulator.population import build_population, scale_to_target_spans
from cost_attribution.simulator.sampling import build_samplers, otep235_threshold_hex, probability_from_threshold_hex
from cost_attribution.simulator.spans import CLIENT, SERVER, generate_day_spans
from cost_attribution.simulator.truth import true_deltas


@pytest.mark.parametrize("p", [1.0, 0.5, 0.25, 0.1, 0.015, 0.01, 0.001])
def test_otep235_threshold_round_trips(p):
    digits = otep235_threshold_hex(p)
    assert len(digits) <= 14 and not (len(digits) > 1 and digits.endswith("0"))
    assert probability_from_threshold_hex(digits) == pytest.approx(p, rel=1e-12, abs=1e-15)


def test_otep235_known_values():
    assert otep235_threshold_hex(0.5) == "8"  # T = 2^55
    assert otep235_threshold_hex(1.0) == "0"
    assert probability_from_threshold_hex("fd70a3d70a3d7") == pytest.approx(0.01, rel=1e-12)


def test_truth_delta_follows_multipliers_through_the_graph():
    config = WorldConfig()
    graph = build_call_graph(config)
    names = graph.services
    delta, new_dep = true_deltas(graph, [e.id for e in config.experiments].index("smarter-prefetch"))
    by_name = dict(zip(names, delta))
    # metadata-svc is reached directly and through recs-svc; both scale by 1.4.
    assert by_name["metadata-svc"] == pytest.approx(0.4)
    assert by_name["recs-svc"] == pytest.approx(0.4)
    assert by_name["api-gateway"] == 0 and by_name["cdn-origin"] == 0 and not new_dep.any()
    delta, new_dep = true_deltas(graph, [e.id for e in config.experiments].index("search-personalization"))
    # profile: 0.6 calls per root in control, + 0.2 searches x 1.0 call in treatment.
    assert dict(zip(names, delta))["profile-svc"] == pytest.approx(0.2 / 0.6)
    assert [n for n, flag in zip(names, new_dep) if flag] == ["profile-svc"]


def test_cyclic_experiment_edge_is_rejected():
    config = dataclasses.replace(WorldConfig(), experiments=(
        ExperimentSpec("loop", "Loop", new_edges=(("cdn-origin", "images-svc", 0.1),)),))
    with pytest.raises(ValueError, match="acyclic"):
        build_call_graph(config)


def test_regular_edges_draw_exact_counts_and_broken_edges_drop_the_callee():
    extra_edge = EdgeSpec("search-svc", "legacy-ratings", 2.0, regular=True)
    config = dataclasses.replace(WorldConfig(n_members=400, trace_days=1, target_spans_per_day=30_000),
                                 edges=WorldConfig().edges + (extra_edge,))
    graph = build_call_graph(config)
    samplers = build_samplers(config)
    population = build_population(config, samplers)
    scale_to_target_spans(config, population, graph, samplers)
    spans = generate_day_spans(config, config.end_date, population, graph, samplers)
    search, legacy = graph.index("search-svc"), graph.index("legacy-ratings")
    search_servers = np.flatnonzero((spans.service == search) & (spans.kind == SERVER))
    calls = (spans.kind == CLIENT) & (spans.service == search) & (spans.peer == legacy)
    assert calls.sum() == 2 * len(search_servers)  # regular rate 2.0: exactly two calls each
    assert np.isin(spans.parent[calls], search_servers).all()
    images, cdn = graph.index("images-svc"), graph.index("cdn-origin")
    cdn_servers = (spans.service == cdn) & (spans.kind == SERVER)
    assert cdn_servers.any() and (spans.parent[cdn_servers] == -1).all()
    assert (spans.trace_member[spans.trace[cdn_servers]] == -1).all()
    assert ((spans.kind == CLIENT) & (spans.service == images) & (spans.peer == cdn)).any()
    # Children sit inside their parents in time.
    child = spans.parent >= 0
    assert (spans.start[child] >= spans.start[spans.parent[child]]).all()
    assert (spans.end[child] <= spans.end[spans.parent[child]]).all()


def test_treatment_effect_appears_only_after_the_pre_period():
    config = WorldConfig(n_members=3000, trace_days=1, pre_period_days=1, target_spans_per_day=150_000)
    graph = build_call_graph(config)
    samplers = build_samplers(config)
    population = build_population(config, samplers)
    scale_to_target_spans(config, population, graph, samplers)
    prefetch = [e.id for e in config.experiments].index("smarter-prefetch")
    metadata = graph.index("metadata-svc")
    ratios = []
    for day in config.trace_dates:
        spans = generate_day_spans(config, day, population, graph, samplers)
        member = spans.trace_member[spans.trace]
        server = (spans.kind == SERVER) & (member >= 0)
        weight = 1 / samplers.probability[spans.trace_sampler[spans.trace]]
        per_root = []
        for cell in (0, 1):
            in_cell = server & (population.cells[np.maximum(member, 0), prefetch] == cell)
            per_root.append(weight[in_cell & (spans.service == metadata)].sum()
                            / weight[in_cell & (spans.service == graph.root)].sum())
        ratios.append(per_root[1] / per_root[0])
    pre, during = ratios
    assert pre == pytest.approx(1.0, abs=0.05)
    assert during == pytest.approx(1.4, abs=0.05)
