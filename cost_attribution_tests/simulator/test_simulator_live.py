"""Live worlds (production as it really is): files agree with truth, truth agrees with itself.

Every check re-derives its number from the landing-zone files with code of its own
(allocations, usage metrics, FOCUS rows, OTLP spans) and compares it with truth.json.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from cost_attribution.simulator import (
    CellSpec, ExperimentSpec, WorldConfig, generate_world, live_world_config, small_live_world_config)
from cost_attribution_tests.simulator.world_files import generate_in, read_otlp_day, trace_files, valid_spans

ISO = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture(scope="module")
def live_world(tmp_path_factory) -> tuple[Path, dict]:
    return generate_in(tmp_path_factory, "small-live", small_live_world_config())


@pytest.fixture(scope="module")
def live_spans(live_world) -> dict[str, list[dict]]:
    world, _ = live_world
    return {day: [s for path in paths for s in valid_spans(read_otlp_day(path)[0])]
            for day, paths in trace_files(world).items()}


@pytest.fixture(scope="module")
def allocations(live_world) -> pl.DataFrame:
    world, _ = live_world
    return pl.read_csv(world / "allocations" / "allocations.csv").with_columns(
        at=pl.col("allocated_at").str.to_datetime(ISO, time_zone="UTC"))


def _usage(world: Path) -> pl.DataFrame:
    return pl.read_csv(world / "usage_metrics" / "requests_hourly.csv").sort("hour", "service")


def _per_service(usage: pl.DataFrame, service: str, column: str) -> np.ndarray:
    return usage.filter(pl.col("service") == service)[column].to_numpy().astype(float)


def _cost(model: dict, load: np.ndarray) -> float:
    """The truth's current instance model applied to an hourly load in its driver's unit."""
    if model["scaling"] == "static":
        return model["static_instances"] * len(load) * model["effective_price_per_hour"]
    instances = np.maximum(model["min_instances"], np.ceil(load / model["capacity_per_instance_hour"]))
    return float(instances.sum() * model["effective_price_per_hour"])


def _ns(moment: datetime.datetime) -> int:
    return int(moment.timestamp()) * 10**9


# --- generation ---

def test_small_live_world_is_reproducible(live_world, tmp_path):
    world, truth = live_world
    again = generate_world(tmp_path / "again", small_live_world_config())
    assert again == truth
    assert (tmp_path / "again" / "usage_metrics" / "requests_hourly.csv").read_bytes() == \
        (world / "usage_metrics" / "requests_hourly.csv").read_bytes()
    # 2 trace days + 1 pre-period day of about 5k spans each.
    assert len(truth["trace_days"]) == 3 and all(3_000 < n < 8_000 for n in truth["n_spans_by_day"].values())


def test_live_world_config_is_demo_sized_and_turns_every_feature_on():
    config, small = live_world_config(), small_live_world_config()
    assert config.live and small.live and config.n_members == WorldConfig().n_members
    assert config.pre_period_days >= 1 and small.pre_period_days >= 1
    assert config.drift is not None and config.broken_edges and config.dirty_records
    kinds = {exp.kind for exp in config.experiments}
    assert kinds == {"ab", "aa"}
    assert any(len(exp.treatment_cells) >= 2 for exp in config.experiments)
    assert any(cell.work_multipliers for exp in config.experiments for cell in exp.treatment_cells)
    assert any(not exp.even_weights for exp in config.experiments)
    assert config.internal_spans_per_server > 0  # real traffic's INTERNAL spans, which the method never counts


# --- catalogs and allocations ---

def test_experiments_yaml_has_cells_weights_kind_and_starts(live_world, allocations):
    world, truth = live_world
    experiments = {e["id"]: e for e in yaml.safe_load((world / "experiments.yaml").read_text())["experiments"]}
    assert experiments["ratings-badge"]["cells"] == ["control", "badge", "badge-large"]
    assert "weights" not in experiments["ratings-badge"]
    assert experiments["smarter-prefetch"]["weights"] == [0.4, 0.6]
    assert experiments["aa-calibration"]["kind"] == "aa"
    assert experiments["hd-images"]["cells"] == ["control", "hd"]
    first_trace_day = datetime.date.fromisoformat(truth["trace_start"])
    # Started five weeks before the end: long before the traces; hd-images inside the window.
    assert (first_trace_day - experiments["smarter-prefetch"]["start"]).days > 14
    assert first_trace_day < experiments["hd-images"]["start"] <= datetime.date.fromisoformat(truth["last_trace_day"])
    assert 0 < (first_trace_day - experiments["ratings-badge"]["start"]).days <= 5
    for exp_id, exp in experiments.items():
        rows = allocations.filter(pl.col("experiment_id") == exp_id)
        assert set(rows["cell"]) == set(exp["cells"]), exp_id
        assert rows["at"].min().date() >= exp["start"], exp_id
        assert rows["at"].max().date() <= datetime.date.fromisoformat(truth["last_trace_day"]), exp_id
    # Each cell entry of the truth names an allocated, non-control cell.
    cells = {tuple(key.split(":")) for key in truth["experiments"]}
    assert ("ratings-badge", "badge") in cells and ("ratings-badge", "badge-large") in cells
    assert all(cell != experiments[exp]["control_cell"] for exp, cell in cells)


def test_allocation_respects_the_intended_weights():
    # A world only big enough to count cells: weights are multinomial, not 50/50.
    config = dataclasses.replace(small_live_world_config(), n_members=20_000)
    from cost_attribution.simulator.population import build_population
    from cost_attribution.simulator.sampling import build_samplers
    population = build_population(config, build_samplers(config))
    for x, exp in enumerate(config.experiments):
        codes = population.cells[:, x]
        counts = np.bincount(codes[codes >= 0], minlength=len(exp.cell_names))
        n = counts.sum()
        for count, weight in zip(counts, exp.cell_weights):
            assert abs(count - n * weight) < 4 * math.sqrt(n * weight * (1 - weight)), (exp.id, counts)
    prefetch = [e.id for e in config.experiments].index("smarter-prefetch")
    codes = population.cells[:, prefetch]
    assert np.mean(codes[codes >= 0] == 1) == pytest.approx(0.6, abs=0.02)


def test_ramp_allocates_members_over_time(allocations, live_world):
    _, truth = live_world
    config = small_live_world_config()
    prefetch = next(e for e in config.experiments if e.id == "smarter-prefetch")
    start = datetime.datetime.combine(config.start_of(prefetch), datetime.time(), datetime.timezone.utc)
    days = (allocations.filter(pl.col("experiment_id") == "smarter-prefetch")["at"]
            .map_elements(lambda t: (t - start).total_seconds() / 86_400, return_dtype=pl.Float64).to_numpy())
    allocated_final = len(days) / (config.n_members * prefetch.allocation_fraction)
    # Steps: 30% of the final allocation on day 1, flat to day 14, 75% by day 15, climbing after.
    assert np.mean(days <= 1.0) * allocated_final == pytest.approx(0.3, abs=0.08)
    assert not np.any((days > 1.0) & (days < 14.0))
    assert 0.75 < allocated_final < 1.0  # partial ramp: not everyone is in yet
    # Members' traces before their allocation are pre-period data: some exist.
    assert truth["treated_share"]["hd-images"]["hd"]["daily"][truth["trace_start"]] == 0.0


# --- spans: nesting, work, pre-period ---

def _server_durations(day_spans: list[dict]) -> list[tuple[dict, int]]:
    """Each SERVER span with its duration: the work of the request (the contract)."""
    return [(span, span["end"] - span["start"]) for span in day_spans if span["kind"] == 2]


def test_spans_nest_client_in_server_and_callee_in_client(live_spans):
    checked = 0
    for day_spans in live_spans.values():
        by_id = {(s["trace"], s["span"]): s for s in day_spans}
        for span in day_spans:
            parent = by_id.get((span["trace"], span["parent"]))
            if parent is None:
                continue
            # A CLIENT lies inside its SERVER (same service); a callee's SERVER starts inside the call.
            assert parent["start"] <= span["start"]
            if span["kind"] == 3:
                assert span["end"] <= parent["end"]
                assert parent["kind"] == 2 and parent["service"] == span["service"]
            else:
                assert span["start"] <= parent["end"]
                assert parent["kind"] == 3 and parent["peer"] == span["service"]
            checked += 1
    assert checked > 5_000


def _trace_cells(day_spans: list[dict], allocations: pl.DataFrame, experiment: str) -> dict[str, str]:
    """trace -> the member's cell if the trace started at or after its allocation, else 'pre'."""
    rows = allocations.filter(pl.col("experiment_id") == experiment)
    cell_of = {m: (c, _ns(t)) for m, c, t in rows.select("member_id", "cell", "at").iter_rows()}
    out = {}
    for span in day_spans:
        if span["member"] in cell_of:
            cell, since = cell_of[span["member"]]
            out[span["trace"]] = cell if span["start"] >= since else "pre"
    return out


