"""Vectorized simulator of member-level sampled-trace usage, for validating the statistics.

Shaped like the sample world: ~1,250 members per cell, ~3 sampled traces per
member over 4 days (overdispersed: negative-binomial activity), 9 services
reached by a trace at different rates, head sampling at p = 0.015 so each
sampled span counts 1/p requests.  The expected count of service s in the
treatment cell is exactly (1 + effect_s) times control's, so the true relative
delta is known.  Services share the member's activity, so their deltas are
correlated, as in production.  Many experiments are simulated at once (one
experiment_id per replicate) so a single `compare_cells` call analyses them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

# Mean calls of each service per sampled trace (api-gateway is the root of every trace).
SAMPLE_WORLD_SERVICES: dict[str, float] = {
    "api-gateway": 1.0, "metadata-svc": 0.8, "images-svc": 0.6, "recs-svc": 0.5, "auth-svc": 0.3,
    "profile-svc": 0.3, "cdn-origin": 0.4, "legacy-ratings": 0.05, "search-svc": 0.2,
}


@dataclass(frozen=True)
class SimulatedWorld:
    member_usage: pl.DataFrame  # experiment_id, cell, member_id, service, day, requests (non-zero rows)
    allocations: pl.DataFrame  # experiment_id, member_id, cell
    experiments: pl.DataFrame  # experiment_id, control_cell
    pre_usage: pl.DataFrame  # experiment_id, member_id, service, pre_requests (non-zero rows)
    true_delta: dict[str, float]  # service -> true relative delta of treatment vs control


def simulate_world(seed: int, n_experiments: int = 1, n_per_cell: int = 1250,
                   effects: dict[str, float] | None = None, services: dict[str, float] | None = None,
                   mean_traces: float = 3.0, activity_shape: float = 0.8, taste_shape: float = 2.0,
                   sampling_p: float = 0.015, days: int = 4, pre_days: int = 4,
                   per_day: bool = False) -> SimulatedWorld:
    """Simulate `n_experiments` independent two-cell experiments (ids "exp-0000", ...).

    member activity  lambda_i ~ Gamma(activity_shape, mean_traces / activity_shape)
    service taste    u_is     ~ Gamma(taste_shape, 1 / taste_shape)   (mean 1)
    sampled spans    C_isd    ~ Poisson(lambda_i / days * rate_s * u_is * (1 + effect_s * treated))
    requests = C / sampling_p.  The pre-period reuses lambda_i and u_is (that is
    what makes it a useful CUPED covariate) with no treatment effect.
    per_day=True emits one row per member/service/day (for peeking studies);
    otherwise day is days - 1 and rows cover the whole window.
    """
    rng = np.random.default_rng(seed)
    services = services or SAMPLE_WORLD_SERVICES
    names = list(services)
    rates = np.array([services[s] for s in names])
    eff = np.array([(effects or {}).get(s, 0.0) for s in names])
    n_members = n_experiments * 2 * n_per_cell
    treated = np.tile(np.repeat([0, 1], n_per_cell), n_experiments)
    exp_idx = np.repeat(np.arange(n_experiments), 2 * n_per_cell)

    activity = rng.gamma(activity_shape, mean_traces / activity_shape, n_members)
    taste = rng.gamma(taste_shape, 1 / taste_shape, (n_members, len(names)))
    base = activity[:, None] * rates[None, :] * taste
    post_rate = base * (1 + eff[None, :] * treated[:, None]) / days

    names_s = pl.Series("service", names, dtype=pl.String)

    def label(member: np.ndarray, service: np.ndarray | None = None) -> pl.DataFrame:
        # integer codes -> strings in polars: building millions of Python strings in numpy is slow
        df = pl.DataFrame({"e": exp_idx[member], "m": member, "t": treated[member]}).select(
            experiment_id=pl.format("exp-{}", pl.col("e").cast(pl.String).str.zfill(4)),
            cell=pl.when(pl.col("t") == 1).then(pl.lit("treatment")).otherwise(pl.lit("control")),
            member_id=pl.format("m{}", pl.col("m")))
        return df if service is None else df.with_columns(service=names_s.gather(service))

    # Without per-day output one Poisson draw of the whole window has the same distribution.
    n_draws = days if per_day else 1
    frames = []
    for day in range(n_draws):  # loop over days (<= 4), not members: each draw is a members x services matrix
        counts = rng.poisson(post_rate * (1 if per_day else days))
        m, s = np.nonzero(counts)
        frames.append(label(m, s).with_columns(day=pl.lit(day if per_day else days - 1, pl.Int64),
                                               requests=pl.Series(counts[m, s] / sampling_p)))
    pre_counts = rng.poisson(base * pre_days / days)
    m, s = np.nonzero(pre_counts)
    pre_usage = label(m, s).drop("cell").with_columns(pre_requests=pl.Series(pre_counts[m, s] / sampling_p))
    allocations = label(np.arange(n_members)).select("experiment_id", "member_id", "cell")
    experiments = pl.DataFrame({"experiment_id": [f"exp-{i:04d}" for i in range(n_experiments)],
                                "control_cell": ["control"] * n_experiments})
    return SimulatedWorld(pl.concat(frames), allocations, experiments, pre_usage,
                          {s: float(e) for s, e in zip(names, eff)})
