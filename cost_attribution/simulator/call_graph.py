"""The service call graph and how experiment cells change its call rates.

Edges include those that only treatment cells use (base rate 0). Rates are kept as
arrays [..., n_edges] so that per-member behaviour is computed in one vectorized pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_attribution.simulator.config import WorldConfig

CONTROL, TREATMENT, NOT_ALLOCATED = 0, 1, -1


@dataclass(frozen=True)
class CallGraph:
    services: tuple[str, ...]
    root: int
    callers: np.ndarray  # [n_edges] service index
    callees: np.ndarray  # [n_edges] service index
    base_rates: np.ndarray  # [n_edges] calls per caller SERVER span (0 for new edges)
    regular: np.ndarray  # [n_edges] bool: floor+Bernoulli instead of Poisson
    broken: np.ndarray  # [n_edges] bool: caller drops trace context
    topo_order: tuple[int, ...]  # services, callers before callees
    # [n_experiments, n_edges] treatment multiplier and additive new-edge rate
    multipliers: np.ndarray
    additions: np.ndarray

    @property
    def n_edges(self) -> int:
        return len(self.callers)

    def index(self, service: str) -> int:
        return self.services.index(service)

    def edge_label(self, e: int) -> str:
        return f"{self.services[self.callers[e]]}->{self.services[self.callees[e]]}"

    def edge_rates(self, cells: np.ndarray, active: bool) -> np.ndarray:
        """Calls per caller span for each row of cells [n, n_experiments] -> [n, n_edges]."""
        n = cells.shape[0]
        rates = np.broadcast_to(self.base_rates, (n, self.n_edges)).copy()
        if not active:
            return rates
        in_treatment = (cells == TREATMENT).astype(float)  # [n, n_exp]
        # Multipliers compose multiplicatively: log-sum over the member's treatments.
        log_mult = in_treatment @ np.log(self.multipliers)
        rates *= np.exp(log_mult)
        rates += in_treatment @ self.additions
        return rates

    def server_volume_per_root(self, rates: np.ndarray) -> np.ndarray:
        """Expected SERVER spans per root request, per service: [n, n_edges] -> [n, n_svc].

        Broken edges still do the work (the callee serves the request); only the trace
        context is lost, so they count here like any other edge.
        """
        volume = np.zeros(rates.shape[:-1] + (len(self.services),))
        volume[..., self.root] = 1.0
        for service in self.topo_order:
            for e in np.flatnonzero(self.callers == service):
                volume[..., self.callees[e]] += volume[..., service] * rates[..., e]
        return volume

    def calls_per_root(self, rates: np.ndarray) -> np.ndarray:
        """Expected CLIENT calls per root request, per edge: [n, n_edges]."""
        volume = self.server_volume_per_root(rates)
        return volume[..., self.callers] * rates


def build_call_graph(config: WorldConfig) -> CallGraph:
    services = tuple(s.name for s in config.services)
    index = {name: i for i, name in enumerate(services)}
    keyed: dict[tuple[str, str], int] = {}
    callers, callees, base, regular = [], [], [], []

    def edge_id(caller: str, callee: str, rate: float = 0.0, is_regular: bool = False) -> int:
        if (caller, callee) not in keyed:
            keyed[(caller, callee)] = len(callers)
            callers.append(index[caller])
            callees.append(index[callee])
            base.append(rate)
            regular.append(is_regular)
        return keyed[(caller, callee)]

    for edge in config.edges:
        edge_id(edge.caller, edge.callee, edge.calls_per_request, edge.regular)
    n_exp = len(config.experiments)
    effects: list[tuple[int, int, float, str]] = []
    for x, exp in enumerate(config.experiments):
        for caller, callee, mult in exp.edge_multipliers:
            if (caller, callee) not in keyed:
                raise ValueError(f"{exp.id}: multiplier on unknown edge {caller}->{callee}")
            effects.append((x, keyed[(caller, callee)], mult, "mult"))
        for caller, callee, rate in exp.new_edges:
            effects.append((x, edge_id(caller, callee), rate, "add"))
    multipliers = np.ones((n_exp, len(callers)))
    additions = np.zeros((n_exp, len(callers)))
    for x, e, value, kind in effects:
        if kind == "mult":
            multipliers[x, e] = value
        else:
            additions[x, e] = value

    broken_pairs = set(config.broken_edges)
    broken = np.array([(services[c], services[d]) in broken_pairs for c, d in zip(callers, callees)])
    callers_arr, callees_arr = np.array(callers), np.array(callees)
    return CallGraph(
        services=services,
        root=index[config.root_service],
        callers=callers_arr,
        callees=callees_arr,
        base_rates=np.array(base, dtype=float),
        regular=np.array(regular, dtype=bool),
        broken=broken,
        topo_order=_topological_order(len(services), callers_arr, callees_arr),
        multipliers=multipliers,
        additions=additions,
    )


def _topological_order(n_services: int, callers: np.ndarray, callees: np.ndarray) -> tuple[int, ...]:
    indegree = np.bincount(callees, minlength=n_services)
    ready = [s for s in range(n_services) if indegree[s] == 0]
    order: list[int] = []
    while ready:
        service = ready.pop(0)
        order.append(service)
        for callee in callees[callers == service]:
            indegree[callee] -= 1
            if indegree[callee] == 0:
                ready.append(int(callee))
    if len(order) != n_services:
        raise ValueError("the call graph (with experiment edges) must be acyclic")
    return tuple(order)
