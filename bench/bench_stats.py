"""Benchmark of the experiment statistics on simulated sample-world-sized experiments.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_stats.py   (writes bench/stats_results.md, ~2-4 min on 2 cores)

Power (2/5/10/40% on recs-svc), A/A false-positive rate and coverage over 500
replicates, the CUPED width gain, the ratio-decomposition check, and agreement
with GrowthBook gbstats 0.8.0 on the same per-member data.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from cost_attribution.attribution.stats import StatsConfig, benjamini_hochberg, compare_cells, delta_covariance
from cost_attribution.attribution.stats_simulation import simulate_world

FIXED, SEQ = StatsConfig(sequential=False), StatsConfig(sequential=True)
OUT = Path(__file__).with_name("stats_results.md")


def covered(truth=0.0) -> pl.Expr:
    return (pl.col("ci_low") <= truth) & (pl.col("ci_high") >= truth)


def any_discovery(res: pl.DataFrame) -> float:
    """Share of experiments with >= 1 BH discovery when each experiment is its own family."""
    return float(np.mean([(benjamini_hochberg(g["p_value"].to_numpy()) < 0.05).any()
                          for _, g in res.group_by("experiment_id")]))


def power_table(lines: list[str]) -> None:
    lines += ["## Power at the sample world's size (1,250 members/cell, ~3 sampled traces/member, effect on recs-svc)", "",
              "200 replicates per effect; detected = BH q < 0.05 within the experiment's 9 services.", "",
              "| true effect | fixed: raw p<0.05 | fixed: detected | fixed: CI covers truth | sequential: detected | sequential: CI covers truth | mean se |",
              "|---|---|---|---|---|---|---|"]
    for i, eff in enumerate([0.02, 0.05, 0.10, 0.40]):
        w = simulate_world(seed=100 + i, n_experiments=200, effects={"recs-svc": eff})
        row = [f"+{eff:.0%}"]
        for cfg in (FIXED, SEQ):
            res = compare_cells(w.member_usage, w.allocations, w.experiments, cfg)
            recs = []
            for _, g in res.group_by("experiment_id"):
                q = benjamini_hochberg(g["p_value"].to_numpy())
                recs.append(bool(q[g["service"].to_numpy() == "recs-svc"][0] < 0.05))
            r = res.filter(pl.col("service") == "recs-svc")
            if not cfg.sequential:
                row.append(f"{(r['p_value'] < 0.05).mean():.1%}")
            row += [f"{np.mean(recs):.1%}", f"{r.select(covered(eff).mean()).item():.1%}"]
        row.append(f"{r['se'].mean():.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Small effects are invisible at this size: se of a relative delta is ~0.07 (members are few and "
              "heavily overdispersed), and BH over 9 services asks for p < ~0.006 when only one is real.  The "
              "relative-delta se also grows with the treatment mean, so z has SD < 1 and the upper tail is thinner."]


def aa_table(lines: list[str]) -> pl.DataFrame:
    batches = [simulate_world(seed=200 + b, n_experiments=250) for b in range(2)]
    lines += ["", "## A/A: 500 replicates x 9 services", "",
              "| mode | experiments with any BH discovery (FWER) | per-test p<0.05 | 95% CI coverage | mean CI width |",
              "|---|---|---|---|---|"]
    for name, cfg in (("fixed-horizon", FIXED), ("sequential (default)", SEQ)):
        res = pl.concat([compare_cells(w.member_usage, w.allocations, w.experiments, cfg).with_columns(batch=pl.lit(b))
                         .with_columns(pl.col("experiment_id") + f"-b{b}") for b, w in enumerate(batches)])
        lines.append(f"| {name} | {any_discovery(res):.1%} | {(res['p_value'] < 0.05).mean():.1%} | "
                     f"{res.select(covered().mean()).item():.1%} | {(res['ci_high'] - res['ci_low']).mean():.3f} |")
    w = batches[0]
    cuped = compare_cells(w.member_usage, w.allocations, w.experiments, FIXED, pre_usage=w.pre_usage)
    lines += ["", "## CUPED (pre-period = 4 days of the same members' usage, theta pooled over cells), 250 A/A replicates, fixed-horizon", "",
              "| service | interval width saved | coverage with CUPED |", "|---|---|---|"]
    per = cuped.group_by("service").agg(pl.col("variance_reduction_pct").mean(), covered().mean().alias("cov")).sort("service")
    for s, g, c in per.iter_rows():
        lines.append(f"| {s} | {g:.1f}% | {c:.1%} |")
    lines.append(f"| **all** | **{cuped['variance_reduction_pct'].mean():.1f}%** | **{cuped.select(covered().mean()).item():.1%}** |")
    return cuped


def ratio_decomposition(lines: list[str]) -> None:
    """Service calls per root request x root-volume effect, vs the plain per-member delta."""
    w = simulate_world(seed=300, n_experiments=150, effects={"recs-svc": 0.4})
    res = compare_cells(w.member_usage, w.allocations, w.experiments, FIXED)
    piv = {c: res.pivot(on="service", index="experiment_id", values=c).sort("experiment_id") for c in ("delta", "se")}
    d_s, d_r = piv["delta"]["recs-svc"].to_numpy(), piv["delta"]["api-gateway"].to_numpy()
    v_s, v_r = piv["se"]["recs-svc"].to_numpy() ** 2, piv["se"]["api-gateway"].to_numpy() ** 2
    cov = np.array([delta_covariance(w.member_usage, w.allocations, e, "treatment", "control", ["recs-svc", "api-gateway"])[0, 1]
                    for e in piv["delta"]["experiment_id"]])
    # log scale: log(1+d_s) = log(1+d_ratio) + log(1+d_root), an identity of the estimates
    ls, lr = v_s / (1 + d_s) ** 2, v_r / (1 + d_r) ** 2
    lc = cov / ((1 + d_s) * (1 + d_r))
    var_ratio = ls + lr - 2 * lc
    naive = var_ratio + lr  # components treated as independent
    proper = var_ratio + lr + 2 * (lc - lr)  # = ls exactly: the decomposition carries no new information
    est, truth = np.log1p(d_s), np.log1p(0.4)
    cov_of = lambda v: float(np.mean(np.abs(est - truth) <= 1.96 * np.sqrt(v)))  # noqa: E731
    lines += ["", "## Ratio decomposition (recs-svc calls per api-gateway root request x root-volume effect), 150 replicates, +40%", "",
              "| variance used | mean se (log scale) | coverage of log(1.4) |", "|---|---|---|",
              f"| plain per-member delta | {np.sqrt(ls).mean():.4f} | {cov_of(ls):.1%} |",
              f"| decomposed, covariance kept | {np.sqrt(proper).mean():.4f} | {cov_of(proper):.1%} |",
              f"| decomposed, components assumed independent | {np.sqrt(naive).mean():.4f} | {cov_of(naive):.1%} |", "",
              "The decomposed point estimate is algebraically identical to the plain one, and with the covariance kept its "
              "delta-method variance is identical too; dropping the covariance changes the width without a valid reason. "
              "Verdict: not kept (no valid narrowing)."]


def gbstats_comparison(lines: list[str]) -> None:
    w = simulate_world(seed=400, n_experiments=1, effects={"recs-svc": 0.4})
    lines += ["", "## Agreement with GrowthBook gbstats on the same per-member data (1 experiment x 9 services)", ""]
    try:
        from gbstats.frequentist.tests import FrequentistConfig, SequentialConfig, SequentialTwoSidedTTest, TwoSidedTTest
        from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta
    except ImportError as exc:  # not a project dependency; see report
        lines.append(f"gbstats not importable ({exc}); skipped.")
        return
    alloc = w.allocations
    use = w.member_usage.group_by("member_id", "service").agg(pl.col("requests").sum())
    lines += ["| mode | max abs diff: delta | se | ci bounds | p-value | mean CI half-width / se |", "|---|---|---|---|---|---|"]
    for name, cfg, pre in (("fixed", FIXED, None), ("sequential", SEQ, None), ("fixed+CUPED", FIXED, w.pre_usage)):
        ours = compare_cells(w.member_usage, alloc, w.experiments, cfg, pre_usage=pre).sort("service")
        diffs = np.zeros(4)
        for row in ours.iter_rows(named=True):
            s = row["service"]
            full = alloc.join(use.filter(pl.col("service") == s).drop("service"), on="member_id", how="left").join(
                w.pre_usage.filter(pl.col("service") == s).select("member_id", "pre_requests"), on="member_id", how="left").fill_null(0.0)
            y = {c: full.filter(pl.col("cell") == c)["requests"].to_numpy() for c in ("control", "treatment")}
            x = {c: full.filter(pl.col("cell") == c)["pre_requests"].to_numpy() for c in ("control", "treatment")}
            sm = lambda v: SampleMeanStatistic(n=v.size, sum=v.sum(), sum_squares=(v**2).sum())  # noqa: E731
            a, b = sm(y["control"]), sm(y["treatment"])
            if pre is not None:
                ra = lambda c: RegressionAdjustedStatistic(n=y[c].size, post_statistic=sm(y[c]), pre_statistic=sm(x[c]),  # noqa: E731
                                                           post_pre_sum_of_products=float((x[c] * y[c]).sum()), theta=0)
                a, b = ra("control"), ra("treatment")
                a.theta = b.theta = compute_theta(a, b)
            test = (SequentialTwoSidedTTest(a, b, SequentialConfig(sequential_tuning_parameter=cfg.sequential_tuning_n))
                    if cfg.sequential else TwoSidedTTest(a, b, FrequentistConfig()))
            r = test.compute_result()
            diffs = np.maximum(diffs, [abs(row["delta"] - r.expected), abs(row["se"] - r.uplift.stddev),
                                       max(abs(row["ci_low"] - r.ci[0]), abs(row["ci_high"] - r.ci[1])),
                                       abs(row["p_value"] - r.p_value)])
        ratio = ((ours["ci_high"] - ours["ci_low"]) / 2 / ours["se"]).mean()
        lines.append(f"| {name} | {diffs[0]:.1e} | {diffs[1]:.1e} | {diffs[2]:.1e} | {diffs[3]:.1e} | {ratio:.2f} |")
    lines += ["", "Widths: fixed-horizon half-width = t(0.975, Welch dof ~ 2,000) x se = 1.96 se; the always-valid "
              "sequential half-width at N = 2,500 members with tuning N = 5,000 is ~3.1 se, which is the price of "
              "being allowed to look every day. gbstats is the same formula, so the widths are identical."]


def main() -> None:
    t0 = time.time()
    lines = ["# Experiment statistics benchmark", "",
             "Generated by `bench/bench_stats.py` (simulator: `cost_attribution/attribution/stats_simulation.py`: "
             "negative-binomial member activity, per-member service taste, Poisson sampled spans, 1/p = 66.7 weights).", ""]
    power_table(lines)
    aa_table(lines)
    ratio_decomposition(lines)
    gbstats_comparison(lines)
    # speed: one call over many experiment x service pairs
    w = simulate_world(seed=500, n_experiments=300)
    t = time.time()
    res = compare_cells(w.member_usage, w.allocations, w.experiments)
    lines += ["", "## Speed", "", f"compare_cells on {w.allocations.height:,} allocated members, "
              f"{w.member_usage.height:,} usage rows -> {res.height:,} experiment x service rows: {time.time() - t:.2f} s "
              "(2 shared cores).", "", f"Total bench time {time.time() - t0:.0f} s."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
