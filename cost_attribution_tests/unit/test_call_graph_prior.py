"""Shrinking each service towards what its callers imply (attribution.call_graph,
estimation.cell_costs.shrink_effects): a savings test's downstream move is priced through
its caller, a service that moved on its own keeps its measurement, an A/A stays at 0."""

from __future__ import annotations

import numpy as np
import polars as pl

from cost_attribution.attribution.call_graph import caller_shares
from cost_attribution.estimation import projection
from cost_attribution.estimation.cell_costs import Effect, shrink_effects

Z = projection.Z95
SHARE = 1 / 6  # recs-svc's share of metadata-svc's calls
NULL_SERVICES = [f"svc-{i}" for i in range(24)]


def _effect(experiment_id: str, service: str, delta: float, se: float) -> Effect:
    return Effect(experiment_id, "treatment", service, "requests", delta, delta - Z * se, delta + Z * se,
                  significant=abs(delta) > Z * se)


def _day(rng: np.random.Generator, recs: float, metadata_own: float) -> dict:
    """One day's measured effects: recs-svc moved by `recs`, metadata-svc by what recs
    implies plus `metadata_own`; an A/A experiment and null services around them."""
    truth = {"recs-svc": recs, "metadata-svc": (1 + SHARE * recs) * (1 + metadata_own) - 1}
    effects = {}
    for service, true, se in [("recs-svc", recs, 0.02), ("metadata-svc", truth["metadata-svc"], 0.025),
                              *[(s, 0.0, 0.03) for s in NULL_SERVICES]]:
        effects[("savings", "treatment", service)] = _effect("savings", service, true + se * rng.standard_normal(), se)
    for service, se in [("recs-svc", 0.02), ("metadata-svc", 0.025)]:
        effects[("aa", "treatment", service)] = _effect("aa", service, se * rng.standard_normal(), se)
    return effects


CALLERS = {("savings", "metadata-svc"): (("recs-svc", SHARE),), ("aa", "metadata-svc"): (("recs-svc", SHARE),)}


def _metadata(effects: dict, callers) -> tuple[float, float]:
    shrunk = shrink_effects(effects, callers)
    return shrunk[("savings", "treatment", "metadata-svc")].centre, shrunk[("aa", "treatment", "metadata-svc")].centre


def test_a_downstream_saving_is_priced_through_its_caller_over_many_draws():
    rng = np.random.default_rng(5)
    truth = SHARE * -0.30  # -5%: two standard errors at metadata-svc, fifteen at recs-svc
    towards_zero, towards_callers, aa = [], [], []
    for _ in range(120):
        effects = _day(rng, recs=-0.30, metadata_own=0.0)
        towards_zero.append(_metadata(effects, None)[0])
        savings, aa_centre = _metadata(effects, CALLERS)
        towards_callers.append(savings)
        aa.append(aa_centre)
    bias_zero, bias_callers = np.mean(towards_zero) - truth, np.mean(towards_callers) - truth
    # Towards 0 the saving comes out short (the -5% is shrunk away); through the caller it is not.
    assert bias_zero > 0.015, bias_zero
    assert abs(bias_callers) < 0.004, bias_callers
    assert np.sqrt(np.mean((np.array(towards_callers) - truth) ** 2)) < 0.5 * np.sqrt(np.mean((np.array(towards_zero) - truth) ** 2))
    # An A/A's callers did not move: its services stay at exactly no change nearly always.
    assert np.mean(np.array(aa) == 0.0) > 0.9


def test_a_service_that_moved_on_its_own_keeps_its_measurement():
    rng = np.random.default_rng(6)
    estimates = []
    for _ in range(30):
        effects = _day(rng, recs=-0.30, metadata_own=0.40)  # a new call on top of the caller's saving
        estimates.append(_metadata(effects, CALLERS)[0])
    truth = (1 + SHARE * -0.30) * 1.40 - 1
    assert abs(np.mean(estimates) - truth) < 0.01


def test_caller_shares_are_the_control_cells_calls_over_the_callees_requests():
    edges = pl.DataFrame({
        "experiment_id": ["e"] * 4, "cell": ["control", "control", "treatment", "control"],
        "caller": ["api", "recs", "recs", "meta"], "callee": ["meta", "meta", "meta", "meta"],
        "requests": [500.0, 100.0, 70.0, 9.0],
    })
    usage = pl.DataFrame({
        "experiment_id": ["e"] * 3, "cell": ["control", "control", "treatment"], "member_id": ["a", "b", "c"],
        "service": ["meta", "meta", "meta"], "requests": [400.0, 400.0, 700.0],
    })
    shares = caller_shares(edges, usage, pl.DataFrame({"experiment_id": ["e"], "control_cell": ["control"]}))
    # 800 requests served in control; self-calls are not callers.
    assert shares == {("e", "meta"): (("api", 500 / 800), ("recs", 100 / 800))}
    # A callee whose own spans miss members: its requests are at least its callers' calls.
    blind = caller_shares(edges, usage.with_columns(requests=pl.lit(1.0)), pl.DataFrame({"experiment_id": ["e"], "control_cell": ["control"]}))
    assert blind == {("e", "meta"): (("api", 500 / 600), ("recs", 100 / 600))}


def test_the_implied_change_carries_its_callers_uncertainty():
    effects = _day(np.random.default_rng(7), recs=-0.30, metadata_own=0.0)
    shrunk = shrink_effects(effects, CALLERS)
    recs, metadata = (shrunk[("savings", "treatment", s)].shrunk for s in ("recs-svc", "metadata-svc"))
    # metadata-svc moves as a sixth of recs-svc: its interval is about a sixth as wide, not a point.
    ratio = (metadata.high - metadata.low) / (recs.high - recs.low)
    assert 0.1 < ratio < 0.3, ratio
    assert metadata.low < SHARE * recs.median < metadata.high
