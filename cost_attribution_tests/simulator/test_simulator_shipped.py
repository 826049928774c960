"""Shipped cells in the simulator: from the ship date every member gets the cell, usage
metrics and the bill follow, and truth.json's realized change is re-derived from the files."""

from __future__ import annotations

import dataclasses
import datetime

import polars as pl
import pytest
import yaml

from cost_attribution.simulator import ShipSpec, generate_world, shipped_world_config
from cost_attribution_tests.simulator.world_files import read_otlp_day, trace_files, valid_spans


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    config = dataclasses.replace(shipped_world_config(3, small=True), target_spans_per_day=3_000)
    root = tmp_path_factory.mktemp("shipped")
    return root, generate_world(root, config), config


def test_experiments_yaml_names_the_shipped_cells(shipped):
    root, truth, _ = shipped
    catalog = yaml.safe_load((root / "experiments.yaml").read_text())
    ships = {e["id"]: e["shipped"] for e in catalog["experiments"] if "shipped" in e}
    assert ships == {
        "smarter-prefetch": {"cell": "treatment", "date": datetime.date(2026, 10, 29)},
        "hd-images": {"cell": "hd", "date": datetime.date(2026, 10, 29)},
        "search-personalization": {"cell": "treatment", "date": datetime.date(2026, 10, 30)},
    }
    assert set(truth["shipped"]) == {f"{e}:{s['cell']}" for e, s in ships.items()}


def test_after_shipping_the_cell_serves_everyone(shipped):
    _, truth, _ = shipped
    shares = truth["treated_share"]["hd-images"]
    assert shares["hd"]["daily"]["2026-10-29"] == 1.0 and shares["control"]["daily"]["2026-10-29"] == 0.0
    assert shares["hd"]["daily"]["2026-10-28"] < 0.7


def test_after_shipping_traces_of_control_members_take_the_shipped_path(shipped):
    """search-personalization's new edge search -> profile: before its ship date only treated
    members' traces use it; from the ship date a control member's traces do too."""
    root, _, _ = shipped
    alloc = pl.read_csv(root / "allocations" / "allocations.csv").filter(
        (pl.col("experiment_id") == "search-personalization") & (pl.col("cell") == "control"))
    control = set(alloc["member_id"].to_list())

    def control_members_calling_profile_from_search(day: str) -> int:
        spans = [s for path in trace_files(root)[day] for s in valid_spans(read_otlp_day(path)[0])]
        by_trace = {}
        for s in spans:
            by_trace.setdefault(s["trace"], []).append(s)
        hits = 0
        for trace in by_trace.values():
            member = next((s.get("member") for s in trace if s.get("member")), None)
            if member in control and any(s["service"] == "search-svc" and s.get("peer") == "profile-svc" for s in trace):
                hits += 1
        return hits

    assert control_members_calling_profile_from_search("2026-10-29") == 0
    assert control_members_calling_profile_from_search("2026-10-31") > 0


def test_truth_realized_change_reflects_the_cost_structure_change(shipped):
    _, truth, _ = shipped
    hd = truth["shipped"]["hd-images:hd"]
    prefetch = truth["shipped"]["smarter-prefetch:treatment"]
    search = truth["shipped"]["search-personalization:treatment"]
    # images-svc needs 1/0.7 the instances after shipping: the change is far above the pre-ship truth.
    assert hd["realized_change_usd_30d"] > 1.8 * hd["incremental_cost_usd_30d_pre_ship"] > 0
    # metadata-svc moved to 25% more capacity: the cell realizes less than the pre-ship truth.
    assert 0 < prefetch["realized_change_usd_30d"] < 0.8 * prefetch["incremental_cost_usd_30d_pre_ship"]
    # No structure change: close to the pre-ship truth (load growth and weekday mix aside).
    assert search["realized_change_usd_30d"] == pytest.approx(search["incremental_cost_usd_30d_pre_ship"], rel=0.25)
    assert search["post_ship_hours"] == 48 and hd["post_ship_hours"] == 72


def test_a_shipped_cell_must_be_a_treatment_cell_after_the_start():
    config = shipped_world_config(3, small=True)
    bad = tuple(dataclasses.replace(e, shipped=ShipSpec("control", 2)) if e.id == "hd-images" else e
                for e in config.experiments)
    with pytest.raises(ValueError, match="treatment cells"):
        generate_world("/nonexistent", dataclasses.replace(config, experiments=bad))
    twice = tuple(dataclasses.replace(e, shipped=ShipSpec("hd", 2, (("recs-svc", 0.9),))) if e.id == "hd-images" else e
                  for e in config.experiments)
    with pytest.raises(ValueError, match="once"):
        generate_world("/nonexistent", dataclasses.replace(config, experiments=twice,
                                                            drift=dataclasses.replace(config.drift, service="recs-svc")))
