"""The run's memory budget: what each DuckDB gets, and that the warehouse and dbt use it."""

from __future__ import annotations

import logging

import duckdb
import pytest

from cost_attribution import environment
from cost_attribution.memory import (
    DBT_PROCESS_RESERVE,
    IN_PROCESS_RESERVE,
    MIN_DUCKDB_SHARE,
    MemoryBudget,
    parse_size,
    resident_bytes,
)
from cost_attribution.resources import WarehouseResource

GB, MB = 10**9, 10**6


@pytest.mark.parametrize("text, n", [("2GB", 2 * GB), ("1500MB", 1500 * MB), ("1.5GiB", int(1.5 * 2**30)),
                                     (" 800 mb ", 800 * MB), ("123", 123)])
def test_sizes_are_read_as_duckdb_writes_them(text, n):
    assert parse_size(text, "X") == n


def test_a_size_that_is_not_one_names_the_variable_and_the_fix():
    with pytest.raises(ValueError, match=r"COST_ATTRIBUTION_MEMORY_BUDGET='two gigs': not a size\. Fix: .*2GB"):
        parse_size("two gigs", environment.MEMORY_BUDGET_ENV)


def test_duckdb_gets_what_the_budget_leaves_up_to_the_cap(caplog):
    budget = MemoryBudget(budget=2 * GB, duckdb_cap=1 * GB)
    # 30M-span day: the Dagster process holds 0.85 GB when dbt starts.
    assert budget.duckdb_share(DBT_PROCESS_RESERVE, held=850 * MB) == 700 * MB
    # A fresh process: the cap binds.
    assert budget.duckdb_share(IN_PROCESS_RESERVE, held=300 * MB) == 1 * GB
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert budget.duckdb_share(DBT_PROCESS_RESERVE, held=1900 * MB) == MIN_DUCKDB_SHARE
    assert "Fix: raise COST_ATTRIBUTION_MEMORY_BUDGET" in caplog.text


def test_resident_bytes_follows_this_process():
    """In a process of its own: a test worker that ran the pipeline frees memory from other
    threads while this one allocates, and then its resident size barely moves."""
    import subprocess
    import sys

    grown = subprocess.run([sys.executable, "-c", """
from cost_attribution.memory import resident_bytes
before = resident_bytes()
block = bytearray(200 * 10**6)
block[::4096] = b"x" * len(block[::4096])  # touch every page
print(resident_bytes() - before)
"""], capture_output=True, text=True, check=True).stdout
    assert int(grown) > 150 * MB


def test_warehouse_connections_take_their_share(tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "w.duckdb"), connection_config={"memory_limit": "1GB"},
                                  memory_budget="2GB")
    expected = warehouse.budget().duckdb_share(IN_PROCESS_RESERVE)
    with warehouse.get_connection() as conn:
        limit = conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    # DuckDB shows the limit in binary units, rounded: compare through a connection of its own.
    # The share is the budget less the process's resident memory when the connection opens,
    # which moves by a page or so between that reading and `expected`'s: a few MB either way.
    reference = duckdb.connect()
    reference.execute("SET memory_limit = ?", [f"{expected // MB}MB"])
    shown = reference.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert abs(parse_size(limit, "memory_limit") - parse_size(shown, "memory_limit")) <= 4 * MB, (limit, shown)
    tight = WarehouseResource(database=str(tmp_path / "w.duckdb"), connection_config={"memory_limit": "1GB"},
                              memory_budget=f"{(resident_bytes() + IN_PROCESS_RESERVE + 400 * MB) // MB}MB")
    with tight.get_connection() as conn:
        tight_limit = conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    # What the budget leaves (~400 MB), not the 1GB cap.
    assert 300 * MB < parse_size(tight_limit, "memory_limit") < 500 * MB


def test_dbt_starts_with_the_share_the_budget_leaves_beside_this_process(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    from cost_attribution.attribution.dbt_assets import _dbt_memory_limit

    monkeypatch.setenv(environment.MEMORY_LIMIT_ENV, "1GB")
    seen = []
    context = SimpleNamespace(log=SimpleNamespace(info=seen.append))
    warehouse = WarehouseResource(database=str(tmp_path / "w.duckdb"), connection_config={"memory_limit": "1GB"},
                                  memory_budget=f"{(resident_bytes() + DBT_PROCESS_RESERVE + 600 * MB) // MB}MB")
    with _dbt_memory_limit(context, warehouse):
        during = os.environ[environment.MEMORY_LIMIT_ENV]
    assert 500 * MB < parse_size(during, "dbt") < 700 * MB
    assert os.environ[environment.MEMORY_LIMIT_ENV] == "1GB"
    assert during in seen[0]


def test_a_window_is_cut_into_whole_days_of_at_most_the_spans_one_dbt_build_holds():
    import datetime as dt

    from cost_attribution.attribution.dbt_assets import day_batches

    d = [dt.date(2026, 5, 1) + dt.timedelta(days=i) for i in range(6)]
    spans = {d[0]: 10, d[1]: 10, d[2]: 25, d[3]: 5, d[5]: 5}  # d[4]: no spans
    assert day_batches(d[0], d[5] + dt.timedelta(days=1), spans, limit=100) == [(d[0], d[5] + dt.timedelta(days=1))]
    assert day_batches(d[0], d[5] + dt.timedelta(days=1), spans, limit=20) == [
        (d[0], d[2]), (d[2], d[3]), (d[3], d[5] + dt.timedelta(days=1))]  # a day over the limit alone
    assert day_batches(d[0], d[1], {}, limit=1) == [(d[0], d[1])]
