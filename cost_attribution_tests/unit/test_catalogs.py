"""Landing-zone tables: typed, dirty rows quarantined with a reason, nothing lost."""

import gzip
import json
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


def _allocation_catalog(conn) -> None:
    experiments = catalogs.parse_experiments({"experiments": [
        {"id": "exp", "control_cell": "control", "cells": ["control", "treatment"], "start": "2026-05-28"}]})
    conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
    conn.execute("CREATE TABLE raw.experiments AS SELECT * FROM experiments")


ALLOCATIONS_HEADER = "member_id,experiment_id,cell,allocated_at\n"


def test_allocations_written_in_the_warehouse_every_reason_once(tmp_path):
    """ingest_allocations (the asset's path): every reason, in precedence order, the
    earliest of a repeated allocation kept, ragged lines and skipped files quarantined,
    and a second run replaces rather than appends."""
    path = _write(
        tmp_path / "allocations" / "a.csv",
        ALLOCATIONS_HEADER
        + "m1,exp,control,2026-05-20T01:00:00+02:00\n"  # the UTC day: 2026-05-19
        "m2,exp,treatment,2026-05-21T00:00:00+02:00\n"  # kept: the earliest of m2's three rows
        "m2,exp,treatment,2026-05-20T23:00:00Z\n"
        "m2,exp,treatment,2026-05-19T12:00:00Z\n"
        "m3,exp,control,2026-05-20T00:00:00Z\n"
        "m3,exp,treatment,2026-05-21T00:00:00Z\n"
        ",exp,control,2026-05-20T00:00:00Z\n"           # missing fields beat every other reason
        "m4,other,bogus,yesterday\n"                    # bad time beats unknown experiment and cell
        "m5,other,control,1970-01-01T00:00:00Z\n"       # out of range beats unknown experiment
        "m6,other,control,2026-05-20T00:00:00Z\n"
        "m7,exp,bogus,2026-05-20T00:00:00Z\n"
        "m8,exp,control,1999-12-31T00:00:00Z\n"         # an earlier quarantined row does not make
        "m8,exp,bogus,2026-05-01T00:00:00Z\n"           # m8's valid row a duplicate, nor a conflict
        "m8,exp,control,2026-05-20T00:00:00Z\n"
        "m9,exp,control,2026-05-20T00:00:00Z,extra\n",  # ragged
    )
    skipped = pl.DataFrame([{"source": "allocations", "source_file": "x.bin", "reason": "unread_files",
                             "detail": "not a table", "raw": ""}], schema=catalogs.INPUT_QUARANTINE_SCHEMA)
    with duckdb.connect() as conn:
        _allocation_catalog(conn)
        conn.execute("CREATE TABLE raw.input_quarantine (source VARCHAR, source_file VARCHAR, reason VARCHAR, "
                     "detail VARCHAR, raw VARCHAR)")
        conn.execute("INSERT INTO raw.input_quarantine VALUES ('costs', 'c.csv', 'bad_tags', NULL, '')")
        for _ in range(2):
            rows = catalogs.ingest_allocations(conn, [path], skipped)
        good = pl.from_arrow(conn.sql("SELECT * FROM raw.allocations ORDER BY member_id").arrow())
        bad = pl.from_arrow(conn.sql("SELECT * FROM raw.input_quarantine ORDER BY source, reason, raw").arrow())
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'allocations'").fetchall())
        leftovers = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall()[0][0]
    assert rows == 3 and good["member_id"].to_list() == ["m1", "m2", "m8"]
    assert str(good.row(0, named=True)["allocated_date"]) == "2026-05-19"
    m2 = good.row(1, named=True)
    assert str(m2["allocated_at"]) == "2026-05-19 12:00:00+00:00"
    assert m2["allocated_at_unix_nano"] == 1779192000 * 10**9 and str(m2["allocated_date"]) == "2026-05-19"
    assert types == {"experiment_id": "VARCHAR", "member_id": "VARCHAR", "cell": "VARCHAR",
                     "allocated_at": "TIMESTAMP WITH TIME ZONE", "allocated_at_unix_nano": "BIGINT",
                     "allocated_date": "DATE"}
    reasons = [(r["reason"], r["raw"]) for r in bad.filter(pl.col("source") == "allocations").iter_rows(named=True)]
    as_json = sorted((reason, json.loads(raw)["member_id"] if raw.startswith("{") else raw) for reason, raw in reasons)
    assert as_json == [
        ("bad_allocated_at", "m4"),
        ("conflicting_allocations", "m3"), ("conflicting_allocations", "m3"),
        ("duplicate_allocations", "m2"), ("duplicate_allocations", "m2"),
        ("missing_allocation_fields", None),
        ("ragged_rows", "m9,exp,control,2026-05-20T00:00:00Z,extra"),
        ("timestamp_out_of_range", "m5"), ("timestamp_out_of_range", "m8"),
        ("unknown_cell", "m7"), ("unknown_cell", "m8"),
        ("unknown_experiment", "m6"),
        ("unread_files", ""),
    ]
    m4 = bad.filter(pl.col("reason") == "bad_allocated_at").row(0, named=True)
    assert m4["raw"] == '{"member_id": "m4", "experiment_id": "other", "cell": "bogus", "raw_allocated_at": "yesterday"}'
    assert m4["detail"] == catalogs.REASON_DETAIL["bad_allocated_at"] and m4["source_file"] == str(path)
    assert bad.filter(pl.col("source") == "costs").height == 1  # another source's rows are left alone
    assert leftovers == 0


def test_allocations_from_parquet_and_from_nothing(tmp_path):
    path = tmp_path / "allocations" / "a.parquet"
    path.parent.mkdir()
    pl.DataFrame({"member_id": ["m1", "m2"], "experiment_id": ["exp", "exp"], "cell": ["control", "nope"],
                  "allocated_at": ["2026-05-20T00:00:00Z"] * 2}).write_parquet(path)
    with duckdb.connect() as conn:
        _allocation_catalog(conn)
        assert catalogs.ingest_allocations(conn, [path]) == 1
        assert conn.execute("SELECT reason FROM raw.input_quarantine").fetchall() == [("unknown_cell",)]
        assert catalogs.ingest_allocations(conn, []) == 0
        assert conn.execute("SELECT count(*) FROM raw.input_quarantine").fetchall() == [(0,)]
