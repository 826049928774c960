"""The service call graph and how experiment cells change its call rates.

Edges include those that only treatment cells use (base rate 0). Rates are kept as
arrays [..., n_edges] so that per-member behaviour is computed in one vectorized pass.
An *arm* is one non-control cell of one experiment: cells[:, x] == arm_cell[a] for
x = arm_experiment[a]. Cell codes per experiment: NOT_ALLOCATED, CONTROL (0), then the
treatment cells 1, 2, ... in ExperimentSpec.treatment_cells order.
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
    # [n_arms, n_edges] treatment multiplier and additive new-edge rate
    multipliers: np.ndarray
    additions: np.ndarray
    n_experiments: int
    arm_experiment: np.ndarray  # [n_arms] experiment index
    arm_cell: np.ndarray  # [n_arms] cell code within the experiment
    base_work: np.ndarray  # [n_svc] cpu seconds per request
    work_multipliers: np.ndarray  # [n_arms, n_svc]

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
        in_treatment = self.in_arm(cells)
        # Multipliers compose multiplicatively: log-sum over the member's treatments.
        log_mult = in_treatment @ np.log(self.multipliers)
        rates *= np.exp(log_mult)
        rates += in_treatment @ self.additions
        return rates

    def in_arm(self, cells: np.ndarray) -> np.ndarray:
        """[n, n_experiments] cell codes -> [n, n_arms] 0/1 membership."""
        return (cells[:, self.arm_experiment] == self.arm_cell).astype(float)

    def work_per_request(self, cells: np.ndarray) -> np.ndarray:
        """CPU seconds per request of each service for each row of cells: [n, n_svc]."""
        return self.base_work * np.exp(self.in_arm(cells) @ np.log(self.work_multipliers))

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
    arms = [(x, code, cell) for x, exp in enumerate(config.experiments)
            for code, cell in enumerate(exp.treatment_cells, start=TREATMENT)]
    effects: list[tuple[int, int, float, str]] = []
    for a, (x, _, cell) in enumerate(arms):
        label = f"{config.experiments[x].id}:{cell.name}"
        for caller, callee, mult in cell.edge_multipliers:
            if (caller, callee) not in keyed:
                raise ValueError(f"{label}: multiplier on unknown edge {caller}->{callee}")
            effects.append((a, keyed[(caller, callee)], mult, "mult"))
        for caller, callee, rate in cell.new_edges:
            effects.append((a, edge_id(caller, callee), rate, "add"))
    multipliers = np.ones((len(arms), len(callers)))
    additions = np.zeros((len(arms), len(callers)))
    for a, e, value, kind in effects:
        if kind == "mult":
            multipliers[a, e] = value
        else:
            additions[a, e] = value
    work = np.ones((len(arms), len(services)))
    for a, (x, _, cell) in enumerate(arms):
        for service, mult in cell.work_multipliers:
            if service not in index:
                raise ValueError(f"{config.experiments[x].id}:{cell.name}: work multiplier on unknown "
                                 f"service {service}")
            work[a, index[service]] = mult

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
        n_experiments=len(config.experiments),
        arm_experiment=np.array([x for x, _, _ in arms], dtype=np.int64),
        arm_cell=np.array([code for _, code, _ in arms], dtype=np.int8),
        base_work=np.array([s.cpu_seconds_per_request for s in config.services], dtype=float),
        work_multipliers=work,
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
