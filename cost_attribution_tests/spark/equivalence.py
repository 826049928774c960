"""Row-for-row comparison of two tables, used by the Spark equivalence tests."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl


def read_spark_table(table_dir: Path) -> pl.DataFrame:
    """A table Spark wrote (Parquet partitioned by dt=) read straight from its files."""
    files = sorted(str(f) for f in table_dir.glob("dt=*/*.parquet"))
    assert files, f"{table_dir}: Spark wrote no partitions"
    with duckdb.connect() as conn:
        return pl.from_arrow(
            conn.sql(
                "SELECT * FROM read_parquet(?, hive_partitioning = true, hive_types = {'dt': 'DATE'})", params=[files]
            ).to_arrow_table()
        )


def read_duckdb_table(warehouse: Path, table: str) -> pl.DataFrame:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return pl.from_arrow(conn.sql(f"SELECT * FROM {table}").to_arrow_table())


def _is_whole_number(dtype: pl.DataType) -> bool:
    return dtype.is_integer() or (isinstance(dtype, pl.Decimal) and dtype.scale == 0)


def _normalised(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    # Integer widths differ by engine (DuckDB sums BIGINT into HUGEINT, which arrives
    # as Decimal(38, 0); Spark sums into BIGINT): compare the values, not the widths.
    return frame.select(
        pl.col(c).cast(pl.Int64, strict=True) if _is_whole_number(frame.schema[c]) else pl.col(c) for c in columns
    )


def assert_tables_equal(name: str, expected: pl.DataFrame, actual: pl.DataFrame, rel: float = 1e-9) -> None:
    """Same columns (any order), same rows (any order); floats within `rel` relative."""
    assert sorted(expected.columns) == sorted(actual.columns), f"{name}: columns {expected.columns} != {actual.columns}"
    columns = expected.columns
    expected, actual = _normalised(expected, columns), _normalised(actual, columns)
    assert expected.height == actual.height, f"{name}: {expected.height} rows expected, {actual.height} found"
    floats = [c for c in columns if expected.schema[c].is_float()]
    keys = [c for c in columns if c not in floats]
    for c in keys:
        assert expected.schema[c] == actual.schema[c], f"{name}.{c}: {expected.schema[c]} != {actual.schema[c]}"
    order = keys + floats
    expected = expected.sort(order, nulls_last=True)
    actual = actual.sort(order, nulls_last=True)
    mismatched = expected.select(keys).with_row_index().join(
        actual.select(keys).with_row_index(), on=["index", *keys], how="anti", nulls_equal=True
    )
    assert mismatched.is_empty(), f"{name}: {mismatched.height} rows differ, e.g.\n{mismatched.head(5)}"
    for c in floats:
        np.testing.assert_allclose(
            actual[c].to_numpy(), expected[c].to_numpy(), rtol=rel, atol=0, equal_nan=True, err_msg=f"{name}.{c}"
        )


def assert_json_equal(expected, actual, rel: float = 1e-9, path: str = "$") -> None:
    """Structural equality of two JSON documents, floats within `rel` relative."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(expected) == sorted(actual), f"{path}: keys differ"
        for key in expected:
            assert_json_equal(expected[key], actual[key], rel, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), f"{path}: lengths differ"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_json_equal(e, a, rel, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, (int, float)), f"{path}: {expected!r} != {actual!r}"
        assert abs(actual - expected) <= rel * max(abs(expected), abs(actual)), f"{path}: {expected!r} != {actual!r}"
    else:
        assert expected == actual, f"{path}: {expected!r} != {actual!r}"
