"""A warehouse built when member_service_usage / member_service_latency were tables (a
member's day once per experiment) keeps its history when they become views over the
per-member tables: attribution.member_rows moves it, and the views then give back every
row the old tables held."""

from __future__ import annotations

import shutil

import duckdb
import polars as pl
import pytest

from cost_attribution.attribution.member_rows import MEMBER_ROWS, move_member_history
from cost_attribution.warehouse import relation_type
from cost_attribution_tests.shift_left.synthetic_world import run_dbt

pytestmark = pytest.mark.timeout(600)


def _rows(conn: duckdb.DuckDBPyConnection, relation: str) -> pl.DataFrame:
    frame = pl.from_arrow(conn.sql(f"SELECT * FROM {relation}").to_arrow_table())
    return frame.sort(frame.columns)


@pytest.fixture(scope="module")
def old_warehouse(small_live_world_run, tmp_path_factory):
    """The small world's warehouse as the old models left it: the joined rows as tables,
    no per-member tables."""
    _, warehouse, _ = small_live_world_run
    work = tmp_path_factory.mktemp("old_member_tables")
    old = work / "old.duckdb"
    shutil.copyfile(warehouse, old)
    expected = {}
    with duckdb.connect(str(old)) as conn:
        for rows in MEMBER_ROWS:
            expected[rows.joined] = _rows(conn, rows.joined)
            conn.execute(f"CREATE TABLE _kept AS SELECT * FROM {rows.joined}")
            conn.execute(f"DROP VIEW {rows.joined}")
            conn.execute(f"ALTER TABLE _kept RENAME TO {rows.joined.split('.')[1]}")
            conn.execute(f"DROP TABLE {rows.member_days}")
            conn.execute(f"DROP TABLE {rows.same_days}")
    return work, old, expected


def test_the_old_rows_cover_what_the_move_must_handle(old_warehouse):
    # Otherwise the round trip below would prove little: members in several experiments,
    # allocation days split at allocated_at, and days before the allocation.
    _, old, _ = old_warehouse
    with duckdb.connect(str(old), read_only=True) as conn:
        [(multi, same_day, pre)] = conn.execute(
            """
            SELECT
                (SELECT count(*) FROM (SELECT dt, member_id FROM main.member_service_usage
                                       GROUP BY ALL HAVING count(DISTINCT experiment_id) > 1)),
                (SELECT count(*) FROM main.member_service_usage u JOIN raw.allocations a
                     USING (experiment_id, member_id) WHERE a.allocated_date = u.dt),
                (SELECT count(*) FROM main.member_service_usage WHERE period = 'pre')
            """
        ).fetchall()
    assert multi > 0 and same_day > 0 and pre > 0


def test_the_views_give_back_the_old_tables_rows(old_warehouse):
    work, old, expected = old_warehouse
    with duckdb.connect(str(old)) as conn:
        moved = move_member_history(conn)
        assert set(moved) == {rows.joined for rows in MEMBER_ROWS} and min(moved.values()) > 0
        assert move_member_history(conn) == {}  # once only
    # dbt replaces the old tables by the views (as the next daily run does)
    run_dbt(old, work, " ".join(rows.joined.split(".")[1] for rows in MEMBER_ROWS))
    with duckdb.connect(str(old), read_only=True) as conn:
        for rows in MEMBER_ROWS:
            assert relation_type(conn, rows.joined) == "VIEW"
            got = _rows(conn, rows.joined).select(expected[rows.joined].columns)
            assert got.equals(expected[rows.joined]), rows.joined


def test_a_new_warehouse_has_nothing_to_move(small_world_run):
    _, warehouse, *_ = small_world_run
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert move_member_history(conn) == {}