def test_duration_ratio_is_the_work_multiplier_and_pre_period_is_untreated(live_spans, allocations, live_world):
    _, truth = live_world
    base = truth["services"]["images-svc"]["cpu_seconds_per_request"] * 1e9
    self_times = defaultdict(list)
    for day_spans in live_spans.values():
        cells = _trace_cells(day_spans, allocations, "hd-images")
        for span, self_ns in _server_durations(day_spans):
            if span["service"] == "images-svc" and span["trace"] in cells:
                self_times[cells[span["trace"]]].append(self_ns)
    means = {cell: np.mean(v) for cell, v in self_times.items()}
    assert min(len(v) for v in self_times.values()) > 50, {c: len(v) for c, v in self_times.items()}
    assert means["hd"] / means["control"] == pytest.approx(1.6, abs=0.15)
    assert means["control"] / base == pytest.approx(1.0, abs=0.1)
    assert means["pre"] / means["control"] == pytest.approx(1.0, abs=0.15)
    work = truth["experiments"]["hd-images:hd"]["services"]["images-svc"]
    assert work["delta"] == 0 and work["work_delta"] == pytest.approx(0.6)


def test_server_duration_is_the_base_work_however_many_calls(live_spans, live_world):
    _, truth = live_world
    for service in ("api-gateway", "recs-svc", "cdn-origin"):
        self_ns = [t for day in live_spans.values() for span, t in _server_durations(day)
                   if span["service"] == service]
        expected = truth["services"][service]["cpu_seconds_per_request"] * 1e9
        assert np.mean(self_ns) == pytest.approx(expected, rel=0.08), service


