"""Landing-zone tables: typed, dirty rows quarantined with a reason, nothing lost."""

import gzip
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cost_attribution.ingest import catalogs

FOCUS_HEADER = "ChargePeriodStart,ChargePeriodEnd,ChargeCategory,ServiceName,ResourceId,SkuId,BilledCost,EffectiveCost,BillingCurrency,Tags\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def test_focus_rows_keep_untagged_and_quarantine_unreadable(tmp_path):
    rows = [
        '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Usage,EC2,i-1,m7i,1.0,0.8,USD,"{""app"": ""api""}"',
        '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Usage,Support,,SUP,10,10,USD,',
        '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Credit,Credit,,CRED,-5,-5,USD,"{}"',
        'not-a-time,2026-05-04T01:00:00Z,Usage,EC2,i-2,m7i,1.0,0.8,USD,"{""app"": ""api""}"',
        '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Usage,EC2,i-3,m7i,1.0,abc,USD,"{""app"": ""api""}"',
        '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Usage,EC2,i-4,m7i,1.0,0.5,USD,"{not json"',
    ]
    path = _write(tmp_path / "costs" / "focus.csv.gz", FOCUS_HEADER + "\n".join(rows) + "\n")
    with duckdb.connect() as conn:
        good, bad = catalogs.load_focus_costs(conn, [path], "app")
    assert good.height == 3
    assert good.filter(pl.col("app") == "api")["effective_cost"].to_list() == [0.8]
    assert good.filter(pl.col("app").is_null())["effective_cost"].sum() == pytest.approx(5.0)
    assert sorted(bad["reason"].to_list()) == ["bad_charge_period", "bad_effective_cost", "bad_tags"]
    assert good.height + bad.height == len(rows)


def test_focus_missing_columns_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "costs" / "bad.csv", "a,b\n1,2\n")
    with duckdb.connect() as conn, pytest.raises(ValueError, match="lacks the columns"):
        catalogs.load_focus_costs(conn, [path], "app")


def test_the_app_tag_is_configurable(tmp_path):
    row = '2026-05-04T00:00:00Z,2026-05-04T01:00:00Z,Usage,EC2,i-1,m7i,1.0,0.8,USD,"{""service"": ""api"", ""app"": ""other""}"'
    path = _write(tmp_path / "costs" / "focus.csv", FOCUS_HEADER + row + "\n")
    with duckdb.connect() as conn:
        good, _ = catalogs.load_focus_costs(conn, [path], "service")
    assert good["app"].to_list() == ["api"]


def test_usage_metrics_duplicates_and_bad_counts(tmp_path):
    path = _write(
        tmp_path / "usage" / "u.csv",
        "hour,service,requests\n"
        "2026-05-04T00:00:00Z,api,100\n"
        "2026-05-04T00:00:00Z,api,100\n"
        "2026-05-04T01:00:00Z,api,-3\n"
        "2026-05-04T02:00:00Z,,5\n"
        "garbage,api,5\n"
        "2026-05-04T03:00:00Z,api,7\n",
    )
    with duckdb.connect() as conn:
        good, bad = catalogs.load_usage_metrics(conn, [path])
    assert good["requests"].to_list() == [100.0, 7.0]
    assert sorted(bad["reason"].to_list()) == ["bad_hour", "bad_request_count", "duplicate_metric_rows", "missing_service_name"]


