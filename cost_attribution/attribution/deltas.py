"""Per (experiment, cell, service): how a cell moves a service's request volume and its work.

Two metrics per allocated member, each compared with the same member-level estimator
(`stats.compare_moments` over per-cell sums, `MemberMoments`):
- requests: adjusted SERVER spans (how many requests the service gets);
- work: the adjusted duration of those spans in seconds, or their busy time
  (AnalysisSettings.work_measure): how much the service works; heavier requests move it
  even when their number does not.
Both families share one Benjamini-Hochberg correction (every pair is a test), and a
pair is `significant` when either metric is.

Variance reduction. Members differ enormously in how active they are, and that is
most of the noise in a per-member comparison. Ratio to root: a service's requests (or
work) per root request the members sent to *other* services over the same treated
period, compared as a ratio of means (delta method, as gbstats' ratio metrics). It
estimates the same relative change as the per-member means as long as the cell does
not change how many root requests members send; that is tested per cell
(`root_balance`). A cell that moves root requests, and a service with no other roots
(the root service itself), fall back to the per-member estimator with the pre-period
covariate (the member's usage before its allocation, CUPED) or none. Pooled-theta
CUPED on root requests was tried first and rejected: with effects of several hundred
percent (a new call to a tiny service) the pooled slope fits neither cell and the
interval widened instead of narrowing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import polars as pl

from cost_attribution.attribution.stats import RESULT_SCHEMA, StatsConfig, cell_moments, compare_moments, srm_from_counts
from cost_attribution.attribution.stats_inference import benjamini_hochberg

KEYS = ["experiment_id", "cell", "service"]
# The work columns stored beside the request columns (prefix work_).
WORK_COLUMNS = ["delta", "se", "ci_low", "ci_high", "p_value", "q_value", "control_rel_var"]
ROOTS = "(root requests)"
# A cell whose members send a different number of root requests (p below this) is not
# adjusted on them: the adjustment would remove part of the effect.
ROOT_BALANCE_P = 0.05
# The root covariate is dense (every member with roots x every service): built for a few
# services at a time, about this many rows each (each service's comparison is its own).
COVARIATE_ROWS = 1_000_000


def _metric(frame: pl.DataFrame | None, column: str, alias: str) -> pl.DataFrame | None:
    if frame is None:
        return None
    others = [c for c in ("requests", "work", "pre_requests", "pre_work") if c != column and c in frame.columns]
    return frame.drop(others).rename({column: alias}).filter(pl.col(alias).is_not_null())


def root_covariate(roots: pl.DataFrame, member_usage: pl.DataFrame) -> pl.DataFrame:
    """experiment_id, member_id, service, pre_requests, pre_work: each member's root
    requests to services other than `service` (so the root service is never adjusted on
    itself), for every service the experiment's members used."""
    total = roots.group_by("experiment_id", "member_id").agg(pl.col("root_requests").sum().alias("all_roots"))
    at_service = roots.group_by("experiment_id", "member_id", "service").agg(pl.col("root_requests").sum().alias("own"))
    services = member_usage.select("experiment_id", "service").unique()
    return (
        total.join(services, on="experiment_id")
        .join(at_service, on=["experiment_id", "member_id", "service"], how="left")
        .select(
            "experiment_id", "member_id", "service",
            (pl.col("all_roots") - pl.col("own").fill_null(0.0)).alias("pre_requests"),
        )
        .with_columns(pl.col("pre_requests").alias("pre_work"))
        .sort("experiment_id", "member_id", "service")  # reruns sum in the same order
    )