def _calls_per_root(live_spans: dict, allocations: pl.DataFrame, experiment: str, callee: str) -> dict:
    counts = defaultdict(lambda: [0.0, 0.0])
    for day_spans in live_spans.values():
        cells = _trace_cells(day_spans, allocations, experiment)
        for span in day_spans:
            cell = cells.get(span["trace"])
            if cell and span["kind"] == 2:
                counts[cell][0] += span["service"] == "api-gateway"
                counts[cell][1] += span["service"] == callee
    return {cell: (calls / roots, roots) for cell, (roots, calls) in counts.items()}


def test_treatment_acts_only_from_allocated_at(live_spans, allocations):
    metadata = _calls_per_root(live_spans, allocations, "smarter-prefetch", "metadata-svc")
    assert metadata["treatment"][0] / metadata["control"][0] == pytest.approx(1.4, abs=0.1)
    # ratings-badge's cells call legacy-ratings 8.5x and 16x the base 0.03 per root request; it
    # ramps through the trace window, so its members' earlier traces are untreated pre-period.
    legacy = _calls_per_root(live_spans, allocations, "ratings-badge", "legacy-ratings")
    assert legacy["badge"][0] == pytest.approx(0.03 * 8.5, rel=0.3)
    assert legacy["badge-large"][0] == pytest.approx(0.03 * 16, rel=0.3)
    assert legacy["control"][0] < 0.1
    assert legacy["pre"][1] > 30 and legacy["pre"][0] < 0.1


# --- production: treated share, usage metrics, costs ---

