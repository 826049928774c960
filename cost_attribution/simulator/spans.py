"""Vectorized generation of one day's sampled spans, column by column.

Head sampling is per trace, so only kept traces are generated: a member's kept root
requests are Poisson(activity x daily noise x day factor x p) (Poisson thinning), and
every span of a kept trace carries the trace's sampler. The call tree is grown one
service at a time in topological order; each caller SERVER span draws its calls per
edge, giving a CLIENT span and (unless the caller drops context) the callee's SERVER
span. Callees of broken edges instead receive anonymous root traces sampled by their
own sampler, in proportion to the true number of calls from the traced members.

Live worlds (config.live) differ in two ways. A member's cells act only from its
treated_from time, so a trace is treated or not by its start time (traces before the
member's allocation are pre-period data). And span times come from work: a SERVER
span lasts its own work (the request's CPU seconds x lognormal noise), as the contract
defines work per request; its CLIENT calls run side by side inside it, from a lead on
to its end, and the callee's SERVER span starts inside the call with a duration of its
own work. So SERVER duration is exactly the work, however many calls a span makes.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass

import numpy as np

from cost_attribution.simulator.call_graph import NOT_ALLOCATED, CallGraph
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.seasonality import (
    NS_PER_HOUR, day_factor, day_start_ns, experiments_active, hour_shares, rng_for)

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP span kinds
ROOT_MEDIAN_MS, ANONYMOUS_ROOT_MEDIAN_MS = 60.0, 8.0


@dataclass
class DaySpans:
    """Columns of all kept spans of a day; trace-level columns indexed by `trace`."""

    trace_ids: np.ndarray  # [T, 16] uint8
    trace_member: np.ndarray  # [T] member index, -1 for anonymous traces
    trace_sampler: np.ndarray  # [T] sampler index
    trace_start: np.ndarray  # [T] root start ns
    trace: np.ndarray  # [S] trace index
    span_id: np.ndarray  # [S] uint64
    parent: np.ndarray  # [S] span position of the parent, -1 for roots
    service: np.ndarray  # [S] service index
    kind: np.ndarray  # [S] SERVER / CLIENT / INTERNAL
    peer: np.ndarray  # [S] callee service index for CLIENT, -1 otherwise
    start: np.ndarray  # [S] ns
    end: np.ndarray  # [S] ns
    trace_untagged: np.ndarray | None = None  # [T] root span lost its member tag (None: none did)

    @property
    def n_spans(self) -> int:
        return len(self.trace)


class _SpanColumns:
    """Accumulates span chunks; positions are global and assigned in append order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.count = 0

    def append(self, trace, parent, service, kind, peer, start, dur) -> np.ndarray:
        n = len(trace)
        positions = np.arange(self.count, self.count + n)
        self.count += n
        self.chunks.append((trace, parent, np.full(n, service, np.int16), np.full(n, kind, np.int8),
                            np.full(n, peer, np.int16), start, start + dur))
        return positions

    def columns(self) -> list[np.ndarray]:
        return [np.concatenate(col) for col in zip(*self.chunks)]


def _untagged(config: WorldConfig, day: datetime.date, members: np.ndarray) -> np.ndarray | None:
    """Member traces whose root span lost its enduser.id on config.untagged_day (own
    random stream: every other draw of the day stays as it was)."""
    if config.untagged_day is None:
        return None
    days_before, share = config.untagged_day
    if day != config.end_date - datetime.timedelta(days=days_before):
        return None
    rng = rng_for(config.seed, f"untagged-{day.isoformat()}")
    return (members >= 0) & (rng.random(len(members)) < share)


