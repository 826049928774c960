"""Partition writes are idempotent and atomic; identifiers are quoted."""

import duckdb
import polars as pl
import pytest

from cost_attribution.warehouse import markdown_table, replace_rows


def test_replace_rows_replaces_only_its_window():
    with duckdb.connect() as conn:
        day1 = pl.DataFrame({"dt": ["d1", "d1"], "v": [1, 2]})
        day2 = pl.DataFrame({"dt": ["d2"], "v": [3]})
        replace_rows(conn, "raw.t", day1, where={"dt": "d1"})
        replace_rows(conn, "raw.t", day2, where={"dt": "d2"})
        replace_rows(conn, "raw.t", day1, where={"dt": "d1"})  # re-materialize: no duplicates
        assert conn.execute("SELECT dt, sum(v), count(*) FROM raw.t GROUP BY dt ORDER BY dt").fetchall() == [
            ("d1", 3, 2),
            ("d2", 3, 1),
        ]


def test_failed_insert_rolls_back_the_delete():
    with duckdb.connect() as conn:
        replace_rows(conn, "t", pl.DataFrame({"dt": ["d1"], "v": [1]}), where={"dt": "d1"})
        with pytest.raises(Exception):
            replace_rows(conn, "t", pl.DataFrame({"dt": ["d1"], "v": ["not an int"]}), where={"dt": "d1"})
        assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]


def test_hostile_identifiers_and_values_are_inert():
    with duckdb.connect() as conn:
        name = 'weird"; DROP TABLE x; --'
        replace_rows(conn, f"s.{name}", pl.DataFrame({"k": ["a'; DROP"], "v": [1]}), where={"k": "a'; DROP"})
        assert conn.execute(f'SELECT k FROM s."{name.replace(chr(34), chr(34) * 2)}"').fetchall() == [("a'; DROP",)]


def test_markdown_table_formats_numbers_and_truncates():
    text = markdown_table(pl.DataFrame({"a": ["x", "y", "z"], "b": [1.23456, None, 3.0]}), max_rows=2)
    assert "| a | b |" in text and "1.235" in text and "1 more rows" in text
    assert markdown_table(pl.DataFrame()) == "_(no rows)_"


def test_a_large_first_write_is_readable_in_the_same_process():
    """Regression: a table created and filled with > 122,880 rows in one transaction read
    back empty through SELECT * on the same DuckDB 2.0 instance."""
    with duckdb.connect() as conn:
        n = 300_000
        replace_rows(conn, "raw.big", pl.DataFrame({"dt": ["d"] * n, "v": list(range(n))}), where={"dt": "d"})
        assert len(conn.execute("SELECT * FROM raw.big").fetchall()) == n


def test_a_failed_write_raises_its_own_error_even_when_the_rollback_fails():
    """A disk-full error during the insert must not be hidden behind the rollback's error."""

    class DiskFull:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql.startswith("INSERT"):
                raise duckdb.IOException("could not write: No space left on device")
            if sql == "ROLLBACK":
                raise duckdb.TransactionException("cannot rollback - no transaction is active")
            return self.conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    with duckdb.connect() as conn, pytest.raises(duckdb.IOException, match="No space left on device"):
        replace_rows(DiskFull(conn), "t", pl.DataFrame({"a": [1]}))


def test_a_table_from_an_older_version_gains_the_new_columns():
    with duckdb.connect() as conn:
        replace_rows(conn, "raw.usage", pl.DataFrame({"service": ["a"], "requests": [1.0]}))
        replace_rows(conn, "raw.usage", pl.DataFrame({"service": ["b"], "requests": [2.0], "cpu_seconds": [0.5]}))
        assert conn.execute("SELECT * FROM raw.usage").fetchall() == [("b", 2.0, 0.5)]
        replace_rows(conn, "raw.days", pl.DataFrame({"dt": ["d1"], "v": [1]}), where={"dt": "d1"})
        replace_rows(conn, "raw.days", pl.DataFrame({"dt": ["d2"], "v": [2], "w": ["x"]}), where={"dt": "d2"})
        assert conn.execute("SELECT * FROM raw.days ORDER BY dt").fetchall() == [("d1", 1, None), ("d2", 2, "x")]