def test_treated_share_from_allocations_and_activity_matches_truth(tmp_path):
    """Share of the last day's load, re-derived from allocations x members' measured activity."""
    config = dataclasses.replace(small_live_world_config(), trace_days=1, pre_period_days=0, history_days=7,
                                 target_spans_per_day=60_000, dirty_records=False, span_formats=("parquet",))
    truth = generate_world(tmp_path, config)
    spans = pl.concat([pl.read_parquet(p) for p in tmp_path.glob("traces/dt=*/*.parquet")])
    activity = (spans.filter(pl.col("member_id").is_not_null())
                .group_by("member_id").agg(activity=(1 / pl.col("sampling_probability")).sum()))
    total = activity["activity"].sum()
    day = datetime.datetime.fromisoformat(truth["last_trace_day"]).replace(tzinfo=datetime.timezone.utc)
    hours = [day + datetime.timedelta(hours=h) for h in range(24)]
    allocations = pl.read_csv(tmp_path / "allocations" / "allocations.csv").with_columns(
        at=pl.col("allocated_at").str.to_datetime(ISO, time_zone="UTC")).join(activity, on="member_id", how="left")
    compared = 0
    for (experiment, cell), rows in allocations.group_by("experiment_id", "cell"):
        # Each member counts for the part of each hour after its allocated_at.
        seconds = np.array([[(h + datetime.timedelta(hours=1) - t).total_seconds() for h in hours]
                            for t in rows["at"]])
        weight = rows["activity"].fill_null(0.0).to_numpy()
        estimate = float((weight @ np.clip(seconds / 3_600, 0, 1)).mean() / total)
        expected = truth["treated_share"][experiment][cell]["last_day"]
        assert estimate == pytest.approx(expected, abs=0.03 + 0.1 * expected), (experiment, cell)
        compared += 1
    assert compared == sum(len(cells) for cells in truth["treated_share"].values())


def test_usage_metrics_carry_each_hours_treated_share(live_world):
    world, truth = live_world
    usage = _usage(world)
    assert usage.columns == ["hour", "service", "requests", "cpu_seconds"]
    hd = np.array(truth["treated_share"]["hd-images"]["hd"]["hourly"])
    for service, model in truth["services"].items():
        requests = _per_service(usage, service, "requests")
        work = _per_service(usage, service, "cpu_seconds") / (requests * model["cpu_seconds_per_request"])
        # Only hd-images changes work per request: cpu = requests x base work x (1 + 0.6 s_hd(h)).
        expected = 1 + 0.6 * hd if service == "images-svc" else np.ones_like(hd)
        assert np.allclose(work, expected, rtol=1e-4, atol=0), service
    # legacy-ratings' volume follows both badge cells' shares: L = B (1 + 7.5 s_badge + 15 s_large).
    badge = truth["treated_share"]["ratings-badge"]
    factor = 1 + 7.5 * np.array(badge["badge"]["hourly"]) + 15 * np.array(badge["badge-large"]["hourly"])
    legacy = _per_service(usage, "legacy-ratings", "requests")
    gateway = _per_service(usage, "api-gateway", "requests")
    ratio = legacy / gateway / factor  # calls per root request with the treated share taken out
    assert ratio.std() / ratio.mean() < 0.03
    assert factor[-1] > 2 and factor[0] == 1.0


def test_autoscaled_fleets_follow_cpu(live_world):
    world, truth = live_world
    usage = _usage(world)
    focus = pl.read_csv(world / "costs" / "focus_hourly.csv.gz")
    app = pl.col("Tags").str.json_path_match("$.app")
    instances = (focus.filter(app.is_not_null()).with_columns(service=app)
                 .group_by("service", "ChargePeriodStart").agg(n=pl.len()))
    last_day = usage.filter(pl.col("hour").str.starts_with(truth["last_trace_day"])).join(
        instances, left_on=["service", "hour"], right_on=["service", "ChargePeriodStart"])
    for service, model in truth["services"].items():
        rows = last_day.filter(pl.col("service") == service)
        assert rows.height == 24
        if model["scaling"] == "static":
            assert model["driver"] == "requests" and set(rows["n"]) == {model["static_instances"]}
            continue
        assert model["driver"] == "cpu_seconds"
        expected = [max(model["min_instances"], math.ceil(c / model["capacity_per_instance_hour"]))
                    for c in rows["cpu_seconds"]]
        assert rows["n"].to_list() == expected, service
        if service != "images-svc":  # requests of base work: the same fleet as sizing on requests
            per_request = model["capacity_per_instance_hour"] / model["cpu_seconds_per_request"]
            by_requests = [max(model["min_instances"], math.ceil(r / per_request)) for r in rows["requests"]]
            assert np.mean(np.array(by_requests) == rows["n"].to_numpy()) > 0.95, service