def generate_day_spans(config: WorldConfig, day: datetime.date, population: Population,
                       graph: CallGraph, samplers: Samplers) -> DaySpans:
    rng = rng_for(config.seed, f"spans-{day.isoformat()}")
    if config.live:  # expected calls (anonymous traces) with the cells acting at noon
        noon = np.datetime64(day.isoformat(), "s") + np.timedelta64(12 * 3_600, "s")
        rates = graph.edge_rates(_cells_acting(population, np.arange(population.size), noon), True)
    else:
        rates = graph.edge_rates(population.cells, experiments_active(config, day))
    shape = config.daily_activity_shape
    member_roots = population.activity * rng.gamma(shape, 1 / shape, population.size) * day_factor(config, day)

    # Traces: kept member traces first, then anonymous traces of broken-edge callees.
    kept = rng.poisson(member_roots * samplers.probability[population.sampler])
    trace_member = [np.repeat(np.arange(population.size), kept)]
    trace_sampler = [population.sampler[trace_member[0]]]
    trace_root_service = [np.full(len(trace_member[0]), graph.root)]
    calls = graph.calls_per_root(rates)
    for e in np.flatnonzero(graph.broken):
        sampler = samplers.broken_edge_sampler[(graph.services[graph.callers[e]], graph.services[graph.callees[e]])]
        n_anonymous = rng.poisson((member_roots * calls[:, e]).sum() * samplers.probability[sampler])
        trace_member.append(np.full(n_anonymous, -1))
        trace_sampler.append(np.full(n_anonymous, sampler))
        trace_root_service.append(np.full(n_anonymous, graph.callees[e]))
    members = np.concatenate(trace_member)
    root_service = np.concatenate(trace_root_service)
    n_traces = len(members)
    trace_start = _start_times(config, day, rng, n_traces)
    median_ms = np.where(members >= 0, ROOT_MEDIAN_MS, ANONYMOUS_ROOT_MEDIAN_MS)
    root_dur = (rng.lognormal(np.log(median_ms * 1e6), 0.5)).astype(np.int64)

    spans = _SpanColumns()
    # Per service: SERVER spans waiting to make their calls (positions, trace, start, dur).
    pending: dict[int, list[tuple[np.ndarray, ...]]] = {s: [] for s in range(len(graph.services))}
    for service in np.unique(root_service):
        traces = np.flatnonzero(root_service == service)
        positions = spans.append(traces, np.full(len(traces), -1), service, SERVER, -1,
                                 trace_start[traces], root_dur[traces])
        pending[int(service)].append((positions, traces, trace_start[traces], root_dur[traces]))

    # Anonymous traces follow the callee's defaults: behaviour of a member in no experiment.
    # rate_table[trace_row[t]] holds trace t's calls per caller span (and work per request).
    if config.live:
        rate_table, work_table, trace_row = _trace_behaviour(population, graph, members, trace_start)
    else:
        rate_table, work_table = np.vstack([rates, graph.base_rates]), None
        trace_row = np.where(members >= 0, members, population.size)
    timed = not config.live  # live worlds lay out times from work once the trees exist
    for service in graph.topo_order:
        if not pending[service]:
            continue
        positions, traces, starts, durs = (np.concatenate(c) for c in zip(*pending[service]))
        row = trace_row[traces]
        for e in np.flatnonzero(graph.callers == service):
            rate = rate_table[row, e]
            n_calls = _draw_calls(rng, rate, graph.regular[e])
            caller = np.repeat(np.arange(len(positions)), n_calls)
            if len(caller) == 0:
                continue
            callee = int(graph.callees[e])
            client_start, client_dur = np.zeros(len(caller), np.int64), np.zeros(len(caller), np.int64)
            if timed:
                client_start = starts[caller] + (durs[caller] * rng.uniform(0.05, 0.45, len(caller))).astype(np.int64)
                client_dur = (durs[caller] * rng.uniform(0.2, 0.5, len(caller))).astype(np.int64)
            client_pos = spans.append(traces[caller], positions[caller], service, CLIENT, callee,
                                      client_start, client_dur)
            if graph.broken[e]:
                continue
            server_start, server_dur = client_start + client_dur // 20, client_dur * 9 // 10
            server_pos = spans.append(traces[caller], client_pos, callee, SERVER, -1, server_start, server_dur)
            pending[callee].append((server_pos, traces[caller], server_start, server_dur))

    trace, parent, service_col, kind, peer, start, end = spans.columns()
    if config.live:
        start, end = _work_timing(config, graph, rng, trace, parent, service_col, kind, peer,
                                  work_table, trace_row[trace], trace_start)
    return _with_internal_spans(config, day, DaySpans(
        trace_untagged=_untagged(config, day, members),
        trace_ids=np.frombuffer(rng.bytes(16 * n_traces), dtype=np.uint8).reshape(n_traces, 16),
        trace_member=members,
        trace_sampler=np.concatenate(trace_sampler),
        trace_start=trace_start,
        trace=trace,
        span_id=_span_ids(rng, len(trace)),
        parent=parent,
        service=service_col,
        kind=kind,
        peer=peer,
        start=start,
        end=end,
    ))


