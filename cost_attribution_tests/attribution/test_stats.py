"""Experiment statistics: validity by simulation (A/A error rates, coverage, power, covariance), exactness vs references, dirty input."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
from scipy.stats import false_discovery_control

from cost_attribution.attribution.stats import (
    StatsConfig, benjamini_hochberg, compare_cells, delta_covariance, sample_ratio_mismatch,
)
from cost_attribution.attribution.stats_inputs import clean_allocations, clean_usage
from cost_attribution.attribution.stats_simulation import SAMPLE_WORLD_SERVICES, simulate_world

FIXED = StatsConfig(sequential=False)
SEQUENTIAL = StatsConfig(sequential=True)
N_AA = 240  # A/A replicates (experiments), 9 services each


def _covers(frame: pl.DataFrame, truth: pl.Expr | float = 0.0) -> pl.Expr:
    return (pl.col("ci_low") <= truth) & (pl.col("ci_high") >= truth)


def _any_discovery_per_experiment(results: pl.DataFrame, q: float = 0.05) -> np.ndarray:
    """BH within each experiment (each replicate is its own family), then: any discovery?"""
    out = []
    for _, grp in results.group_by("experiment_id"):  # loop over replicates, not members
        out.append(bool((benjamini_hochberg(grp["p_value"].to_numpy()) < q).any()))
    return np.array(out)


@pytest.fixture(scope="module")
def aa_world():
    return simulate_world(seed=11, n_experiments=N_AA)


@pytest.fixture(scope="module")
def aa_fixed(aa_world):
    return compare_cells(aa_world.member_usage, aa_world.allocations, aa_world.experiments, FIXED)


# --- Benjamini-Hochberg ---------------------------------------------------------------------------

def test_bh_matches_scipy_exactly_including_ties():
    rng = np.random.default_rng(3)
    for m in (1, 2, 9, 500):
        p = np.concatenate([rng.uniform(size=m), rng.beta(0.2, 5, size=m)])
        p[::7] = p[0]  # ties
        np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"), rtol=0, atol=1e-15)


def test_bh_leaves_untestable_rows_out_of_m():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], false_discovery_control(p[[0, 2, 3]]))
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([0.2, 1.5]))


# --- A/A validity ---------------------------------------------------------------------------------

def test_aa_fixed_horizon_fwer_and_coverage(aa_fixed):
    assert aa_fixed.height == N_AA * len(SAMPLE_WORLD_SERVICES)
    fwer = _any_discovery_per_experiment(aa_fixed).mean()
    # under the global null BH's FDR is the FWER: <= 5% plus 3 binomial SE at 240 replicates
    # (bench: 5.6% measured over 2,400 replicates, per-test type-I error 5.0%)
    assert fwer <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / N_AA), fwer
    coverage = aa_fixed.select(_covers(aa_fixed).mean()).item()
    assert 0.93 <= coverage <= 0.97, coverage
    assert aa_fixed["method"].unique().to_list() == ["delta-method"]


def test_aa_sequential_coverage_and_fwer(aa_world):
    res = compare_cells(aa_world.member_usage, aa_world.allocations, aa_world.experiments)  # default = sequential
    assert res["method"].unique().to_list() == ["sequential"]
    assert res.select(_covers(res).mean()).item() >= 0.95
    assert _any_discovery_per_experiment(res).mean() <= 0.05
    # p < alpha exactly when 0 is outside the always-valid interval
    reject = (res["p_value"] < 0.05).to_numpy()
    outside = (~res.select(_covers(res)).to_series()).to_numpy()
    assert np.array_equal(reject, outside)


def test_sequential_survives_daily_peeking_where_fixed_horizon_does_not():
    w = simulate_world(seed=5, n_experiments=60, per_day=True)
    looks = {cfg.sequential: [] for cfg in (FIXED, SEQUENTIAL)}
    for day in range(4):
        usage = w.member_usage.filter(pl.col("day") <= day)
        for cfg in (FIXED, SEQUENTIAL):
            r = compare_cells(usage, w.allocations, w.experiments, cfg).sort("experiment_id", "service")
            looks[cfg.sequential].append(r.select(_covers(r)).to_series().to_numpy())
    covered_at_every_look = {k: np.all(np.vstack(v), axis=0).mean() for k, v in looks.items()}
    assert covered_at_every_look[True] >= 0.95, covered_at_every_look
    assert covered_at_every_look[False] < covered_at_every_look[True]


# --- power at the sample world's size -------------------------------------------------------------

@pytest.fixture(scope="module")
def effect_world():
    effects = {"metadata-svc": 0.40, "recs-svc": 0.40, "images-svc": 0.50, "search-svc": 7.50}
    return effects, simulate_world(seed=21, n_experiments=100, effects=effects)


# Sequential intervals are ~1.6x wider at this size (the price of peeking), so +40% is found less often.
@pytest.mark.parametrize("cfg, min_detect_40pct", [(FIXED, 0.90), (SEQUENTIAL, 0.75)])
def test_sample_world_effects_are_detected_and_covered(effect_world, cfg, min_detect_40pct):
    effects, w = effect_world
    res = compare_cells(w.member_usage, w.allocations, w.experiments, cfg)  # BH over all rows of all replicates
    truth = pl.DataFrame({"service": list(w.true_delta), "true_delta": list(w.true_delta.values())})
    res = res.join(truth, on="service")
    per_service = res.group_by("service").agg(
        detected=pl.col("significant").mean(), covered=_covers(res, pl.col("true_delta")).mean(),
        bias=(pl.col("delta") - pl.col("true_delta")).mean())
    effected = per_service.filter(pl.col("service").is_in(list(effects)))
    assert effected["detected"].min() >= min_detect_40pct, effected
    # nominal 95%; 100 replicates -> SE 2.2 points (bench: 94-95% over 800 replicates in fixed mode)
    assert effected["covered"].min() >= 0.85, effected
    nulls = per_service.filter(~pl.col("service").is_in(list(effects)))
    assert nulls["detected"].max() <= 0.05, nulls
    recs = per_service.filter(pl.col("service") == "recs-svc")
    assert abs(recs["bias"].item()) < 0.02


# --- CUPED ----------------------------------------------------------------------------------------

def test_cuped_keeps_coverage_and_narrows_intervals(aa_world, aa_fixed):
    res = compare_cells(aa_world.member_usage, aa_world.allocations, aa_world.experiments, FIXED,
                        pre_usage=aa_world.pre_usage)
    assert res["method"].unique().to_list() == ["delta-method+cuped"]
    coverage = res.select(_covers(res).mean()).item()
    assert 0.93 <= coverage <= 0.97, coverage
    gain = res["variance_reduction_pct"].mean()
    width = lambda r: (r["ci_high"] - r["ci_low"]).mean()  # noqa: E731
    assert gain > 20 and width(res) < 0.8 * width(aa_fixed), gain
    # same unadjusted means as the plain analysis: CUPED changes the estimator, not the data
    np.testing.assert_allclose(res.sort("experiment_id", "service")["mean_control"],
                               aa_fixed.sort("experiment_id", "service")["mean_control"])
    one = lambda f: f.filter(pl.col("experiment_id") == "exp-0000")  # noqa: E731
    none = compare_cells(one(aa_world.member_usage), one(aa_world.allocations), one(aa_world.experiments),
                         StatsConfig(sequential=False, variance_reduction="none"), pre_usage=one(aa_world.pre_usage))
    assert none["method"].unique().to_list() == ["delta-method"] and none["variance_reduction_pct"].max() == 0


def test_cuped_without_covariate_is_a_clear_error(aa_world):
    with pytest.raises(ValueError, match="pre_usage"):
        compare_cells(aa_world.member_usage, aa_world.allocations, aa_world.experiments,
                      StatsConfig(variance_reduction="cuped"))
    with pytest.raises(ValueError):
        StatsConfig(variance_reduction="magic")


# --- exactness against an independent dense computation and gbstats ---------------------------------

def _dense(world, exp_id: str, service: str):
    """Per-member vectors (zeros included) computed directly, independent of the polars aggregation."""
    alloc = world.allocations.filter(pl.col("experiment_id") == exp_id)
    use = (world.member_usage.filter((pl.col("experiment_id") == exp_id) & (pl.col("service") == service))
           .group_by("member_id").agg(pl.col("requests").sum()))
    pre = world.pre_usage.filter((pl.col("experiment_id") == exp_id) & (pl.col("service") == service))
    full = (alloc.join(use, on="member_id", how="left").join(pre.select("member_id", "pre_requests"), on="member_id", how="left")
            .fill_null(0.0))
    get = lambda c, col: full.filter(pl.col("cell") == c)[col].to_numpy()  # noqa: E731
    return get("control", "requests"), get("treatment", "requests"), get("control", "pre_requests"), get("treatment", "pre_requests")


def test_point_estimate_and_se_match_dense_delta_method(aa_world, aa_fixed):
    yc, yt, _, _ = _dense(aa_world, "exp-0003", "recs-svc")
    row = aa_fixed.filter((pl.col("experiment_id") == "exp-0003") & (pl.col("service") == "recs-svc"))
    mc, mt = yc.mean(), yt.mean()
    var = yt.var(ddof=1) / (mc**2 * yt.size) + yc.var(ddof=1) * mt**2 / (mc**4 * yc.size)
    assert row["delta"].item() == pytest.approx(mt / mc - 1, rel=1e-12)
    assert row["se"].item() == pytest.approx(np.sqrt(var), rel=1e-9)
    assert row["n_control"].item() == yc.size == 1250


def test_matches_gbstats(aa_world):
    gb = pytest.importorskip("gbstats.frequentist.tests")
    from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta

    yc, yt, xc, xt = _dense(aa_world, "exp-0007", "metadata-svc")
    sel = (pl.col("experiment_id") == "exp-0007") & (pl.col("service") == "metadata-svc")
    sm = lambda y: SampleMeanStatistic(n=y.size, sum=y.sum(), sum_squares=(y**2).sum())  # noqa: E731
    cases = [
        (FIXED, None, gb.TwoSidedTTest(sm(yc), sm(yt), gb.FrequentistConfig())),
        (SEQUENTIAL, None, gb.SequentialTwoSidedTTest(sm(yc), sm(yt), gb.SequentialConfig(sequential_tuning_parameter=5000))),
    ]
    ra = lambda y, x: RegressionAdjustedStatistic(n=y.size, post_statistic=sm(y), pre_statistic=sm(x),  # noqa: E731
                                                  post_pre_sum_of_products=(x * y).sum(), theta=0)
    a, b = ra(yc, xc), ra(yt, xt)
    theta = compute_theta(a, b)
    a.theta = b.theta = theta
    cases.append((FIXED, aa_world.pre_usage, gb.TwoSidedTTest(a, b, gb.FrequentistConfig())))
    one = lambda f: f.filter(pl.col("experiment_id") == "exp-0007")  # noqa: E731
    for cfg, pre, ref in cases:
        row = compare_cells(one(aa_world.member_usage), one(aa_world.allocations), one(aa_world.experiments), cfg,
                            pre_usage=None if pre is None else one(pre)).filter(sel)
        r = ref.compute_result()
        assert row["delta"].item() == pytest.approx(r.expected, rel=1e-10, abs=1e-12)
        assert row["se"].item() == pytest.approx(r.uplift.stddev, rel=1e-9)
        assert [row["ci_low"].item(), row["ci_high"].item()] == pytest.approx(r.ci, rel=1e-9)
        assert row["p_value"].item() == pytest.approx(r.p_value, rel=1e-6, abs=1e-12)


# --- covariance across services -------------------------------------------------------------------

def test_delta_covariance_predicts_variance_of_weighted_sum():
    services = ["api-gateway", "metadata-svc", "recs-svc"]
    costs = np.array([1.0, 2.0, 3.0])
    w = simulate_world(seed=8, n_experiments=400, n_per_cell=600)
    res = compare_cells(w.member_usage, w.allocations, w.experiments, FIXED).filter(pl.col("service").is_in(services))
    deltas = res.pivot(on="service", index="experiment_id", values="delta").select(services).to_numpy()
    simulated = np.var(deltas @ costs, ddof=1)
    sigmas = [delta_covariance(w.member_usage, w.allocations, f"exp-{i:04d}", "treatment", "control", services)
              for i in range(0, 400, 20)]
    predicted = float(np.mean([costs @ s @ costs for s in sigmas]))
    assert simulated == pytest.approx(predicted, rel=0.2)
    # the services really are correlated: assuming independence would miss the target
    independent = float(np.mean([costs**2 @ np.diag(s) for s in sigmas]))
    assert abs(independent / simulated - 1) > 0.3
    # the diagonal is compare_cells' se^2
    exp0 = res.filter(pl.col("experiment_id") == "exp-0000").sort("service")
    np.testing.assert_allclose(np.sqrt(np.diag(sigmas[0]))[np.argsort(services)], exp0["se"].to_numpy(), rtol=1e-9)


def test_delta_covariance_with_cuped_matches_compare_cells(aa_world):
    services = ["auth-svc", "images-svc"]
    sigma = delta_covariance(aa_world.member_usage, aa_world.allocations, "exp-0001", "treatment", "control",
                             services, pre_usage=aa_world.pre_usage)
    one = lambda f: f.filter(pl.col("experiment_id") == "exp-0001")  # noqa: E731
    res = compare_cells(one(aa_world.member_usage), one(aa_world.allocations), one(aa_world.experiments), FIXED,
                        pre_usage=one(aa_world.pre_usage)).sort("service")
    se = res.filter(pl.col("service").is_in(services))["se"].to_numpy()
    np.testing.assert_allclose(np.sqrt(np.diag(sigma)), se, rtol=1e-9)


# --- sample ratio mismatch ------------------------------------------------------------------------

def _alloc(counts: dict[str, dict[str, int]]) -> pl.DataFrame:
    rows = [(e, f"{e}-{c}-{i}", c) for e, cells in counts.items() for c, n in cells.items() for i in range(n)]
    return pl.DataFrame(rows, schema=["experiment_id", "member_id", "cell"], orient="row")


def test_srm_flags_55_45_and_not_a_fair_split():
    rng = np.random.default_rng(0)
    fair_t = int(rng.binomial(2500, 0.5))
    alloc = _alloc({"skewed": {"control": 1375, "treatment": 1125}, "fair": {"control": 2500 - fair_t, "treatment": fair_t},
                    "missing-cell": {"control": 1250}})
    exps = pl.DataFrame({"experiment_id": ["skewed", "fair", "missing-cell"], "control_cell": "control"})
    out = sample_ratio_mismatch(alloc, exps, expected_split={"control": 1, "treatment": 1}).sort("experiment_id")
    flags = dict(zip(out["experiment_id"], out["mismatch"]))
    assert flags == {"fair": False, "missing-cell": True, "skewed": True}
    skewed = out.filter(pl.col("experiment_id") == "skewed")
    assert skewed["chi2"].item() == pytest.approx(25.0)  # (1375-1250)^2/1250 * 2
    assert '"treatment":1125' in skewed["cell_counts"].item()
    # a 55/45 design is not a mismatch when it was planned that way
    planned = sample_ratio_mismatch(alloc, exps, expected_split={"skewed": {"control": 55, "treatment": 45}})
    assert not planned.filter(pl.col("experiment_id") == "skewed")["mismatch"].item()


# --- dirty input and edge cases -------------------------------------------------------------------

def test_dirty_input_is_quarantined_with_reasons_not_crashing():
    alloc = pl.DataFrame({"experiment_id": ["e"] * 6, "member_id": ["a", "b", "c", "d", "d", "a"],
                          "cell": ["control", "control", "treatment", "treatment", "control", "control"]})
    usage = pl.DataFrame({
        "experiment_id": ["e"] * 7, "member_id": ["a", "b", "c", "d", "zz", "a", "c"],
        "cell": ["control", "control", "treatment", "treatment", "treatment", "treatment", "treatment"],
        "service": ["s"] * 7, "requests": [10.0, 20.0, 30.0, 5.0, 7.0, 1.0, float("nan")]})
    clean_a, qa = clean_allocations(alloc)
    assert clean_a.height == 3 and qa["reason"].to_list() == ["member allocated to more than one cell of the experiment"]
    clean_u, qu = clean_usage(usage, clean_a)
    assert sorted(qu["reason"].to_list()) == sorted([
        "requests is null, NaN, infinite or negative", "member not (unambiguously) allocated to this experiment",
        "member not (unambiguously) allocated to this experiment", "usage cell differs from the member's allocated cell"])
    assert clean_u.height == 3
    with pytest.warns(UserWarning, match="excluded input rows"):
        res = compare_cells(usage, alloc, pl.DataFrame({"experiment_id": ["e"], "control_cell": ["control"]}), FIXED)
    assert res.height == 1 and res["n_control"].item() == 2 and res["n_treatment"].item() == 1


def test_zero_control_usage_and_multi_cell_experiments():
    rng = np.random.default_rng(1)
    n = 300
    cells = np.repeat(["control", "b", "c"], n)
    members = [f"m{i}" for i in range(3 * n)]
    alloc = pl.DataFrame({"experiment_id": "e", "member_id": members, "cell": cells})
    y = rng.poisson(2.0, 3 * n).astype(float)
    usage = pl.DataFrame({"experiment_id": "e", "cell": cells, "member_id": members, "service": "old", "requests": y})
    # a brand-new dependency only cell "c" calls
    new = pl.DataFrame({"experiment_id": "e", "cell": "c", "member_id": members[2 * n:2 * n + 50],
                        "service": "new", "requests": 3.0})
    res = compare_cells(pl.concat([usage, new]).filter(pl.col("requests") > 0), alloc,
                        pl.DataFrame({"experiment_id": ["e"], "control_cell": ["control"]}))
    assert sorted(zip(res["cell"], res["service"])) == [("b", "old"), ("c", "new"), ("c", "old")]
    new_row = res.filter(pl.col("service") == "new")
    assert new_row["delta"].item() is None and new_row["q_value"].item() is None
    assert new_row["significant"].item() is False and new_row["mean_treatment"].item() == pytest.approx(0.5)
    # BH over all testable rows of the call: two rows tested
    np.testing.assert_allclose(res.filter(pl.col("service") == "old")["q_value"].to_numpy(),
                               false_discovery_control(res.filter(pl.col("service") == "old")["p_value"].to_numpy()))
    with pytest.warns(UserWarning, match="without allocated control"):
        empty = compare_cells(usage.head(0), alloc.head(0), pl.DataFrame({"experiment_id": ["e"], "control_cell": ["control"]}))
    assert empty.height == 0 and "variance_reduction_pct" in empty.columns