def _truth_costs(world: Path, truth: dict, key: str, service: str) -> tuple[float, float]:
    """(incremental, bill) of one cell on one service, from the usage file and hourly shares."""
    model = truth["services"][service]
    load = _per_service(_usage(world), service, model["driver"])
    d_key = "work_delta" if model["driver"] == "cpu_seconds" else "delta"
    factors: dict[str, np.ndarray] = {}  # experiment -> 1 + sum over its cells of s_c(h) d_c
    for entry in truth["experiments"].values():
        share = np.array(truth["treated_share"][entry["experiment_id"]][entry["cell"]]["hourly"])
        factors[entry["experiment_id"]] = factors.get(entry["experiment_id"], 1.0) + \
            share * entry["services"][service][d_key]
    everyone_control = load / np.prod(list(factors.values()), axis=0)
    cell = truth["experiments"][key]
    d = cell["services"][service][d_key]
    to_30d = 30 / (truth["history_hours"] / 24)
    incremental = (_cost(model, everyone_control * (1 + d)) - _cost(model, everyone_control)) * to_30d
    bill = (_cost(model, load * (1 + d) / factors[cell["experiment_id"]]) - _cost(model, load)) * to_30d
    return incremental, bill


@pytest.mark.parametrize("key,service", [
    ("smarter-prefetch:treatment", "recs-svc"), ("smarter-prefetch:treatment", "metadata-svc"),
    ("ratings-badge:badge", "legacy-ratings"), ("ratings-badge:badge-large", "legacy-ratings"),
    ("hd-images:hd", "images-svc"), ("lean-recs:treatment", "recs-svc"),
    ("search-personalization:treatment", "profile-svc"),
])
def test_incremental_and_bill_follow_from_the_files(live_world, key, service):
    world, truth = live_world
    incremental, bill = _truth_costs(world, truth, key, service)
    entry = truth["experiments"][key]["services"][service]
    assert entry["incremental_cost_usd_30d"] == pytest.approx(incremental, rel=2e-3, abs=2.0)
    assert entry["bill_change_usd_30d"] == pytest.approx(bill, rel=2e-3, abs=2.0)


def test_truth_has_the_live_sample_worlds_keys(live_world):
    """Every key of the live sample world's truth.json (issue 15), extras allowed."""
    _, truth = live_world
    assert {"n_spans", "bad_input", "trace_start", "end_date", "experiments", "static_services",
            "drifted_services", "broken_propagation", "deprecated_services", "baseline_cost_usd_30d"} <= set(truth)
    for entry in truth["experiments"].values():
        assert {"incremental_cost_usd_30d", "bill_change_usd_30d", "services", "kind"} <= set(entry)
        assert set(entry["services"]) == set(truth["baseline_cost_usd_30d"])
        for service in entry["services"].values():
            assert set(service) == {"delta", "work_delta", "incremental_cost_usd_30d", "bill_change_usd_30d",
                                    "new_dependency"}