def _span_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random 64-bit span ids; the low bit is forced so no id is the all-zero invalid id."""
    return rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _with_internal_spans(config: WorldConfig, day: datetime.date, spans: DaySpans) -> DaySpans:
    """`spans` plus Poisson(config.internal_spans_per_server) INTERNAL children of every
    SERVER span (in-process work: same trace and service, inside the parent's time), after
    every other span and from their own random stream: every other draw of the day stays
    as it was."""
    rate = config.internal_spans_per_server
    if rate <= 0:
        return spans
    rng = rng_for(config.seed, f"internal-spans-{day.isoformat()}")
    servers = np.flatnonzero(spans.kind == SERVER)
    parent = np.repeat(servers, rng.poisson(rate, len(servers)))
    n = len(parent)
    parent_start, parent_dur = spans.start[parent], spans.end[parent] - spans.start[parent]
    start = parent_start + (parent_dur * rng.uniform(0.0, 0.6, n)).astype(np.int64)
    end = start + (parent_dur * rng.uniform(0.05, 0.4, n)).astype(np.int64)
    return dataclasses.replace(
        spans,
        trace=np.concatenate([spans.trace, spans.trace[parent]]),
        span_id=np.concatenate([spans.span_id, _span_ids(rng, n)]),
        parent=np.concatenate([spans.parent, parent]),
        service=np.concatenate([spans.service, spans.service[parent]]),
        kind=np.concatenate([spans.kind, np.full(n, INTERNAL, spans.kind.dtype)]),
        peer=np.concatenate([spans.peer, np.full(n, -1, spans.peer.dtype)]),
        start=np.concatenate([spans.start, start]),
        end=np.concatenate([spans.end, end]),
    )


def _cells_acting(population: Population, members: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Cell codes acting on each member at time(s) `at` (datetime64[s]): [len(members), n_exp]."""
    at = np.asarray(at).reshape(-1, 1)
    acting = population.treated_from[members] <= at
    cells = np.where(acting, population.cells[members], NOT_ALLOCATED).astype(np.int8)
    for x, code, shipped_at in population.shipped:  # a shipped cell acts on everyone
        cells[:, x] = np.where(at[:, 0] >= shipped_at, code, cells[:, x])
    return cells


def _trace_behaviour(population: Population, graph: CallGraph, members: np.ndarray,
                     trace_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct combination of acting cells: call rates and work per request; and each
    trace's row. A trace is treated by an experiment when it starts at or after the member's
    treated_from; anonymous traces (member -1) act as no experiment."""
    n_exp = population.cells.shape[1]
    cells = np.full((len(members), n_exp), NOT_ALLOCATED, dtype=np.int8)
    known = members >= 0
    started = (trace_start[known] // 10**9).astype("datetime64[s]")
    cells[known] = _cells_acting(population, members[known], started)
    combos, trace_row = np.unique(cells, axis=0, return_inverse=True)
    return graph.edge_rates(combos, True), graph.work_per_request(combos), trace_row.ravel()


def _work_timing(config: WorldConfig, graph: CallGraph, rng: np.random.Generator, trace: np.ndarray,
                 parent: np.ndarray, service: np.ndarray, kind: np.ndarray, peer: np.ndarray,
                 work_table: np.ndarray, work_row: np.ndarray,
                 trace_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end ns of every span from its work (see the module docstring).

    work_table[work_row[i]]: CPU seconds per request of each service for span i's trace.
    """
    n = len(trace)
    sigma = config.work_noise_sigma
    noise = rng.lognormal(-sigma**2 / 2, sigma, n)  # mean 1
    server = kind == SERVER
    callee_of_client = np.full(n, -1, np.int64)  # the SERVER span a CLIENT span wraps, if traced
    child = np.flatnonzero(server & (parent >= 0))
    callee_of_client[parent[child]] = child
    # SERVER: own self time. CLIENT of a broken edge: its (untraced) callee's self time.
    worker = np.where(server, service, peer).astype(np.int64)
    self_ns = np.round(work_table[work_row, worker] * noise * 1e9).astype(np.int64)
    self_ns[callee_of_client >= 0] = 0
    network = np.where(server, 0, np.round(config.network_ms * 1e6 * rng.uniform(0.5, 1.5, n))).astype(np.int64)
    # A SERVER span lasts its own work (the contract: SERVER duration measures work per
    # request), whatever calls it makes; its calls run side by side inside it, from a
    # lead on to its end.
    dur = np.where(server, self_ns, 0).astype(np.int64)
    lead = np.round(dur * rng.uniform(0.05, 0.5, n)).astype(np.int64)
    clients_of = {s: np.flatnonzero(~server & (service == s)) for s in range(len(graph.services))}
    start = np.zeros(n, np.int64)
    roots = parent < 0
    start[roots] = trace_start[trace[roots]]
    for s in graph.topo_order:
        clients = clients_of[s]
        if len(clients) == 0:
            continue
        caller = parent[clients]
        start[clients] = start[caller] + lead[caller]
        dur[clients] = np.maximum(start[caller] + dur[caller] - start[clients], 1)
        linked = clients[callee_of_client[clients] >= 0]
        start[callee_of_client[linked]] = start[linked] + network[linked] // 2
    return start, start + dur


def _draw_calls(rng: np.random.Generator, rate: np.ndarray, regular: bool) -> np.ndarray:
    if regular:
        whole = np.floor(rate)
        return (whole + (rng.random(len(rate)) < rate - whole)).astype(np.int64)
    return rng.poisson(rate)


def _start_times(config: WorldConfig, day: datetime.date, rng: np.random.Generator, n: int) -> np.ndarray:
    cumulative = np.cumsum(hour_shares(config))
    hours = np.minimum(np.searchsorted(cumulative, rng.random(n) * cumulative[-1]), 23)
    within = (rng.random(n) * NS_PER_HOUR).astype(np.int64)
    return day_start_ns(day) + hours.astype(np.int64) * NS_PER_HOUR + within
