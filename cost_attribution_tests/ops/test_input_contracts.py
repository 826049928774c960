"""Great Expectations input contracts: clean tables pass, dirty ones fail naming the
broken expectation, the column and the unexpected count - directly and as Dagster
asset checks on the ingest assets."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from cost_attribution.checks.input_contracts import (
    CONTRACT_CHUNK_ROWS,
    CONTRACTS,
    build_input_contract_checks,
    evaluate_contract,
    table_chunks,
    unique_key,
)
from cost_attribution.ingest.assets import experiments, services
from cost_attribution.resources import LandingZone
from cost_attribution.warehouse import replace_rows

CONTRACT = {c.asset: c for c in CONTRACTS}
UTC = dt.timezone.utc
H0 = dt.datetime(2026, 10, 30, 0, tzinfo=UTC)


def _failures(asset: str, tables: dict[str, pl.DataFrame], chunk_rows: int = CONTRACT_CHUNK_ROWS) -> tuple[bool, list[dict]]:
    with duckdb.connect() as conn:
        for table, frame in tables.items():
            replace_rows(conn, table, frame)
        result = evaluate_contract(CONTRACT[asset], conn, chunk_rows)
    return result.passed, result.metadata["failed_expectations"].value


def _usage(**override) -> pl.DataFrame:
    columns = {
        "hour": [H0, H0, H0 + dt.timedelta(hours=1)],
        "service": ["api-gateway", "images-svc", "api-gateway"],
        "requests": [1200.0, 300.0, 1100.0],
    }
    return pl.DataFrame({**columns, **override})


def _focus(**override) -> pl.DataFrame:
    columns = {
        "source_file": ["f.csv"] * 3,
        "charge_period_start": [H0] * 3,
        "charge_period_end": [H0 + dt.timedelta(hours=1)] * 3,
        "charge_category": ["Usage", "Credit", "Tax"],
        "provider_service": ["EC2"] * 3,
        "resource_id": ["i-1", None, None],
        "sku_id": ["m5.large", None, None],
        "billed_cost": [1.5, -0.5, 0.1],
        "effective_cost": [1.2, -0.5, 0.1],
        "billing_currency": ["USD"] * 3,
        "app": ["api-gateway", None, None],
    }
    return pl.DataFrame({**columns, **override})


def test_clean_usage_and_costs_pass():
    assert _failures("usage_metrics", {"raw.usage_metrics": _usage()}) == (True, [])
    assert _failures("focus_costs", {"raw.focus_costs": _focus()}) == (True, [])


def test_duplicate_hour_service_and_negative_requests_fail_by_name():
    dirty = _usage(hour=[H0, H0, H0], service=["api-gateway", "api-gateway", "x"], requests=[5.0, 6.0, -1.0])
    passed, failures = _failures("usage_metrics", {"raw.usage_metrics": dirty})
    assert not passed
    by_name = {f["expectation"]: f for f in failures}
    assert set(by_name) == {"expect_compound_columns_to_be_unique", "expect_column_values_to_be_between"}
    assert by_name["expect_compound_columns_to_be_unique"]["column"] == ["hour", "service"]
    assert by_name["expect_compound_columns_to_be_unique"]["unexpected_count"] == 2
    assert by_name["expect_column_values_to_be_between"]["column"] == "requests"
    assert by_name["expect_column_values_to_be_between"]["unexpected_count"] == 1


def test_unknown_charge_category_and_inverted_period_fail():
    dirty = _focus(
        charge_category=["Usage", "Refund", "Tax"],
        charge_period_end=[H0 + dt.timedelta(hours=1), H0 - dt.timedelta(hours=1), H0 + dt.timedelta(hours=1)],
    )
    passed, failures = _failures("focus_costs", {"raw.focus_costs": dirty})
    assert not passed
    names = {(f["expectation"], str(f["column"])) for f in failures}
    assert ("expect_column_values_to_be_in_set", "charge_category") in names
    assert ("expect_column_pair_values_a_to_be_greater_than_b", "['charge_period_end', 'charge_period_start']") in names
    in_set = next(f for f in failures if f["expectation"] == "expect_column_values_to_be_in_set")
    assert in_set["unexpected_count"] == 1 and in_set["unexpected_sample"] == ["Refund"]


def _experiments() -> pl.DataFrame:
    return pl.DataFrame({"experiment_id": ["exp-a"], "name": ["a"], "control_cell": ["control"],
                         "cells": ["control,treatment"], "start_date": [dt.date(2026, 10, 1)],
                         "owner": [None]}, schema_overrides={"owner": pl.Utf8})


def _many_allocations(n: int, **override) -> pl.DataFrame:
    columns = {
        "experiment_id": ["exp-a"] * n,
        "member_id": [f"m{i}" for i in range(n)],
        "cell": ["control", "treatment"] * (n // 2),
        "allocated_at": [H0 + dt.timedelta(minutes=i) for i in range(n)],
        "allocated_at_unix_nano": list(range(n)),
    }
    return pl.DataFrame({**columns, **override})


def test_a_duplicate_key_far_apart_shares_a_chunk_and_is_caught():
    """The first and the last of 60 rows repeat one key; with chunks of at most 10 rows
    the table is validated in several chunks, and the duplicate still fails uniqueness."""
    members = [f"m{i}" for i in range(59)] + ["m0"]
    tables = {"raw.experiments": _experiments(), "raw.allocations": _many_allocations(60, member_id=members)}
    with duckdb.connect() as conn:
        for table, frame in tables.items():
            replace_rows(conn, table, frame)
        key = unique_key("allocations", CONTRACT["allocations"].expectations(conn))
        chunks = list(table_chunks(conn, "raw.allocations", 60, key, chunk_rows=10))
    assert key == ["experiment_id", "member_id"]
    assert len(chunks) >= 6 and max(c.height for c in chunks) <= 10 and sum(c.height for c in chunks) == 60
    assert sum(c.filter(pl.col("member_id") == "m0").height == 2 for c in chunks) == 1  # both rows in one chunk
    passed, failures = _failures("allocations", tables, chunk_rows=10)
    assert not passed
    assert [(f["expectation"], f["column"], f["unexpected_count"]) for f in failures] == [
        ("expect_compound_columns_to_be_unique", ["experiment_id", "member_id"], 2)]


def _dirty_tables(asset: str) -> dict[str, pl.DataFrame]:
    n = 40
    if asset == "allocations":
        return {"raw.experiments": _experiments(), "raw.allocations": _many_allocations(
            n, experiment_id=["exp-a"] * 30 + ["exp-zzz"] * 5 + ["exp-a"] * 5,
            member_id=[f"m{i % 38}" for i in range(n)],
            allocated_at=[dt.datetime(1970, 1, 1, tzinfo=UTC) if i % 13 == 0 else H0 for i in range(n)])}
    if asset == "usage_metrics":
        return {"raw.usage_metrics": pl.DataFrame({
            "hour": [H0 + dt.timedelta(hours=i % 38) for i in range(n)],
            "service": ["api", "images"] * (n // 2),
            "requests": [-1.0 if i % 9 == 0 else float(i) for i in range(n)]})}
    rows = pl.concat([_focus()] * (n // 3))
    return {"raw.focus_costs": rows.with_columns(
        charge_category=pl.Series(["Refund" if i % 10 == 1 else "Usage" for i in range(rows.height)]),
        charge_period_end=pl.Series([H0 - dt.timedelta(hours=1) if i % 12 == 5 else H0 + dt.timedelta(hours=1)
                                     for i in range(rows.height)]))}


@pytest.mark.parametrize("asset", ["allocations", "usage_metrics", "focus_costs"])
def test_chunks_give_the_one_chunk_result(asset):
    """Dirty tables (duplicate keys, values out of set and range) checked whole and in
    chunks of at most 7 rows: the same failures, counts and observed values; the samples
    are the same values (in chunk order rather than table order)."""
    tables = _dirty_tables(asset)
    whole = _failures(asset, tables)
    chunked = _failures(asset, tables, chunk_rows=7)
    assert not whole[0] and not chunked[0]

    def comparable(failures):
        return [{**f, "unexpected_sample": sorted(map(str, f["unexpected_sample"]))} for f in failures]

    assert all(f["unexpected_count"] <= 5 for f in whole[1])  # so that the samples are every value
    assert comparable(chunked[1]) == comparable(whole[1])


def test_uniqueness_on_disjoint_keys_cannot_be_chunked():
    with pytest.raises(ValueError, match="share no column"):
        unique_key("x", [("ExpectColumnValuesToBeUnique", {"column": "a"}),
                         ("ExpectCompoundColumnsToBeUnique", {"column_list": ["b", "c"]})])
    assert unique_key("x", [("ExpectColumnValuesToBeUnique", {"column": "a"}),
                            ("ExpectCompoundColumnsToBeUnique", {"column_list": ["b", "a"]})]) == ["a"]


# 1970: compared vectorized (datetime64[ns]); years 1 and 2999 are outside that dtype's
# range and are still reported (the column keeps its dtype).
@pytest.mark.parametrize("bad_time", [dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(1, 1, 1, tzinfo=UTC),
                                      dt.datetime(2999, 1, 1, tzinfo=UTC)])
def test_allocations_to_unknown_experiments_and_epoch_timestamps_fail(bad_time):
    experiments_frame = pl.DataFrame({"experiment_id": ["exp-a"], "name": ["a"], "control_cell": ["control"],
                                      "cells": ["control,treatment"], "start_date": [dt.date(2026, 10, 1)],
                                      "owner": [None]}, schema_overrides={"owner": pl.Utf8})
    allocations = pl.DataFrame({
        "experiment_id": ["exp-a", "exp-a", "exp-zzz"],
        "member_id": ["m1", "m2", "m3"],
        "cell": ["control", "treatment", "control"],
        "allocated_at": [H0, bad_time, H0],
        "allocated_at_unix_nano": [0, 0, 0],
    })
    passed, failures = _failures("allocations", {"raw.experiments": experiments_frame, "raw.allocations": allocations})
    assert not passed
    assert {(f["expectation"], f["column"], f["unexpected_count"]) for f in failures} == {
        ("expect_column_values_to_be_in_set", "experiment_id", 1),
        ("expect_column_values_to_be_between", "allocated_at", 1),
    }


@pytest.mark.parametrize("single_cell", [False, True])
def test_asset_check_on_the_ingest_asset(tmp_path, single_cell):
    """Through Dagster: materialize experiments + services from a landing zone and run
    their contract checks. An experiment with only a control cell is refused by the
    catalog schema already, with the line it is on."""
    cells = ["control"] if single_cell else ["control", "treatment"]
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [
        {"id": "exp-a", "control_cell": "control", "cells": cells, "start": "2026-10-01"},
        {"id": "exp-b", "control_cell": "control", "cells": ["control", "treatment"], "start": "2026-10-01"},
    ]}))
    (tmp_path / "services.yaml").write_text(yaml.safe_dump({"services": [
        {"name": "api-gateway", "owner": "team-api", "tier": 1}, {"name": "images-svc", "tier": 2}]}))
    checks = [c for c in build_input_contract_checks() if {k.asset_key.path[0] for k in c.check_keys} & {"experiments", "services"}]
    result = dg.materialize(
        [experiments, services, *checks],
        resources={"landing": LandingZone(root=str(tmp_path)),
                   "warehouse": DuckDBResource(database=str(tmp_path / "w.duckdb"))},
        raise_on_error=False,
    )
    evaluations = {e.asset_key.path[0]: e for e in result.get_asset_check_evaluations()}
    assert evaluations["services"].passed
    if single_cell:
        assert set(evaluations) == {"services"}
        failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "experiments")
        assert "experiments.yaml line 2: experiment 'exp-a': cells: List should have at least 2 items" in (
            failure.event_specific_data.error.cause.message)
    else:
        assert set(evaluations) == {"experiments", "services"}
        assert evaluations["experiments"].passed
        assert evaluations["experiments"].metadata["failed_expectations"].value == []


def _big_dirty_tables(asset: str) -> dict[str, pl.DataFrame]:
    """300 rows, a few of them bad in every way an expectation looks at (and some at the
    edge of a range, which are fine)."""
    n = 300
    if asset == "allocations":
        return {"raw.experiments": _experiments(), "raw.allocations": _many_allocations(
            n, experiment_id=["exp-zzz" if i % 97 == 3 else None if i == 150 else "exp-a" for i in range(n)],
            member_id=[f"m{i % 290}" if i < 295 else None for i in range(n)],
            cell=[None if i == 7 else "control" for i in range(n)],
            allocated_at=[dt.datetime(1999, 12, 31, 23, tzinfo=UTC) if i == 11
                          else dt.datetime(2000, 1, 1, 0, 30, tzinfo=UTC) if i == 12
                          else dt.datetime(2999, 1, 1, tzinfo=UTC) if i == 13
                          else None if i == 14 else H0 for i in range(n)])}
    return {"raw.usage_metrics": pl.DataFrame({
        "hour": [None if i == 5 else dt.datetime(1970, 1, 1, tzinfo=UTC) if i == 6
                 else H0 + dt.timedelta(hours=i % 280) for i in range(n)],
        "service": ["api"] * n,
        "requests": [float("nan") if i == 20 else float("inf") if i == 21 else -1.0 if i == 22
                     else None if i == 23 else 0.0 if i % 50 == 0 else float(i) for i in range(n)]})}


@pytest.mark.parametrize("asset", ["allocations", "usage_metrics"])
def test_a_big_table_is_judged_on_its_suspect_rows_with_the_whole_tables_counts(asset, monkeypatch):
    """Above chunk_rows, SQL picks out every row an expectation could fail on and GE reads
    only those (and a sample): the same failures, counts and observed values as GE reading
    every row."""
    import cost_attribution.checks.input_contracts as contracts

    monkeypatch.setattr(contracts, "SUSPECT_SAMPLE_ROWS", 5)
    tables = _big_dirty_tables(asset)
    with duckdb.connect() as conn:
        for table, frame in tables.items():
            replace_rows(conn, table, frame)
        whole = evaluate_contract(CONTRACT[asset], conn, chunk_rows=1000)
        narrowed = evaluate_contract(CONTRACT[asset], conn, chunk_rows=50)
        leftover = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                                [contracts.SUSPECTS_TABLE]).fetchall()[0][0]
    assert whole.metadata["rows_read_by_great_expectations"].value == 300
    assert 5 < narrowed.metadata["rows_read_by_great_expectations"].value < 60
    assert leftover == 0
    assert not whole.passed and not narrowed.passed

    def comparable(result):
        return [{k: v for k, v in f.items() if k != "unexpected_sample"} for f in result.metadata["failed_expectations"].value]

    assert len(comparable(whole)) >= 3
    assert comparable(narrowed) == comparable(whole)


def test_a_contract_with_a_regex_reads_every_row():
    """No SQL for a regex that means the same as Python's: focus_costs is read whole."""
    tables = _dirty_tables("focus_costs")
    with duckdb.connect() as conn:
        for table, frame in tables.items():
            replace_rows(conn, table, frame)
        result = evaluate_contract(CONTRACT["focus_costs"], conn, chunk_rows=7)
    assert result.metadata["rows_read_by_great_expectations"].value == result.metadata["rows"].value


def test_an_expectation_judged_on_a_share_of_the_rows_needs_every_row(monkeypatch):
    """`mostly` (pass when that share of rows passes) is judged over the rows GE reads: with
    it, no narrowing. Without it, the suspects of not-null on requests are its null, NaN and
    infinite values (3 rows), beside the sample."""
    import cost_attribution.checks.input_contracts as contracts

    monkeypatch.setattr(contracts, "SUSPECT_SAMPLE_ROWS", 5)
    with duckdb.connect() as conn:
        replace_rows(conn, "raw.usage_metrics", _big_dirty_tables("usage_metrics")["raw.usage_metrics"])
        columns = ["hour", "service", "requests"]
        not_null = ("ExpectColumnValuesToNotBeNull", {"column": "requests"})
        assert contracts.suspect_rows(conn, "raw.usage_metrics", [not_null], columns) == 3 + 5
        mostly = ("ExpectColumnValuesToNotBeNull", {"column": "requests", "mostly": 0.9})
        assert contracts.suspect_rows(conn, "raw.usage_metrics", [mostly], columns) is None