def test_truth_per_cell(live_world):
    _, truth = live_world
    exps = truth["experiments"]
    for key, entry in exps.items():
        assert key == f"{entry['experiment_id']}:{entry['cell']}"
        assert entry["incremental_cost_usd_30d"] == pytest.approx(
            sum(s["incremental_cost_usd_30d"] for s in entry["services"].values()), abs=0.05)
        assert entry["bill_change_usd_30d"] == pytest.approx(
            sum(s["bill_change_usd_30d"] for s in entry["services"].values()), abs=0.05)
        assert 0 < entry["treated_share"]["last_day"] < 1
    aa = exps["aa-calibration:treatment"]
    assert aa["kind"] == "aa" and aa["incremental_cost_usd_30d"] == 0 and aa["bill_change_usd_30d"] == 0
    login = exps["login-refresh:treatment"]  # static-only: auth-svc is provisioned for peak
    assert login["services"]["auth-svc"]["delta"] == pytest.approx(0.5)
    assert login["incremental_cost_usd_30d"] == 0 and login["bill_change_usd_30d"] == 0
    # A running test is already on the bill: shipping it changes the bill less than its cost.
    prefetch = exps["smarter-prefetch:treatment"]
    assert prefetch["weights"] == [0.4, 0.6]
    assert 0 < prefetch["bill_change_usd_30d"] < 0.85 * prefetch["incremental_cost_usd_30d"]
    assert exps["ratings-badge:badge-large"]["incremental_cost_usd_30d"] > \
        1.5 * exps["ratings-badge:badge"]["incremental_cost_usd_30d"] > 0
    assert exps["hd-images:hd"]["incremental_cost_usd_30d"] > 0
    savings = exps["lean-recs:treatment"]
    assert savings["services"]["recs-svc"]["delta"] == pytest.approx(-0.3)
    assert -0.08 < savings["services"]["metadata-svc"]["delta"] < -0.02
    assert savings["incremental_cost_usd_30d"] < 0 and savings["bill_change_usd_30d"] < 0
    personalized = exps["search-personalization:treatment"]["services"]
    assert [svc for svc, s in personalized.items() if s["new_dependency"]] == ["profile-svc"]
    assert truth["broken_propagation"] == ["images-svc->cdn-origin"] and truth["drifted_services"]
    assert sum(truth["bad_input"].values()) > 0


def test_bill_equals_incremental_without_a_treated_share(tmp_path):
    """An experiment nobody is allocated to yet: the bill is everyone-in-control, so both agree."""
    config = dataclasses.replace(
        small_live_world_config(), trace_days=1, pre_period_days=0, history_days=7, target_spans_per_day=2_000,
        experiments=(
            ExperimentSpec("pending", "Not yet allocated", start_days_before_end=0, allocation_fraction=0.0,
                           cells=(CellSpec("on", new_edges=(("search-svc", "profile-svc", 2.0),)),)),
            ExperimentSpec("running", "Running", start_days_before_end=5, allocation_fraction=0.9,
                           edge_multipliers=(("api-gateway", "recs-svc", 1.5),)),
        ))
    truth = generate_world(tmp_path, config)
    pending, running = truth["experiments"]["pending:on"], truth["experiments"]["running:treatment"]
    assert truth["treated_share"]["pending"]["on"]["mean_history"] == 0
    assert pending["incremental_cost_usd_30d"] > 0
    assert pending["bill_change_usd_30d"] == pending["incremental_cost_usd_30d"]
    assert running["treated_share"]["last_day"] > 0.3
    assert running["bill_change_usd_30d"] < running["incremental_cost_usd_30d"]


def test_aa_experiment_may_not_change_anything(tmp_path):
    config = dataclasses.replace(small_live_world_config(), experiments=(
        ExperimentSpec("aa", "A/A", kind="aa", start_days_before_end=3,
                       edge_multipliers=(("api-gateway", "recs-svc", 1.5),)),))
    with pytest.raises(ValueError, match="A/A"):
        generate_world(tmp_path, config)


def test_business_metrics_per_cell(live_world):
    world, _ = live_world
    business = pl.read_csv(world / "business_metrics" / "business_metrics.csv")
    badge = business.filter(pl.col("experiment_id") == "ratings-badge")
    assert sorted(badge["cell"]) == ["badge", "badge-large"]
    with gzip.open(world / "costs" / "focus_hourly.csv.gz", "rt") as fh:
        assert fh.readline().startswith("BillingAccountId,")