def _service_batches(member_usage: pl.DataFrame, roots: pl.DataFrame) -> list[pl.DataFrame]:
    """member_usage split by service into batches whose root covariate has about
    COVARIATE_ROWS rows (at least one service each; one batch when there is no usage)."""
    members = roots.select("experiment_id", "member_id").n_unique()
    services = member_usage["service"].unique().sort().to_list()
    per_batch = max(1, COVARIATE_ROWS // max(members, 1))
    batches = [services[i:i + per_batch] for i in range(0, len(services), per_batch)]
    return [member_usage.filter(pl.col("service").is_in(batch)) for batch in batches] or [member_usage]


MOMENT_SCHEMA = {"experiment_id": pl.Utf8, "cell": pl.Utf8, "service": pl.Utf8, "sum_y": pl.Float64,
                 "sum_y2": pl.Float64, "sum_x": pl.Float64, "sum_x2": pl.Float64, "sum_xy": pl.Float64}
COVARIATES = ("none", "pre-period", "roots")


class MemberMoments(Protocol):
    """Per-cell sums of an experiment's members that every comparison of `cell_deltas` is
    made from (`stats.compare_moments`); from member rows in memory (`FrameMoments`) or
    summed in the warehouse (`usage_moments.WarehouseMoments`), with the same rows."""

    experiments: pl.DataFrame  # experiment_id, control_cell, ...
    has_roots: bool  # any member has root requests (the roots covariate can be used)

    def cell_counts(self) -> pl.DataFrame:
        """experiment_id, cell, n: clean allocated members."""

    def outcome(self, metric: str, covariate: str) -> pl.DataFrame:
        """MOMENT_SCHEMA of y = the member's `metric` (requests | work) per service and x =
        its `covariate` (COVARIATES: 0; the same metric before its allocation; its root
        requests to other services over the treated period, for every service)."""

    def work_per_request(self) -> pl.DataFrame:
        """MOMENT_SCHEMA of y = work, x = requests, over rows where both are measured."""

    def root_totals(self) -> pl.DataFrame:
        """MOMENT_SCHEMA of y = the member's root requests (service ROOTS), x = 0."""

    def measured_from(self) -> pl.DataFrame:
        """experiment_id, service, measured_from: which spans each service was read from."""


@dataclasses.dataclass
class FrameMoments:
    """MemberMoments of member rows in memory (the frames `cell_deltas` takes)."""

    member_usage: pl.DataFrame  # experiment_id, cell, member_id, service, requests, work[, measured_from]
    allocations: pl.DataFrame
    experiments: pl.DataFrame
    pre_usage: pl.DataFrame | None = None
    roots: pl.DataFrame | None = None

    @property
    def has_roots(self) -> bool:
        return self.roots is not None and self.roots.height > 0

    def cell_counts(self) -> pl.DataFrame:
        return cell_moments(_NO_USAGE, self.allocations)[0]

    def outcome(self, metric: str, covariate: str) -> pl.DataFrame:
        if covariate == "roots":
            return pl.concat([
                self._moments(_metric(batch, metric, "requests"),
                              _metric(root_covariate(self.roots, batch), f"pre_{metric}", "pre_requests"))
                for batch in _service_batches(self.member_usage, self.roots)
            ])
        pre = _metric(self.pre_usage, f"pre_{metric}", "pre_requests") if covariate == "pre-period" else None
        return self._moments(_metric(self.member_usage, metric, "requests"), pre)

    def work_per_request(self) -> pl.DataFrame:
        measured = self.member_usage.filter(pl.col("work").is_not_null() & pl.col("requests").is_not_null())
        if measured.height == 0:
            return pl.DataFrame(schema=MOMENT_SCHEMA)
        # With its cell: a row naming another cell than the member's is left out of x as it is of y.
        requests = measured.group_by("experiment_id", "cell", "member_id", "service").agg(
            pl.col("requests").sum().alias("pre_requests"))
        return self._moments(_metric(measured, "work", "requests"), requests)

    def root_totals(self) -> pl.DataFrame:
        per_member = self.roots.group_by("experiment_id", "member_id").agg(pl.col("root_requests").sum().alias("requests"))
        per_member = per_member.join(self.allocations.select("experiment_id", "member_id", "cell"),
                                     on=["experiment_id", "member_id"])
        return self._moments(per_member.with_columns(service=pl.lit(ROOTS)), None)

    def measured_from(self) -> pl.DataFrame:
        return self.member_usage.select(_NO_SOURCE.columns).unique(subset=["experiment_id", "service"])

    def _moments(self, usage: pl.DataFrame, pre: pl.DataFrame | None) -> pl.DataFrame:
        return cell_moments(usage, self.allocations, pre)[1]


def root_balance(source: MemberMoments, cell_n: pl.DataFrame, config: StatsConfig) -> pl.DataFrame:
    """experiment_id, cell, p_value: does the cell change how many root requests members send?"""
    result = compare_moments(cell_n, source.root_totals(), source.experiments, config)
    return result.select("experiment_id", "cell", "p_value")


def _compare_both(source: MemberMoments, cell_n: pl.DataFrame, config: StatsConfig, covariate: str) -> pl.DataFrame:
    adjusted = covariate != "none"
    requests = compare_moments(cell_n, source.outcome("requests", covariate), source.experiments, config, adjusted)
    work = compare_moments(cell_n, source.outcome("work", covariate), source.experiments, config, adjusted)
    work = work.select(*KEYS, *[pl.col(c).alias(f"work_{c}") for c in WORK_COLUMNS])
    return requests.join(work, on=KEYS, how="left")


def work_per_request(source: MemberMoments, cell_n: pl.DataFrame, config: StatsConfig) -> pl.DataFrame:
    """experiment_id, cell, service, wpr_delta, wpr_se: the relative change in work per
    request (sum of work / sum of requests per cell, delta method over members). Work per
    root = requests per root x work per request, exactly, so the work delta splits into a
    count part and a weight part; the weight part is measured over every request and is far
    more precise than the work delta itself, which carries the count noise of each member.
    Pricing shrinks the two parts separately (estimation.cell_costs.shrink_effects)."""
    ratio = compare_moments(cell_n, source.work_per_request(), source.experiments,
                            dataclasses.replace(config, variance_reduction="ratio"), adjusted=True)
    return ratio.select(*KEYS, pl.col("delta").alias("wpr_delta"), pl.col("se").alias("wpr_se"))


def requests_and_work_deltas(member_usage: pl.DataFrame, allocations: pl.DataFrame, experiments: pl.DataFrame,
                             config: StatsConfig, pre_usage: pl.DataFrame | None = None,
                             roots: pl.DataFrame | None = None) -> pl.DataFrame:
    """DELTA_SCHEMA rows: request deltas plus work_delta, work_se, work_ci_low,
    work_ci_high, work_p_value, work_q_value, and the work-per-request part of the work
    delta (wpr_delta, wpr_se; see work_per_request); q_value and work_q_value are one BH
    family; significant = either q below config.fdr_q; `covariate` names the
    adjustment used (roots | pre-period | none).

    member_usage: experiment_id, cell, member_id, service, requests, work (null: not measured)
    pre_usage:    experiment_id, member_id, service, pre_requests, pre_work (optional)
    roots:        experiment_id, member_id, service, root_requests over the treated period (optional)

    The composition of `cell_deltas` (which needs nothing across experiments, so it can
    run one experiment at a time) and `with_fdr` (the one BH family over everything).
    """
    return with_fdr([cell_deltas(member_usage, allocations, experiments, config, pre_usage, roots)], config)


def cell_deltas(
    member_usage: pl.DataFrame,
    allocations: pl.DataFrame,
    experiments: pl.DataFrame,
    config: StatsConfig,
    pre_usage: pl.DataFrame | None = None,
    roots: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """requests_and_work_deltas before the Benjamini-Hochberg step (its q_value,
    work_q_value and significant are only this call's): every row depends on its own
    experiment's members only, so calling it per experiment and concatenating gives the
    rows of one call over all of them. `pre_usage` given (even without rows of this
    experiment) or not decides the fallback's covariate, as in one call over all."""
    source = FrameMoments(member_usage, allocations, experiments.select("experiment_id", "control_cell"),
                          pre_usage, roots)
    return deltas_from_moments(source, config, pre_period=pre_usage is not None)


def deltas_from_moments(source: MemberMoments, config: StatsConfig, pre_period: bool) -> pl.DataFrame:
    """`cell_deltas` of a MemberMoments source: the per-member estimator with the
    pre-period covariate (`pre_period`) or none, replaced by the ratio to root requests
    where the cell leaves root requests balanced, and the work-per-request part."""
    cell_n = source.cell_counts()
    fallback_name = "pre-period" if pre_period else "none"
    joined = _compare_both(source, cell_n, config, fallback_name).with_columns(covariate=pl.lit(fallback_name))
    if source.has_roots:
        ratio = _compare_both(source, cell_n, dataclasses.replace(config, variance_reduction="ratio"), "roots")
        balance = root_balance(source, cell_n, config)
        balanced = balance.filter(pl.col("p_value").is_not_null() & (pl.col("p_value") >= ROOT_BALANCE_P))
        usable = ratio.filter(pl.col("delta").is_not_null()).join(balanced, on=["experiment_id", "cell"], how="semi")
        joined = pl.concat([
            usable.with_columns(covariate=pl.lit("roots")),
            joined.join(usable.select(KEYS), on=KEYS, how="anti"),
        ])
    return joined.join(work_per_request(source, cell_n, config), on=KEYS, how="left").sort(KEYS)


def with_fdr(parts: list[pl.DataFrame], config: StatsConfig) -> pl.DataFrame:
    """`cell_deltas` frames (e.g. one per experiment) as one frame with q_value and
    work_q_value from one Benjamini-Hochberg family over every pair of every part and both
    metrics, and significant = either q below config.fdr_q."""
    parts = [part for part in parts if part.height]
    if not parts:
        return pl.DataFrame(schema=DELTA_SCHEMA)
    joined = pl.concat(parts).sort(KEYS)
    p = np.concatenate([
        joined["p_value"].to_numpy(allow_copy=True).astype(float),
        joined["work_p_value"].to_numpy(allow_copy=True).astype(float),
    ])
    q = benjamini_hochberg(p)
    q_requests, q_work = q[: joined.height], q[joined.height:]
    significant = (np.nan_to_num(q_requests, nan=1.0) < config.fdr_q) | (np.nan_to_num(q_work, nan=1.0) < config.fdr_q)
    return joined.with_columns(
        q_value=pl.Series(q_requests, dtype=pl.Float64, nan_to_null=True),
        work_q_value=pl.Series(q_work, dtype=pl.Float64, nan_to_null=True),
        significant=pl.Series(significant),
    )


def deltas_by_experiment(sources: Iterable[MemberMoments], config: StatsConfig, pre_period: bool,
                         splits: dict[str, dict[str, float]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(deltas, sample ratio) over experiments taken one at a time (MemberMoments, e.g.
    usage_moments.each_experiment_moments): each experiment's deltas (deltas_from_moments,
    with the pre-period fallback when any experiment has a pre period: `pre_period`),
    which source its services were measured from (measured_from) and its SRM test
    (stats.srm_from_counts with the intended `splits`); then one Benjamini-Hochberg
    family over all of them (with_fdr)."""
    parts, sources_of, srm = [], [_NO_SOURCE], [srm_from_counts(_NO_COUNTS, _NO_EXPERIMENTS)]
    for source in sources:
        parts.append(deltas_from_moments(source, config, pre_period))
        sources_of.append(source.measured_from())
        srm.append(srm_from_counts(source.cell_counts(), source.experiments, splits))
    deltas = with_fdr(parts, config).join(pl.concat(sources_of), on=["experiment_id", "service"], how="left")
    return deltas, pl.concat(srm)


_NO_SOURCE = pl.DataFrame(schema={"experiment_id": pl.Utf8, "service": pl.Utf8, "measured_from": pl.Utf8})
_NO_COUNTS = pl.DataFrame(schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "n": pl.Int64})
_NO_USAGE = pl.DataFrame(schema={"experiment_id": pl.Utf8, "cell": pl.Utf8, "member_id": pl.Utf8,
                                 "service": pl.Utf8, "requests": pl.Float64})
_NO_EXPERIMENTS = pl.DataFrame(schema={"experiment_id": pl.Utf8, "control_cell": pl.Utf8})


DELTA_SCHEMA = (RESULT_SCHEMA | {f"work_{c}": pl.Float64 for c in WORK_COLUMNS} | {"covariate": pl.Utf8}
                | {"wpr_delta": pl.Float64, "wpr_se": pl.Float64})
