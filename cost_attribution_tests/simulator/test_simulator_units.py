"""Building blocks of the simulator: OTEP 235 thresholds, call graph truth, day spans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cost_attribution.simulator import EdgeSpec, ExperimentSpec, WorldConfig
from cost_attribution.simulator.call_graph import build_call_graph
from cost_attribution.simulator.population import build_population, scale_to_target_spans
from cost_attribution.simulator.sampling import build_samplers, otep235_threshold_hex, probability_from_threshold_hex
from cost_attribution.simulator.spans import CLIENT, INTERNAL, SERVER, generate_day_spans
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


def test_internal_spans_sit_inside_server_spans_and_leave_every_other_draw_alone():
    plain_config = WorldConfig(n_members=400, trace_days=1)
    config = dataclasses.replace(plain_config, internal_spans_per_server=1.5)
    graph, samplers = build_call_graph(config), build_samplers(config)
    population = build_population(config, samplers)
    plain = generate_day_spans(plain_config, config.end_date, population, graph, samplers)
    spans = generate_day_spans(config, config.end_date, population, graph, samplers)
    n = plain.n_spans
    for column in ("trace", "span_id", "parent", "service", "kind", "peer", "start", "end"):
        assert np.array_equal(getattr(spans, column)[:n], getattr(plain, column)), column
    assert (spans.kind[:n] != INTERNAL).all() and (spans.kind[n:] == INTERNAL).all()
    parent = spans.parent[n:]
    assert (spans.kind[parent] == SERVER).all()
    assert np.array_equal(spans.trace[n:], spans.trace[parent]) and np.array_equal(spans.service[n:], spans.service[parent])
    assert (spans.peer[n:] == -1).all()
    assert (spans.start[n:] >= spans.start[parent]).all() and (spans.end[n:] <= spans.end[parent]).all()
    assert (spans.end[n:] >= spans.start[n:]).all()
    servers = (plain.kind == SERVER).sum()
    assert (spans.n_spans - n) / servers == pytest.approx(1.5, rel=0.05)
    assert len(np.unique(spans.span_id)) == spans.n_spans
    # A day's target size counts them: the members' activity makes room.
    sized = dataclasses.replace(config, target_spans_per_day=30_000)
    population = build_population(sized, samplers)
    scale_to_target_spans(sized, population, graph, samplers)
    day = generate_day_spans(sized, sized.end_date, population, graph, samplers)
    assert day.n_spans == pytest.approx(30_000, rel=0.1)


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


def test_cells_are_drawn_from_the_weights_and_members_enter_along_the_ramp():
    from cost_attribution.simulator.population import _draw_cells, _ramp_days
    u = np.array([0.0, 0.29, 0.3, 0.69, 0.7, 0.99])
    # Treatment cells take [0, 0.3) and [0.3, 0.7); control (0) the rest.
    assert _draw_cells((0.3, 0.3, 0.4), u).tolist() == [1, 1, 2, 2, 0, 0]
    stepped = ExperimentSpec("x", "X", start_days_before_end=10, ramp_steps=((1.0, 0.3), (14.0, 0.3), (15.0, 1.0)))
    days = _ramp_days(stepped, np.array([0.15, 0.3 - 1e-9, 0.65, 1.0]))
    assert days == pytest.approx([0.5, 1.0, 14.5, 15.0], abs=1e-6)
    assert _ramp_days(ExperimentSpec("y", "Y", ramp_days=4.0), np.array([0.25])) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="ramp_steps"):
        _ramp_days(ExperimentSpec("z", "Z", ramp_steps=((2.0, 0.5), (1.0, 1.0))), np.array([0.5]))


def test_every_cell_is_an_arm_with_its_own_volume_and_work_effect():
    from cost_attribution.simulator import small_live_world_config
    from cost_attribution.simulator.production import arm_effect
    config = small_live_world_config()
    graph = build_call_graph(config)
    labels = [f"{config.experiments[x].id}:{config.experiments[x].cell_names[c]}"
              for x, c in zip(graph.arm_experiment, graph.arm_cell)]
    legacy, images = graph.index("legacy-ratings"), graph.index("images-svc")
    badge, large, hd = (arm_effect(graph, labels.index(k))
                        for k in ("ratings-badge:badge", "ratings-badge:badge-large", "hd-images:hd"))
    assert badge.delta[legacy] == pytest.approx(7.5) and large.delta[legacy] == pytest.approx(15.0)
    assert badge.work_delta[legacy] == pytest.approx(7.5)  # more requests of the same weight
    assert hd.delta[images] == 0 and hd.work_delta[images] == pytest.approx(0.6)
    assert np.count_nonzero(hd.work_delta) == 1


def test_live_span_times_come_from_work():
    """A SERVER span lasts the work of its request (the contract: SERVER duration measures
    work per request), however many calls it makes; calls lie inside it and a callee's
    SERVER span starts inside the call."""
    from cost_attribution.simulator import small_live_world_config
    config = dataclasses.replace(small_live_world_config(), trace_days=1, pre_period_days=0,
                                 target_spans_per_day=20_000)
    graph = build_call_graph(config)
    samplers = build_samplers(config)
    population = build_population(config, samplers)
    scale_to_target_spans(config, population, graph, samplers)
    spans = generate_day_spans(config, config.end_date, population, graph, samplers)
    child = spans.parent >= 0
    assert (spans.start[child] >= spans.start[spans.parent[child]]).all()
    assert (spans.start[child] <= spans.end[spans.parent[child]]).all()
    clients = np.flatnonzero(spans.kind == CLIENT)
    assert (spans.end[clients] <= spans.end[spans.parent[clients]]).all()
    duration = spans.end - spans.start
    servers = spans.kind == SERVER
    calls = np.bincount(spans.parent[clients], minlength=spans.n_spans)[servers]
    for s, service in enumerate(graph.services):
        mine = spans.service[servers] == s
        if service != "images-svc":  # hd-images makes some of its requests heavier
            assert duration[servers][mine].mean() / 1e9 == pytest.approx(graph.base_work[s], rel=0.1), service
    gateway = spans.service[servers] == graph.index("api-gateway")
    few, many = gateway & (calls <= 2), gateway & (calls >= 6)
    assert duration[servers][many].mean() == pytest.approx(duration[servers][few].mean(), rel=0.1)
