"""Experiment statistics: per (experiment, cell, service) relative request deltas.

Member-level inference only: each allocated member contributes one number per
service (adjusted request count; 0 when it had no sampled traffic), so the
variance reflects between-member noise, overdispersion and trace sampling
together.  Everything is computed from per-cell sufficient statistics (sums,
squares and cross products over members: `cell_moments` from member rows in
memory, or `usage_moments` in the warehouse), then vectorized numpy formulas
(`compare_moments`) that match GrowthBook gbstats 0.8.0 exactly (see
`stats_inference`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import orjson
import polars as pl
from scipy import stats as sps

from cost_attribution.attribution import stats_inference as inf
from cost_attribution.attribution.stats_inference import benjamini_hochberg, sequential_halfwidth
from cost_attribution.attribution.stats_inputs import clean_allocations, clean_usage, require_columns

__all__ = ["StatsConfig", "compare_cells", "compare_moments", "cell_moments", "delta_covariance",
           "relative_covariance", "srm_from_counts", "intended_splits", "sample_ratio_mismatch",
           "benjamini_hochberg", "sequential_halfwidth", "RESULT_SCHEMA"]

_VARIANCE_REDUCTIONS = ("none", "cuped", "auto", "ratio")


@dataclass(frozen=True)
class StatsConfig:
    alpha: float = 0.05  # two-sided level for intervals
    fdr_q: float = 0.05  # Benjamini-Hochberg level; significant = q_value < fdr_q
    # Always-valid (Howard et al. normal-mixture confidence sequence, as GrowthBook does)
    # intervals and p-values: the daily report re-analyses every day, and fixed-horizon
    # intervals would lose their coverage under that peeking.
    sequential: bool = True
    # Total members (treatment + control) at which the sequential interval is tightest.
    # Validity does not depend on it; a wrong guess only costs some width.  5000 is the
    # gbstats default and about 2x the sample world's ~2,500 members per experiment.
    sequential_tuning_n: float = 5000.0
    # "none" | "cuped" (requires pre_usage) | "auto" (cuped when pre_usage is given) |
    # "ratio" (pre_usage holds each member's denominator, e.g. its root requests: the
    # metric is y per unit of x, compared as a ratio of means)
    variance_reduction: str = "auto"

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.fdr_q < 1:
            raise ValueError(f"fdr_q must be in (0, 1), got {self.fdr_q}")
        if not self.sequential_tuning_n > 0:
            raise ValueError(f"sequential_tuning_n must be > 0, got {self.sequential_tuning_n}")
        if self.variance_reduction not in _VARIANCE_REDUCTIONS:
            raise ValueError(f"variance_reduction must be one of {_VARIANCE_REDUCTIONS}, got {self.variance_reduction!r}")


RESULT_SCHEMA = {
    "experiment_id": pl.String, "cell": pl.String, "control_cell": pl.String, "service": pl.String,
    "n_treatment": pl.Int64, "n_control": pl.Int64, "mean_treatment": pl.Float64, "mean_control": pl.Float64,
    "delta": pl.Float64, "se": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "p_value": pl.Float64, "q_value": pl.Float64, "significant": pl.Boolean, "method": pl.String,
    "variance_reduction_pct": pl.Float64,
    "control_rel_var": pl.Float64,  # the control's share of the variance (RelativeEffect)
}

_MOMENTS = ["sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"]


def _experiments_table(experiments: pl.DataFrame) -> pl.DataFrame:
    require_columns(experiments, "experiments", ["experiment_id", "control_cell"])
    e = experiments.select(pl.col("experiment_id", "control_cell").cast(pl.String)).drop_nulls().unique()
    dup = e.group_by("experiment_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"experiments with more than one control_cell: {dup['experiment_id'].to_list()}")
    return e


def _member_values(member_usage, allocations, pre_usage):
    """Per member x service: y (requests) and x (pre_usage's pre_requests, or 0 without it),
    on allocated members only."""
    alloc, q_alloc = clean_allocations(allocations)
    usage, q_usage = clean_usage(member_usage, alloc)
    usage = usage.rename({"requests": "y"})
    quarantine = [q_alloc, q_usage]
    if pre_usage is not None:
        pre, q_pre = clean_usage(pre_usage, alloc, value_column="pre_requests", source="pre_usage")
        quarantine.append(q_pre)
        keys = ["experiment_id", "cell", "member_id", "service"]
        usage = (usage.join(pre.rename({"pre_requests": "x"}), on=keys, how="full", coalesce=True)
                 .with_columns(pl.col("y", "x").fill_null(0.0)))
    else:
        usage = usage.with_columns(x=pl.lit(0.0))
    return alloc, usage, pl.concat(quarantine)


def _cell_moments(usage: pl.DataFrame) -> pl.DataFrame:
    # Members without a row have y = x = 0 and add nothing to any sum; they enter through n.
    return usage.group_by("experiment_id", "cell", "service").agg(
        sum_y=pl.col("y").sum(), sum_y2=(pl.col("y") ** 2).sum(), sum_x=pl.col("x").sum(),
        sum_x2=(pl.col("x") ** 2).sum(), sum_xy=(pl.col("x") * pl.col("y")).sum())


def cell_moments(member_usage: pl.DataFrame, allocations: pl.DataFrame,
                 pre_usage: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(cell_n, moments) of member rows, the input of `compare_moments`: experiment_id,
    cell, n (clean allocated members) and experiment_id, cell, service, sum_y, sum_y2,
    sum_x, sum_x2, sum_xy (y the member's requests, x its `pre_usage` or 0). Unusable
    input rows are excluded with a warning (the counts per source and reason)."""
    alloc, usage, quarantine = _member_values(member_usage, allocations, pre_usage)
    if quarantine.height:
        counts = quarantine.group_by("source", "reason").len().sort("len", descending=True)
        warnings.warn("experiment stats excluded input rows: " + "; ".join(
            f"{r['len']} {r['source']}: {r['reason']}" for r in counts.iter_rows(named=True)), stacklevel=3)
    return alloc.group_by("experiment_id", "cell").agg(n=pl.len().cast(pl.Int64)), _cell_moments(usage)


def _comparison_frame(cell_n: pl.DataFrame, moments: pl.DataFrame, exps: pl.DataFrame) -> pl.DataFrame:
    """One row per (experiment, treatment cell, service) with both cells' n and moments."""
    known = set(exps["experiment_id"].to_list())
    unknown = sorted(set(cell_n["experiment_id"].to_list()) - known)
    if unknown:
        warnings.warn(f"allocations for experiments missing from `experiments` are not analysed: {unknown[:10]}"
                      f"{' ...' if len(unknown) > 10 else ''}", stacklevel=3)
    has_control = exps.join(cell_n, left_on=["experiment_id", "control_cell"], right_on=["experiment_id", "cell"])
    no_control = sorted(known - set(has_control["experiment_id"].to_list()))
    if no_control:
        warnings.warn(f"experiments without allocated control members are not analysed: {no_control[:10]}", stacklevel=3)
    pairs = (has_control.select("experiment_id", "control_cell", n_control="n")
             .join(cell_n, on="experiment_id").filter(pl.col("cell") != pl.col("control_cell"))
             .rename({"n": "n_treatment"}))
    services_t = moments.join(pairs.select("experiment_id", "cell"), on=["experiment_id", "cell"]).select(
        "experiment_id", "cell", "service")
    services_c = (moments.rename({"cell": "control_cell"}).select("experiment_id", "control_cell", "service")
                  .join(pairs.select("experiment_id", "control_cell", "cell"), on=["experiment_id", "control_cell"])
                  .select("experiment_id", "cell", "service"))
    rows = pl.concat([services_t, services_c]).unique().join(pairs, on=["experiment_id", "cell"])
    t_mom = moments.rename({m: f"t_{m}" for m in _MOMENTS})
    c_mom = moments.rename({m: f"c_{m}" for m in _MOMENTS} | {"cell": "control_cell"})
    return (rows.join(t_mom, on=["experiment_id", "cell", "service"], how="left")
            .join(c_mom, on=["experiment_id", "control_cell", "service"], how="left")
            .with_columns(pl.col([f"{s}_{m}" for s in "tc" for m in _MOMENTS]).fill_null(0.0))
            .sort("experiment_id", "cell", "service"))


def _moments(frame: pl.DataFrame, side: str, n_col: str) -> inf.CellMoments:
    return inf.CellMoments(frame[n_col].to_numpy().astype(float),
                           *[frame[f"{side}_{m}"].to_numpy() for m in _MOMENTS])


def _interval(effect: inf.RelativeEffect, n_total: np.ndarray, config: StatsConfig):
    if config.sequential:
        return inf.sequential(effect.delta, effect.variance, n_total, config.alpha, config.sequential_tuning_n)
    return inf.fixed_horizon(effect.delta, effect.variance, effect.dof, config.alpha)


def _nan_to_null(a: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(a, dtype=float), dtype=pl.Float64, nan_to_null=True)


def compare_cells(member_usage: pl.DataFrame, allocations: pl.DataFrame, experiments: pl.DataFrame,
                  config: StatsConfig = StatsConfig(), pre_usage: pl.DataFrame | None = None) -> pl.DataFrame:
    """Relative request delta of every non-control cell vs its control, per service.

    member_usage: experiment_id, cell, member_id, service, requests (non-zero rows; repeats are summed)
    allocations:  experiment_id, member_id, cell (every allocated member: the denominator)
    experiments:  experiment_id, control_cell
    pre_usage:    experiment_id, member_id, service, pre_requests (optional CUPED covariate; absent = 0)

    Returns RESULT_SCHEMA columns, one row per (experiment, cell != control,
    service used by a member of either cell).  q_value is BH over every testable
    row of this call.  delta/se/ci/p are null where the control mean is 0 (e.g.
    a new dependency) or the variance is degenerate; such rows are never
    significant.  Unusable input rows are excluded with a warning; call
    `stats_inputs.clean_allocations` / `clean_usage` to get them with reasons.
    """
    use_cuped = config.variance_reduction in ("ratio", "cuped") or (
        config.variance_reduction == "auto" and pre_usage is not None)
    if use_cuped and pre_usage is None:
        raise ValueError(f"variance_reduction={config.variance_reduction!r} needs pre_usage "
                         "(experiment_id, member_id, service, pre_requests)")
    cell_n, moments = cell_moments(member_usage, allocations, pre_usage if use_cuped else None)
    return compare_moments(cell_n, moments, experiments, config, adjusted=use_cuped)


def compare_moments(cell_n: pl.DataFrame, moments: pl.DataFrame, experiments: pl.DataFrame,
                    config: StatsConfig = StatsConfig(), adjusted: bool = False) -> pl.DataFrame:
    """`compare_cells` from per-cell sums (`cell_moments`, or the same sums computed in
    the warehouse): members never need to be held in memory. `adjusted`: the moments carry
    a covariate x, used as config.variance_reduction says (ratio, or CUPED)."""
    use_ratio = config.variance_reduction == "ratio"
    if use_ratio and not adjusted:
        raise ValueError("variance_reduction='ratio' needs moments with a denominator (adjusted=True)")
    exps = _experiments_table(experiments)
    frame = _comparison_frame(cell_n, moments, exps)
    if frame.height == 0:
        return pl.DataFrame(schema=RESULT_SCHEMA)

    control, treatment = _moments(frame, "c", "n_control"), _moments(frame, "t", "n_treatment")
    n_total = control.n + treatment.n
    plain = inf.relative_effect(control, treatment)
    lo, hi, p = _interval(plain, n_total, config)
    effect, saved_pct = plain, np.zeros(frame.height)
    if adjusted:
        effect = (inf.ratio_effect(control, treatment) if use_ratio
                  else inf.relative_effect(control, treatment, inf.pooled_cuped_theta(control, treatment)))
        plain_width = hi - lo
        lo, hi, p = _interval(effect, n_total, config)
        with np.errstate(divide="ignore", invalid="ignore"):
            saved_pct = 100.0 * (1.0 - (hi - lo) / plain_width)
    q = benjamini_hochberg(p)
    method = ("sequential" if config.sequential else "delta-method") + (
        "+ratio" if use_ratio else "+cuped" if adjusted else "")
    return frame.select(
        "experiment_id", "cell", "control_cell", "service", "n_treatment", "n_control",
    ).with_columns(
        mean_treatment=_nan_to_null(effect.mean_treatment), mean_control=_nan_to_null(effect.mean_control),
        delta=_nan_to_null(effect.delta), se=_nan_to_null(np.sqrt(effect.variance)),
        ci_low=_nan_to_null(lo), ci_high=_nan_to_null(hi), p_value=_nan_to_null(p), q_value=_nan_to_null(q),
        significant=pl.Series(np.nan_to_num(q, nan=1.0) < config.fdr_q),
        method=pl.lit(method), variance_reduction_pct=_nan_to_null(saved_pct),
        control_rel_var=_nan_to_null(effect.control_rel_var),
    ).cast(RESULT_SCHEMA)


def delta_covariance(member_usage: pl.DataFrame, allocations: pl.DataFrame, experiment_id: str, cell: str,
                     control_cell: str, services: list[str], pre_usage: pl.DataFrame | None = None) -> np.ndarray:
    """Delta-method covariance matrix of the relative deltas of `services` for one experiment cell.

    Services share members, so their deltas are correlated; this matrix, built
    from per-member cross products, gives Var(sum_s c_s delta_s) = c' Sigma c.
        Sigma_rs = Cov_t(y_r, y_s) / (n_t m_cr m_cs) + m_tr m_ts Cov_c(y_r, y_s) / (n_c m_cr^2 m_cs^2)
    Its diagonal equals compare_cells' se^2 (gbstats variance).  With
    `pre_usage`, y is the CUPED-adjusted y - theta_s x (theta pooled over both
    cells) as in compare_cells.  Rows/columns of services whose control mean is
    0 are NaN.
    """
    sub_alloc = allocations.filter((pl.col("experiment_id") == experiment_id) & pl.col("cell").is_in([cell, control_cell]))
    exps = pl.DataFrame({"experiment_id": [experiment_id], "control_cell": [control_cell]})
    sub_usage = member_usage.filter(pl.col("experiment_id") == experiment_id)
    sub_pre = None if pre_usage is None else pre_usage.filter(pl.col("experiment_id") == experiment_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compare_cells reports exclusions; don't repeat per call
        alloc, usage, _ = _member_values(sub_usage, sub_alloc, sub_pre)
    k = len(services)
    svc_index = pl.DataFrame({"service": list(services), "s_idx": np.arange(k)}, schema={"service": pl.String, "s_idx": pl.Int64})

    def member_matrix(which: str):
        members = alloc.filter(pl.col("cell") == which).select("member_id").with_row_index("m_idx")
        rows = (usage.filter(pl.col("cell") == which).join(members, on="member_id").join(svc_index, on="service"))
        y = np.zeros((members.height, k))
        x = np.zeros((members.height, k))
        mi, si = rows["m_idx"].to_numpy().astype(np.int64), rows["s_idx"].to_numpy()
        np.add.at(y, (mi, si), rows["y"].to_numpy())
        np.add.at(x, (mi, si), rows["x"].to_numpy())
        return y, x

    y_t, x_t = member_matrix(cell)
    y_c, x_c = member_matrix(control_cell)
    n_t, n_c = y_t.shape[0], y_c.shape[0]
    if n_t < 2 or n_c < 2:
        return np.full((k, k), np.nan)
    z_t, z_c = y_t, y_c
    if pre_usage is not None:
        yy, xx = np.vstack([y_t, y_c]), np.vstack([x_t, x_c])
        var_x, var_y = xx.var(axis=0, ddof=1), yy.var(axis=0, ddof=1)
        cov_xy = ((xx - xx.mean(0)) * (yy - yy.mean(0))).sum(0) / (n_t + n_c - 1)
        ok = (var_x > 0) & (var_y > 0)
        theta = np.where(ok, cov_xy / np.where(ok, var_x, 1.0), 0.0)
        z_t, z_c = y_t - theta * x_t, y_c - theta * x_c
    cov_t = np.atleast_2d(np.cov(z_t, rowvar=False, ddof=1))
    cov_c = np.atleast_2d(np.cov(z_c, rowvar=False, ddof=1))
    return relative_covariance(y_t.mean(0), y_c.mean(0), cov_t, cov_c, n_t, n_c)


def relative_covariance(m_t: np.ndarray, m_c: np.ndarray, cov_t: np.ndarray, cov_c: np.ndarray,
                        n_t: int, n_c: int) -> np.ndarray:
    """Delta-method covariance of the relative deltas of k services from each cell's
    member means (k) and member covariance matrix (k x k): the formula of
    `delta_covariance`, for sums computed anywhere (e.g. in the warehouse)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_c = np.where(m_c != 0, 1.0 / m_c, np.nan)
        return (cov_t * np.outer(inv_c, inv_c) / n_t
                + cov_c * np.outer(m_t * inv_c**2, m_t * inv_c**2) / n_c)


def intended_splits(experiments: pl.DataFrame) -> dict[str, dict[str, float]]:
    """experiment_id -> {cell: weight} from experiments.yaml (`cells`, `weights`);
    even over the cells where no weights are given."""
    splits = {}
    for row in experiments.iter_rows(named=True):
        cells = [c for c in (row.get("cells") or "").split(",") if c]
        if not cells:
            continue
        weights = orjson.loads(row["weights"]) if row.get("weights") else [1.0] * len(cells)
        splits[row["experiment_id"]] = dict(zip(cells, (float(w) for w in weights)))
    return splits


def sample_ratio_mismatch(allocations: pl.DataFrame, experiments: pl.DataFrame, expected_split: dict | None = None,
                          threshold: float = 0.001) -> pl.DataFrame:
    """Chi-square sample-ratio-mismatch test per experiment (gbstats `check_srm`).

    expected_split: None (equal split over the experiment's allocated cells),
    {cell: weight} for every experiment, or {experiment_id: {cell: weight}}.
    Cells with expected weight but no members count as 0, which is exactly the
    mismatch to catch.  Returns experiment_id, cell_counts (JSON string
    {cell: n}), chi2, p_value, mismatch (p_value < threshold).  Experiments
    with fewer than two cells get null chi2/p and mismatch False.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alloc, _ = clean_allocations(allocations)
    return srm_from_counts(alloc.group_by("experiment_id", "cell").agg(n=pl.len()), experiments, expected_split,
                           threshold)


def srm_from_counts(cell_n: pl.DataFrame, experiments: pl.DataFrame, expected_split: dict | None = None,
                    threshold: float = 0.001) -> pl.DataFrame:
    """`sample_ratio_mismatch` from the clean allocated members per cell (experiment_id,
    cell, n: what `cell_moments` returns), so the members need not be held."""
    exps = _experiments_table(experiments)
    by_exp: dict[str, dict[str, int]] = {}
    for e, c, n in cell_n.select("experiment_id", "cell", "n").iter_rows():
        by_exp.setdefault(e, {})[c] = int(n)
    out = []
    for exp_id in sorted(exps["experiment_id"].to_list()):  # one row per experiment: loop is over experiments, not members
        observed = dict(by_exp.get(exp_id, {}))
        split = expected_split
        if split and all(isinstance(v, dict) for v in split.values()):
            split = split.get(exp_id)
        weights = {c: 1.0 for c in observed} if not split else {str(c): float(w) for c, w in split.items()}
        for c in weights:
            observed.setdefault(c, 0)
        extra = [c for c in observed if c not in weights]
        chi2 = p = None
        if extra:  # members in a cell the split does not know: always a mismatch
            chi2, p = float("inf"), 0.0
        elif len(weights) >= 2 and sum(observed.values()) > 0 and all(w >= 0 for w in weights.values()):
            cells = [c for c in weights if weights[c] > 0]
            obs = np.array([observed[c] for c in cells], dtype=float)
            exp = np.array([weights[c] for c in cells]) / sum(weights[c] for c in cells) * obs.sum()
            chi2 = float(((obs - exp) ** 2 / exp).sum())
            p = float(sps.chi2.sf(chi2, len(cells) - 1))
            if any(observed[c] > 0 for c in weights if weights[c] == 0):
                chi2, p = float("inf"), 0.0
        out.append({"experiment_id": exp_id, "cell_counts": orjson.dumps(dict(sorted(observed.items()))).decode(),
                    "chi2": chi2, "p_value": p, "mismatch": p is not None and p < threshold})
    return pl.DataFrame(out, schema={"experiment_id": pl.String, "cell_counts": pl.String, "chi2": pl.Float64,
                                     "p_value": pl.Float64, "mismatch": pl.Boolean})
