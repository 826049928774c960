"""The decision pieces of the report (reporting/decision.py): MDE, readings, shares, cost per
business point, net value, static headroom against the capacity plan, plain flags."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from cost_attribution.reporting import decision


def test_mde_is_the_textbook_size_for_a_fixed_horizon_interval():
    se = 0.04
    z = norm.ppf(0.975)
    assert decision.mde(se, 0.1 - z * se, 0.1 + z * se) == pytest.approx((z + norm.ppf(0.8)) * se)
    # An always-valid interval is wider: the detectable size grows with it.
    assert decision.mde(se, 0.1 - 2 * z * se, 0.1 + 2 * z * se) > decision.mde(se, 0.1 - z * se, 0.1 + z * se)
    assert decision.mde(None, 0.0, 1.0) is None


def test_service_mdes_from_usage_deltas_rows():
    deltas = pl.DataFrame({
        "experiment_id": ["e"], "cell": ["t"], "service": ["s"], "se": [0.05], "ci_low": [-0.1], "ci_high": [0.1],
        "work_se": [0.1], "work_ci_low": [-0.2], "work_ci_high": [0.2], "n_treatment": [400], "n_control": [410],
    })
    out = decision.service_mdes(deltas)[("e", "t", "s")]
    assert out["mde_pct"] == pytest.approx((0.1 + norm.ppf(0.8) * 0.05) * 100, abs=1e-3)
    assert out["work_mde_pct"] == pytest.approx((0.2 + norm.ppf(0.8) * 0.1) * 100, abs=1e-3)
    assert (out["members_treatment"], out["members_control"]) == (400, 410)


def test_readings_say_what_the_interval_means():
    adds = decision.reading(5000.0, 3000.0, 7000.0, what="Cost")
    assert adds["verdict"] == "adds" and "likely between $3,000 and $7,000 more per 30 days" in adds["text"]
    saves = decision.reading(-2000.0, -4000.0, -500.0, what="Cost")
    assert saves["verdict"] == "saves" and "saves between $500 and $4,000" in saves["text"]
    unclear = decision.reading(400.0, -1600.0, 2500.0, what="Cost", detectable_usd=830.0, detectable_pct=13.9,
                               detectable_service="recs")
    assert unclear["verdict"] == "unclear"
    assert "indistinguishable from $0 at this traffic" in unclear["text"]
    assert "detectable from about 13.9% change in recs's load (about $830 per 30 days)" in unclear["text"]
    assert decision.reading(None, None, None, what="Cost")["verdict"] == "unknown"


def test_detectable_size_follows_the_widest_priced_service():
    services = [
        {"service": "narrow", "priced_on": "requests", "ci_low_usd_30d": -10.0, "ci_high_usd_30d": 10.0,
         "ci_low_pct": -5.0, "ci_high_pct": 5.0, "mde_pct": 7.0},
        {"service": "wide", "priced_on": "work", "ci_low_usd_30d": -400.0, "ci_high_usd_30d": 600.0,
         "work_ci_low_pct": -10.0, "work_ci_high_pct": 10.0, "work_mde_pct": 14.0},
    ]
    usd, pct, service = decision.detectable_size(services)
    assert service == "wide" and pct == 14.0
    assert usd == pytest.approx(14.0 * 1000.0 / 20.0)  # the service's own $ per % slope


def test_bill_shares_use_the_moved_services_and_the_whole_bill():
    services = [{"service": "a", "significant": True}, {"service": "b", "significant": False}]
    projections = pl.DataFrame({"service": ["a", "b"], "baseline_cost_usd_30d": [2000.0, 8000.0]})
    out = decision.bill_shares(services, 500.0, projections, 50_000.0)
    assert out["affected_services"] == ["a"] and out["affected_services_bill_usd_30d"] == 2000.0
    assert out["share_of_affected_services_pct"] == 25.0 and out["share_of_total_bill_pct"] == 1.0
    none_moved = decision.bill_shares([{"service": "b", "significant": False}], 500.0, projections, None)
    assert none_moved["share_of_affected_services_pct"] is None and none_moved["share_of_total_bill_pct"] is None


def test_net_value_and_its_probability_match_a_simulation():
    metric = {"metric": "streaming_hours", "delta_pct": 2.0, "ci_low_pct": 1.0, "ci_high_pct": 3.0}
    out = decision.metric_economics(metric, 1000.0, 500.0, 1500.0, value_per_point_usd=1000.0)
    assert out["cost_per_point_usd_30d"] == 500.0 and out["metric_clear"]
    assert out["net_value_usd_30d"] == 1000.0 and out["net_value_usd_year"] == pytest.approx(1000.0 * 365 / 30, abs=0.01)
    rng = np.random.default_rng(0)
    z = norm.ppf(0.975)
    gain = 1000.0 * rng.normal(2.0, 1.0 / z, 200_000)
    cost = rng.normal(1000.0, 500.0 / z, 200_000)
    assert out["p_net_positive"] == pytest.approx(float(np.mean(gain - cost > 0)), abs=0.005)
    unvalued = decision.metric_economics(metric, 1000.0, 500.0, 1500.0, value_per_point_usd=None)
    assert unvalued["net_value_usd_30d"] is None and unvalued["cost_per_point_usd_30d"] == 500.0


def _static_inputs(peak_after: float, delta: float):
    registry = pl.DataFrame({"service": ["auth"], "scaling": ["static"], "capacity_requests_per_hour": [150.0],
                             "observed_peak": [100.0], "driver": ["cpu_seconds"]})
    projections = pl.DataFrame({"service": ["auth"], "peak_requests_per_hour": [peak_after], "delta_used": [delta]})
    services = [{"service": "auth", "significant": True, "cost_model": "static",
                 "capacity": {"instances_needed": 15, "additional_instances": 5}}]
    return services, registry, projections


def test_static_headroom_explains_the_capacity_plan():
    services, registry, projections = _static_inputs(120.0, 0.2)
    (entry,) = decision.static_headroom(services, registry, projections, pl.DataFrame())
    assert entry["headroom_today_pct"] == 50.0 and entry["headroom_rollout_pct"] == 25.0
    assert not entry["crosses_tipping_point"]
    text = entry["explanation"]
    assert "150 CPU-seconds/h" in text and "still under the tipping point" in text
    assert "10 -> 15 instances" in text and "floor" in text  # the plan's +5 is reconciled, not contradicted
    services, registry, projections = _static_inputs(180.0, 0.8)
    (crossing,) = decision.static_headroom(services, registry, projections, pl.DataFrame())
    assert crossing["crosses_tipping_point"] and "past the tipping point" in crossing["explanation"]
    services[0]["significant"] = False
    assert decision.static_headroom(services, registry, projections, pl.DataFrame()) == []


def test_beyond_historical_peak_only_for_raised_curve_priced_services():
    registry = pl.DataFrame({"service": ["m", "h"], "scaling": ["autoscale"] * 2, "capacity_requests_per_hour": [None, None],
                             "observed_peak": [100.0, 100.0], "driver": ["requests", "requests"]})
    projections = pl.DataFrame({"service": ["m", "h"], "peak_requests_per_hour": [130.0, 130.0], "delta_used": [0.3, 0.3]})
    services = [{"service": "m", "significant": True, "cost_model": "ml"},
                {"service": "h", "significant": True, "cost_model": "heuristic"}]
    (flag,) = decision.peak_flags(services, registry, projections)
    assert flag["service"] == "m" and "30% above" in flag["detail"]


def test_plain_flags_name_the_owner_and_overview_counts_verdicts():
    flags = [{"kind": "deprecated_dependency", "service": "legacy", "detail": "+900%"},
             {"kind": "sample_ratio_mismatch", "service": None, "detail": "p=1e-9"}]
    out = decision.plain_flags(flags, {"legacy": "team-legacy"}, "growth")
    assert out[0]["owner"] == "team-legacy" and "legacy" in out[0]["text"] and out[0]["title"]
    assert out[1]["owner"] == "growth"
    cells = [{"decision": {"cost_reading": {"verdict": v}}} for v in ("adds", "adds", "unclear", "saves")]
    assert decision.overview(cells) == ("4 experiment cells: 2 clearly add cost; 1 clearly saves money; "
                                        "1 cannot be told from $0 at this traffic yet.")
