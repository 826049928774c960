"""Glue for the dbt `spark` target (DBT_TARGET=spark; docs/scaling_out.md).

The span-level SQL runs on Spark; everything downstream of the dbt models stays in
the DuckDB warehouse on one machine. Around one `dbt build` on Spark:

1. export_raw_sources(): the ingest assets' normalised output (raw.spans for the
   window's days, raw.allocations, raw.experiments) is placed as Parquet under
   <lake>/raw/; the dbt on-run-start hook (macros/spark_sources.sql) registers those
   files as the external tables raw.* that source('raw', ...) resolves to. The spans
   are the span lake's own files (ingest/span_lake.py), hard-linked, not copied:
   Spark reads the very files DuckDB's raw.spans view reads.
2. dbt builds the models on Spark into <lake>/warehouse/main.db/<model>/dt=.../ .
3. import_model_tables(): the window's partitions of every per-member / per-service
   aggregate (everything but the span-grain models) are read from Spark's Parquet and
   replace the same days in the DuckDB tables of the same name, which the Python
   assets (statistics, cost models, report) read. The span-grain tables
   (SPAN_GRAIN_MODELS) never leave Spark.

The lake directory is COST_ATTRIBUTION_SPARK_DIR, else "<warehouse file>.spark": the
same rule profiles.yml and macros/spark_sources.sql apply.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

from cost_attribution import environment
from cost_attribution.ingest import span_lake
from cost_attribution.warehouse import qualified, table_exists, transaction

# Span-grain models: as large as the spans, they stay in the lake. Every other model
# is an aggregate the one-machine assets read, copied back into DuckDB.
SPAN_GRAIN_MODELS = frozenset({"stg_spans", "trace_members", "enriched_spans"})
# Views over the raw sources: no rows of their own, nothing downstream reads them from DuckDB.
VIEW_MODELS = frozenset({"member_exposure"})
RAW_TABLES = ("allocations", "experiments")
# Spark's default database layout under spark.sql.warehouse.dir (profiles.yml: schema main).
SPARK_SCHEMA = "main"


def lake_dir(warehouse_path: str | Path, dbt_project_dir: Path | None = None) -> Path:
    """Where the spark target keeps raw Parquet, model tables and its metastore: the
    configured lake, else "<warehouse file>.spark" (the warehouse resource's database)."""
    configured = environment.get(environment.SPARK_DIR_ENV)
    path = Path(configured) if configured else Path(f"{warehouse_path}.spark")
    if not path.is_absolute() and dbt_project_dir is not None:
        path = dbt_project_dir / path  # dbt runs with the project as its working directory
    return path


def spark_table_dir(lake: Path, model: str) -> Path:
    return lake / "warehouse" / f"{SPARK_SCHEMA}.db" / model


def window_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """The days of [start, end)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def _sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _replace_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def export_raw_sources(conn: duckdb.DuckDBPyConnection, lake: Path, days: Iterable[dt.date]) -> dict[str, int]:
    """Place the raw sources the models read as Parquet under <lake>/raw/.

    raw.spans: one dt=YYYY-MM-DD directory per day of the window (each replaced whole;
    other days are left as they are) holding that day's span lake files, hard-linked
    (copied where the two directories are on different file systems): like Spark's own
    layout, they have no dt column. A day the lake cannot hand over as it is (a delivered
    file kept with its own columns and skipped rows, a file from before the day left the
    files, no span lake at all: raw.spans a table) is written out through raw.spans. raw.allocations /
    raw.experiments: small and refreshed whole on every run, like their ingest assets.
    Returns rows placed.
    """
    raw = lake / "raw"
    written: dict[str, int] = {"spans": 0}
    for day in days:
        day_dir = _replace_dir(raw / "spans" / f"dt={day.isoformat()}")
        files = span_lake.files_as_they_are(conn, day)
        if files is None:
            select = f"SELECT * EXCLUDE (dt) FROM raw.spans WHERE dt = DATE '{day.isoformat()}'"
            conn.execute(f"COPY ({select}) TO {_sql_string(day_dir / 'part-0000.parquet')} (FORMAT parquet)")
        for number, source in enumerate(files or []):
            _link_or_copy(source, day_dir / f"part-{number:04d}.parquet")
        written["spans"] += conn.execute(f"SELECT count(*) FROM raw.spans WHERE dt = DATE '{day.isoformat()}'").fetchall()[0][0]
    for table in RAW_TABLES:
        out = _replace_dir(raw / table)
        conn.execute(f"COPY (SELECT * FROM raw.{table}) TO {_sql_string(out / 'part-0000.parquet')} (FORMAT parquet)")
        written[table] = conn.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0]
    return written


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link: no copy, and the span lake replacing its day (a new file, the old one
    unlinked) leaves this one intact until the next export replaces the day here."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def aggregate_models(model_names: Iterable[str]) -> list[str]:
    """The models whose tables the one-machine assets read (all but the span grain)."""
    return sorted(name for name in set(model_names) if name not in SPAN_GRAIN_MODELS | VIEW_MODELS)


def _partition_files(table_dir: Path, start: dt.date, end: dt.date) -> list[Path]:
    files = []
    for part in sorted(table_dir.glob("dt=*")):
        try:
            day = dt.date.fromisoformat(part.name[3:])
        except ValueError:  # dt=__HIVE_DEFAULT_PARTITION__ (a null dt) cannot be in a window
            continue
        if start <= day < end:
            files += sorted(part.glob("*.parquet"))
    return files


def import_model_tables(
    conn: duckdb.DuckDBPyConnection, lake: Path, models: Sequence[str], start: dt.date, end: dt.date
) -> dict[str, int]:
    """Replace the days [start, end) of main.<model> in DuckDB by Spark's partitions.

    Delete-then-insert in one transaction, like the duckdb target's replace_window: a
    day Spark computed no rows for ends up empty here too. Columns go in by name with
    dt first (the models' own column order; Spark moves partition columns last).
    Returns rows copied per model.
    """
    copied: dict[str, int] = {}
    for model in models:
        table_dir = spark_table_dir(lake, model)
        if not table_dir.is_dir():
            raise FileNotFoundError(f"{table_dir}: no Spark table for dbt model {model!r}")
        files = _partition_files(table_dir, start, end)
        target = qualified(f"{SPARK_SCHEMA}.{model}")
        with transaction(conn):
            if files:
                source = (
                    f"read_parquet([{', '.join(_sql_string(f) for f in files)}], "
                    "hive_partitioning = true, hive_types = {'dt': 'DATE'})"
                )
                columns = [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
                ordered = ", ".join(f'"{c}"' for c in ["dt", *[c for c in columns if c != "dt"]])
                if not table_exists(conn, f"{SPARK_SCHEMA}.{model}"):
                    conn.execute(f"CREATE TABLE {target} AS SELECT {ordered} FROM {source} LIMIT 0")
            if table_exists(conn, f"{SPARK_SCHEMA}.{model}"):
                conn.execute(f"DELETE FROM {target} WHERE dt >= ? AND dt < ?", [start, end])
            if files:
                conn.execute(f"INSERT INTO {target} BY NAME SELECT {ordered} FROM {source}")
        copied[model] = (
            conn.execute(f"SELECT count(*) FROM {target} WHERE dt >= ? AND dt < ?", [start, end]).fetchall()[0][0]
            if table_exists(conn, f"{SPARK_SCHEMA}.{model}")
            else 0
        )
    return copied


def built_models(run_results: dict) -> list[str]:
    """Names of the models a dbt invocation built successfully (run_results.json)."""
    return [
        result["unique_id"].split(".")[-1]
        for result in run_results.get("results", [])
        if result.get("unique_id", "").startswith("model.") and result.get("status") == "success"
    ]
