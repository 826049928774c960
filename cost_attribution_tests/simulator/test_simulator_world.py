"""The simulator writes a contract-shaped landing zone whose files agree with its truth."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl
import pytest
import yaml

from cost_attribution.simulator import WorldConfig, generate_world, small_world_config
from cost_attribution_tests.simulator.world_files import generate_in, read_otlp_day, trace_files, valid_spans

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FLAT_COLUMNS = ["trace_id", "span_id", "parent_span_id", "service", "kind", "start_unix_nano",
                "end_unix_nano", "peer_service", "member_id", "sampling_probability"]
SAMPLE_FOCUS_HEADER = (
    "BillingAccountId,SubAccountId,BillingPeriodStart,BillingPeriodEnd,ChargePeriodStart,ChargePeriodEnd,"
    "ChargeCategory,ChargeDescription,ProviderName,PublisherName,InvoiceIssuerName,ServiceCategory,ServiceName,"
    "RegionId,ResourceId,ResourceType,SkuId,PricingQuantity,PricingUnit,ConsumedQuantity,ConsumedUnit,ListCost,"
    "BilledCost,EffectiveCost,BillingCurrency,Tags"
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- worlds, generated once per module ---

@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> tuple[Path, dict]:
    return generate_in(tmp_path_factory, "small", small_world_config())


@pytest.fixture(scope="module")
def default_world(tmp_path_factory) -> tuple[Path, dict, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("default")
    truth = generate_world(out, WorldConfig())
    spans = {}
    for day, paths in trace_files(out).items():
        spans[day] = valid_spans(read_otlp_day(paths[0])[0])
    return out, truth, spans


# --- tests ---

def test_small_world_has_every_landing_zone_file(small_world):
    world, truth = small_world
    for relative in ("allocations/allocations.csv", "experiments.yaml", "services.yaml",
                     "costs/focus_hourly.csv.gz", "usage_metrics/requests_hourly.csv",
                     "business_metrics/business_metrics.csv", "truth.json"):
        assert (world / relative).is_file(), relative
    assert sorted(trace_files(world)) == truth["trace_days"]
    assert json.loads((world / "truth.json").read_text()) == truth


def test_same_seed_same_bytes_other_seed_other_world(small_world, tmp_path):
    world, _ = small_world
    generate_world(tmp_path / "again", small_world_config())
    assert _digest(tmp_path / "again") == _digest(world)
    other = generate_world(tmp_path / "other", small_world_config(seed=4))
    assert _digest(tmp_path / "other")["allocations/allocations.csv"] != _digest(world)["allocations/allocations.csv"]
    assert other["n_spans"] != json.loads((world / "truth.json").read_text())["n_spans"]


def _key_structure(value):
    if isinstance(value, dict):
        return {k: _key_structure(v) for k, v in value.items()}
    return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"


def _contains_structure(ours, sample) -> bool:
    if isinstance(sample, dict):
        return isinstance(ours, dict) and all(k in ours and _contains_structure(ours[k], v) for k, v in sample.items())
    return ours == sample


def test_truth_has_the_sample_worlds_structure(small_world):
    _, truth = small_world
    sample = json.loads((FIXTURES / "sample_truth.json").read_text())
    ours = _key_structure(truth)
    # Top level and bad_input: the sample's keys all present with the same types (extras allowed).
    assert _contains_structure({k: ours[k] for k in ours if k != "experiments"},
                               {k: v for k, v in _key_structure(sample).items() if k != "experiments"})
    # Per experiment and per service: exactly the sample's keys.
    sample_exp = next(iter(sample["experiments"].values()))
    sample_svc = next(iter(sample_exp["services"].values()))
    for key, exp in truth["experiments"].items():
        assert key.endswith(":treatment")
        assert set(exp) == set(sample_exp)
        assert set(exp["services"]) == set(truth["baseline_cost_usd_30d"])
        for svc in exp["services"].values():
            assert _key_structure(svc) == _key_structure(sample_svc)
    assert truth["population_scale"] > 0


def test_dirty_records_are_counted_in_truth_and_everything_else_parses(small_world):
    world, truth = small_world
    totals = Counter()
    for day, paths in trace_files(world).items():
        records, malformed = read_otlp_day(paths[0])
        keys = Counter((r["trace"], r["span"]) for r in records)
        totals["malformed_lines"] += malformed
        totals["duplicate_spans"] += sum(n - 1 for n in keys.values())
        totals["negative_duration_spans"] += sum(r["end"] < r["start"] for r in records)
        totals["missing_service_name_spans"] += sum(r["service"] is None for r in records)
        valid = valid_spans(records)
        totals["valid"] += len(valid)
        assert len(valid) == truth["n_spans_by_day"][day]
    assert totals["valid"] == truth["n_spans"]
    for reason, count in truth["bad_input"].items():
        assert count == len(truth["trace_days"]), reason  # one of each per day file
        assert totals[reason] == count, reason


def test_sampled_volume_times_population_scale_matches_usage_metrics(default_world):
    world, truth, spans = default_world
    usage = pl.read_csv(world / "usage_metrics" / "requests_hourly.csv")
    moved = {svc for exp in truth["experiments"].values()
             for svc, s in exp["services"].items() if abs(s["delta"]) > 0.05}
    checked = 0
    for day, day_spans in spans.items():
        metrics = dict(usage.filter(pl.col("hour").str.starts_with(day))
                       .group_by("service").agg(pl.col("requests").sum()).iter_rows())
        adjusted = Counter()
        for span in day_spans:
            if span["kind"] == 2:
                adjusted[span["service"]] += 1.0 / span["p"]
        for service in ("api-gateway", "images-svc", "cdn-origin"):
            assert service not in moved
            ratio = adjusted[service] * truth["population_scale"] / metrics[service]
            assert abs(ratio - 1) < 0.05, (day, service, ratio)
            checked += 1
    assert checked == 3 * len(spans)


def test_treatment_moves_calls_per_root_request_as_truth_says(default_world):
    world, truth, spans = default_world
    allocations = pl.read_csv(world / "allocations" / "allocations.csv")
    prefetch = dict(allocations.filter(pl.col("experiment_id") == "smarter-prefetch")
                    .select("member_id", "cell").iter_rows())
    per_cell = defaultdict(Counter)
    for day_spans in spans.values():
        member_of = {s["trace"]: s["member"] for s in day_spans if s["member"]}
        for span in day_spans:
            cell = prefetch.get(member_of.get(span["trace"]))
            if cell and span["kind"] == 2:
                per_cell[cell][span["service"]] += 1.0 / span["p"]
    # Moved services are well measured; untouched ones only within their Poisson noise
    # (a few hundred sampled spans per cell), which still rules out a +40% leak.
    for service, tolerance in (("metadata-svc", 0.07), ("recs-svc", 0.07), ("auth-svc", 0.05), ("search-svc", 0.15)):
        per_root = {c: per_cell[c][service] / per_cell[c]["api-gateway"] for c in ("control", "treatment")}
        expected = 1 + truth["experiments"]["smarter-prefetch:treatment"]["services"][service]["delta"]
        assert per_root["treatment"] / per_root["control"] == pytest.approx(expected, abs=tolerance), service


def test_broken_edge_callee_spans_carry_no_member(default_world):
    _, truth, spans = default_world
    assert truth["broken_propagation"] == ["images-svc->cdn-origin"]
    for day_spans in spans.values():
        member_traces = {s["trace"] for s in day_spans if s["member"]}
        cdn_servers = [s for s in day_spans if s["service"] == "cdn-origin" and s["kind"] == 2]
        calls_to_cdn = [s for s in day_spans if s["peer"] == "cdn-origin"]
        assert cdn_servers and calls_to_cdn
        assert all(s["parent"] == "" and s["trace"] not in member_traces and s["member"] is None
                   for s in cdn_servers)
        # The caller's side stays attributed: its CLIENT spans live in member traces.
        assert all(s["service"] == "images-svc" and s["trace"] in member_traces for s in calls_to_cdn)


def test_sampling_conventions_mix_in_one_file_and_are_per_trace(default_world):
    _, truth, spans = default_world
    day_spans = next(iter(spans.values()))
    conventions = Counter("attribute" if s["has_p_attr"] else "tracestate" if s["tracestate"] else "none"
                          for s in day_spans)
    assert set(conventions) == {"attribute", "tracestate", "none"}
    p_by_trace = defaultdict(set)
    for s in day_spans:
        p_by_trace[s["trace"]].add(s["p"])
        if s["member"] is not None:
            assert s["kind"] == 2 and s["parent"] == ""  # enduser.id only on the root SERVER span
    assert all(len(ps) == 1 for ps in p_by_trace.values())
    mobile = truth["samplers"]["mobile"]
    assert mobile["tracestate"].startswith("ot=th:") and len(mobile["tracestate"]) <= 6 + 14
    assert mobile["probability"] == pytest.approx(0.01, rel=1e-9)
    assert {round(p, 6) for ps in p_by_trace.values() for p in ps} == {0.015, 0.01, 1.0, 0.02}


def test_focus_costs_follow_the_true_instance_model(default_world):
    world, truth, _ = default_world
    with gzip.open(world / "costs" / "focus_hourly.csv.gz", "rt") as fh:
        assert fh.readline().strip() == SAMPLE_FOCUS_HEADER
    focus = pl.read_csv(world / "costs" / "focus_hourly.csv.gz")
    usage = pl.read_csv(world / "usage_metrics" / "requests_hourly.csv")
    app = pl.col("Tags").str.json_path_match("$.app")
    tagged = focus.filter(app.is_not_null()).with_columns(service=app)
    unattributable = focus.filter(app.is_null())["EffectiveCost"].sum()
    assert unattributable == pytest.approx(truth["unattributable_cost_usd"], abs=0.01)
    assert focus.filter(pl.col("ChargeCategory") == "Credit")["EffectiveCost"].max() < 0
    instances = tagged.group_by("service", "ChargePeriodStart").agg(n=pl.len(), sku=pl.col("SkuId").first())
    joined = instances.join(usage, left_on=["service", "ChargePeriodStart"], right_on=["service", "hour"])
    assert joined.height == usage.height
    last_day = truth["last_trace_day"]
    for service, model in truth["services"].items():
        current = joined.filter((pl.col("service") == service) & pl.col("ChargePeriodStart").str.starts_with(last_day))
        assert set(current["sku"]) == {model["sku"]}
        if model["scaling"] == "static":
            expected = [model["static_instances"]] * current.height
        else:
            expected = [max(model["min_instances"], math.ceil(r / model["capacity_per_instance_hour"]))
                        for r in current["requests"]]
        assert current.sort("ChargePeriodStart")["n"].to_list() == [
            e for _, e in sorted(zip(current["ChargePeriodStart"], expected))], service
    # Without drift, the bill over the history is the truth's baseline (up to price jitter).
    for service, baseline in truth["baseline_cost_usd_30d"].items():
        if service not in truth["drifted_services"]:
            billed = tagged.filter(pl.col("service") == service)["EffectiveCost"].sum() * 30 / 28
            assert billed == pytest.approx(baseline, rel=0.002), service
    drifted = truth["services"][truth["drifted_services"][0]]
    assert drifted["previous_sku"] != drifted["sku"]
    assert set(tagged.filter(pl.col("service") == truth["drifted_services"][0])["SkuId"]) == {
        drifted["previous_sku"], drifted["sku"]}


def test_truth_costs_static_zero_and_deprecated_expensive(default_world):
    _, truth, _ = default_world
    exps = truth["experiments"]
    assert exps["smarter-prefetch:treatment"]["services"]["metadata-svc"]["delta"] == pytest.approx(0.4)
    assert exps["smarter-prefetch:treatment"]["services"]["recs-svc"]["incremental_cost_usd_30d"] > 0
    login = exps["login-refresh:treatment"]["services"]["auth-svc"]
    assert login["delta"] == pytest.approx(0.5) and login["incremental_cost_usd_30d"] == 0.0
    assert truth["static_services"] == ["auth-svc"]
    assert exps["ratings-badge:treatment"]["services"]["legacy-ratings"]["delta"] == pytest.approx(7.5)
    assert exps["ratings-badge:treatment"]["incremental_cost_usd_30d"] > 0
    assert all(s["delta"] == 0 for s in exps["aa-calibration:treatment"]["services"].values())
    new_dep = exps["search-personalization:treatment"]["services"]
    assert [svc for svc, s in new_dep.items() if s["new_dependency"]] == ["profile-svc"]
    assert truth["new_dependency_edges"]["search-personalization:treatment"] == ["search-svc->profile-svc"]


def test_catalogs_and_allocations_precede_the_experiments(small_world):
    world, truth = small_world
    experiments = yaml.safe_load((world / "experiments.yaml").read_text())["experiments"]
    assert {e["id"] for e in experiments} == {k.split(":")[0] for k in truth["experiments"]}
    assert all(str(e["start"]) == truth["experiment_start"] for e in experiments)
    assert truth["trace_start"] < truth["experiment_start"]  # small world has a pre-period day
    services = yaml.safe_load((world / "services.yaml").read_text())["services"]
    assert [s["name"] for s in services if s["deprecated"]] == truth["deprecated_services"]
    allocations = pl.read_csv(world / "allocations" / "allocations.csv")
    assert allocations["allocated_at"].max() < truth["trace_start"]
    assert allocations.group_by("member_id").len()["len"].mean() > 1.5
    assert set(allocations["cell"]) == {"control", "treatment"}
    business = pl.read_csv(world / "business_metrics" / "business_metrics.csv")
    assert (business["ci_low_pct"] <= business["delta_pct"]).all()


def test_parquet_only_and_mixed_formats_hold_every_span_once(tmp_path):
    base = dataclasses.replace(small_world_config(), trace_days=1, pre_period_days=0, history_days=7)
    parquet_truth = generate_world(tmp_path / "pq", dataclasses.replace(base, span_formats=("parquet",)))
    files = list((tmp_path / "pq").glob("traces/dt=*/*"))
    assert files and all(p.suffix == ".parquet" for p in files)
    flat = pl.concat([pl.read_parquet(p) for p in files])
    assert flat.columns == FLAT_COLUMNS
    assert parquet_truth["bad_input"]["malformed_lines"] == 0
    assert flat.height == parquet_truth["n_spans"] + sum(parquet_truth["bad_input"].values())
    assert flat.filter(pl.col("member_id").is_not_null())["parent_span_id"].null_count() == \
        flat["member_id"].drop_nulls().len()

    mixed = dataclasses.replace(base, span_formats=("otlp_json", "parquet"))
    mixed_truth = generate_world(tmp_path / "mixed", mixed)
    day_dir = next((tmp_path / "mixed" / "traces").iterdir())
    from_parquet = pl.read_parquet(next(day_dir.glob("*.parquet")))
    from_json = valid_spans(read_otlp_day(next(day_dir.glob("*.json.gz")))[0])
    parquet_keys = set(zip(from_parquet["trace_id"], from_parquet["span_id"]))
    json_keys = {(s["trace"], s["span"]) for s in from_json}
    assert parquet_keys and json_keys and not parquet_keys & json_keys
    assert len(parquet_keys) + len(json_keys) == mixed_truth["n_spans"]


def test_target_spans_per_day_scales_activity_not_production(tmp_path):
    config = dataclasses.replace(small_world_config(), n_members=300, trace_days=1, pre_period_days=0,
                                 history_days=7, target_spans_per_day=20_000, dirty_records=False)
    truth = generate_world(tmp_path / "scaled", config)
    assert truth["n_spans"] == pytest.approx(20_000, rel=0.15)
    reference = generate_world(tmp_path / "reference", dataclasses.replace(config, target_spans_per_day=5_000))
    assert truth["population_scale"] == pytest.approx(reference["population_scale"] / 4, rel=0.01)
    assert truth["baseline_cost_usd_30d"] == reference["baseline_cost_usd_30d"]


def test_original_world_is_unchanged_by_the_live_features(small_world):
    """small_world_config() (live=False) keeps the numbers it had before live worlds existed:
    the demo, benchmarks and every pinned expectation downstream depend on them."""
    _, truth = small_world
    assert truth["n_spans"] == 14427
    assert {k: v["incremental_cost_usd_30d"] for k, v in truth["experiments"].items()} == {
        "smarter-prefetch:treatment": 5112.52, "aa-calibration:treatment": 0.0, "login-refresh:treatment": 0.0,
        "ratings-badge:treatment": 2046.79, "search-personalization:treatment": 396.75}
    assert truth["baseline_cost_usd_30d"]["legacy-ratings"] == 294.17
    assert "treated_share" not in truth and "bill_change_usd_30d" not in truth["experiments"]["ratings-badge:treatment"]
