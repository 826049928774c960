"""Experiments in production (live worlds): each hour's treated share and what it does to load.

s_{e,c}(h), the treated share of cell c of experiment e in hour h, is the activity-weighted
share of the traced members that the cell acts on during that hour (a member allocated
mid-hour counts for the part of the hour after its allocated_at). The production load is

    L_k(h) = B_k(h) * prod_e (1 + sum_c s_{e,c}(h) * d_{e,c,k})

with B the everyone-in-control load and d the cell's relative change of service k at 100%
(request volume for requests, total work for cpu_seconds).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from cost_attribution.simulator.call_graph import CONTROL, CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population

SECONDS_PER_HOUR = 3_600


@dataclass(frozen=True)
class ArmEffect:
    """What one non-control cell does at 100% rollout (every other experiment in control)."""

    delta: np.ndarray  # [n_svc] relative change of request volume
    work_delta: np.ndarray  # [n_svc] relative change of total work (cpu seconds)
    new_dependency: np.ndarray  # [n_svc] bool: reached through an edge control never uses


def arm_effect(graph: CallGraph, arm: int) -> ArmEffect:
    control = np.full((1, graph.n_experiments), CONTROL, dtype=np.int8)
    treated = control.copy()
    treated[0, graph.arm_experiment[arm]] = graph.arm_cell[arm]
    v_control = graph.server_volume_per_root(graph.edge_rates(control, True))[0]
    v_treated = graph.server_volume_per_root(graph.edge_rates(treated, True))[0]
    if np.any((v_control == 0) & (v_treated > 0)):
        raise ValueError("a treatment may not call a service that control never calls (delta undefined)")
    ratio = np.divide(v_treated, v_control, out=np.ones_like(v_control), where=v_control > 0)
    work_ratio = graph.work_per_request(treated)[0] / graph.work_per_request(control)[0]
    new_edges = (graph.base_rates == 0) & (graph.additions[arm] > 0)
    new_dependency = np.zeros(len(graph.services), dtype=bool)
    new_dependency[graph.callees[new_edges]] = True
    return ArmEffect(ratio - 1.0, ratio * work_ratio - 1.0, new_dependency)


def history_hours(config: WorldConfig) -> np.ndarray:
    """Start of every hour of the cost/usage history, datetime64[s]."""
    first = config.history_dates[0]
    start = np.datetime64(datetime.datetime(first.year, first.month, first.day), "s")
    return start + np.arange(24 * config.history_days) * np.timedelta64(SECONDS_PER_HOUR, "s")


def cell_share(population: Population, experiment: int, cell: int, hours: np.ndarray) -> np.ndarray:
    """Treated share s(h) of one cell per hour: activity-weighted, partial hours prorated."""
    members = np.flatnonzero(population.cells[:, experiment] == cell)
    since = population.treated_from[members, experiment]
    seconds = (hours[None, :] + np.timedelta64(SECONDS_PER_HOUR, "s") - since[:, None]).astype(np.int64)
    acting = np.clip(seconds / SECONDS_PER_HOUR, 0.0, 1.0)
    return population.activity[members] @ acting / population.activity.sum()


@dataclass(frozen=True)
class Production:
    """Treated shares over the history and the load factors they imply."""

    hours: np.ndarray  # [H] datetime64[s]
    shares: np.ndarray  # [n_arms, H] s of each non-control cell
    control_shares: np.ndarray  # [n_experiments, H] s of each control cell
    effects: tuple[ArmEffect, ...]  # per arm
    arm_experiment: np.ndarray  # [n_arms]
    n_services: int

    def factor(self, work: bool) -> np.ndarray:
        """[H, n_svc] production load / everyone-in-control load."""
        total = np.ones((len(self.hours), self.n_services))
        for x in np.unique(self.arm_experiment):
            total *= self.experiment_factor(int(x), work)
        return total

    def experiment_factor(self, experiment: int, work: bool) -> np.ndarray:
        """[H, n_svc] 1 + sum_c s_{e,c}(h) d_{e,c,k}: the experiment's treated share, as load."""
        factor = np.ones((len(self.hours), self.n_services))
        for a in np.flatnonzero(self.arm_experiment == experiment):
            d = self.effects[a].work_delta if work else self.effects[a].delta
            factor += np.outer(self.shares[a], d)
        return factor


def production(config: WorldConfig, population: Population, graph: CallGraph) -> Production:
    hours = history_hours(config)
    arms = range(len(graph.arm_experiment))
    shares = np.array([cell_share(population, int(graph.arm_experiment[a]), int(graph.arm_cell[a]), hours)
                       for a in arms]).reshape(len(graph.arm_experiment), len(hours))
    control = np.array([cell_share(population, x, CONTROL, hours) for x in range(len(config.experiments))])
    for x, code, shipped_at in population.shipped:  # from the ship time on the cell serves everyone
        after = hours >= shipped_at
        for a in np.flatnonzero(graph.arm_experiment == x):
            shares[a, after] = 1.0 if graph.arm_cell[a] == code else 0.0
        control[x, after] = 0.0
    effects = tuple(arm_effect(graph, a) for a in arms)
    return Production(hours, shares, control.reshape(len(config.experiments), len(hours)), effects,
                      graph.arm_experiment, len(graph.services))