def test_allocations_conflicts_unknowns_and_duplicates(tmp_path):
    experiments = catalogs.parse_experiments(
        {"experiments": [{"id": "exp", "control_cell": "control", "cells": ["control", "treatment"], "start": "2026-05-28"}]}
    )
    path = _write(
        tmp_path / "alloc" / "a.csv",
        "member_id,experiment_id,cell,allocated_at\n"
        "m1,exp,control,2026-05-20T00:00:00Z\n"
        "m2,exp,treatment,2026-05-20T00:00:00Z\n"
        "m2,exp,treatment,2026-05-21T00:00:00Z\n"
        "m3,exp,control,2026-05-20T00:00:00Z\n"
        "m3,exp,treatment,2026-05-20T00:00:00Z\n"
        "m4,other,control,2026-05-20T00:00:00Z\n"
        "m5,exp,bogus,2026-05-20T00:00:00Z\n"
        "m6,exp,control,yesterday\n",
    )
    with duckdb.connect() as conn:
        good, bad = catalogs.load_allocations(conn, [path], experiments)
    assert sorted(good["member_id"].to_list()) == ["m1", "m2"]
    assert good.filter(pl.col("member_id") == "m2")["allocated_at"].dt.day().to_list() == [20]
    assert good["allocated_at_unix_nano"][0] % 1_000_000_000 == 0
    reasons = sorted(bad["reason"].to_list())
    assert reasons == [
        "bad_allocated_at",
        "conflicting_allocations",
        "conflicting_allocations",
        "duplicate_allocations",
        "unknown_cell",
        "unknown_experiment",
    ]


def test_catalog_errors_are_clear():
    with pytest.raises(ValueError, match="line 2: experiment #1: id: Field required"):
        catalogs.parse_experiments({"experiments": [{"name": "x"}]})
    with pytest.raises(ValueError, match="control_cell"):
        catalogs.parse_experiments({"experiments": [{"id": "x", "control_cell": "c", "cells": ["a", "b"]}]})
    with pytest.raises(ValueError, match="line 3: experiment .x. is listed again .first at line 2."):
        catalogs.parse_experiments({"experiments": [{"id": "x"}, {"id": "x"}]})
    services = catalogs.parse_services({"services": [{"name": "a", "deprecated": True, "tier": 1}, {"name": "b"}]})
    assert services["deprecated"].to_list() == [True, False]


def test_experiment_contract_fields_weights_kind_shipped():
    text = """experiments:
  - id: ramp
    control_cell: control
    cells: [control, treatment]
    start: 2026-10-01T08:00:00Z
    weights: [3, 7]
    kind: ab
    shipped: {cell: treatment, date: 2026-10-20}
  - id: calibration
    cells: [control, treatment]
    kind: aa
"""
    frame = catalogs.parse_experiments(text)
    ramp, calibration = frame.iter_rows(named=True)
    assert ramp["weights"] == "[0.3, 0.7]" and ramp["kind"] == "ab"
    assert str(ramp["start_date"]) == "2026-10-01"
    assert (ramp["shipped_cell"], str(ramp["shipped_date"])) == ("treatment", "2026-10-20")
    assert calibration["weights"] is None and calibration["kind"] == "aa" and calibration["shipped_cell"] is None


@pytest.mark.parametrize(("entry", "message"), [
    ("weights: [1]", "weights has 1 numbers for 2 cells"),
    ("weights: [1, -1]", "weights.1: Input should be greater than or equal to 0"),
    ("weights: [0, 0]", "weights [0.0, 0.0] must have a positive sum"),
    ("kind: abc", "kind: Input should be 'ab' or 'aa'"),
    ("shipped: {cell: other, date: 2026-10-20}", "shipped.cell 'other' is not one of its cells"),
    ("shipped: {cell: control, date: 2026-10-20}", "shipped.cell 'control' is the control cell, not one of its treatment cells"),
    ("cells: [control, control]", "cells listed more than once: ['control']"),
])
def test_experiment_entry_errors_name_the_line(entry, message):
    text = f"experiments:\n  - id: x\n    cells: [control, treatment]\n    {entry}\n".replace(
        "    cells: [control, treatment]\n    cells:", "    cells:")
    with pytest.raises(catalogs.CatalogError, match=r"experiments.yaml line \d: experiment 'x': ") as error:
        catalogs.parse_experiments(text)
    assert message in str(error.value)


def test_service_booleans_are_read_not_truthy():
    text = 'services:\n  - name: a\n    deprecated: "false"\n  - name: b\n    deprecated: "yes"\n'
    assert catalogs.parse_services(text)["deprecated"].to_list() == [False, True]
    with pytest.raises(catalogs.CatalogError, match="line 3: service 'a': deprecated: Input should be a valid boolean"):
        catalogs.parse_services('services:\n  - name: a\n    deprecated: "maybe"\n')
