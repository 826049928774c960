"""The span-level SQL (enrich, attribute, aggregate) as dbt models, one Dagster
asset each, partitioned like the spans. dbt receives the partition window as vars,
so a backfill over a range is one `dbt build` per partition and each model replaces
exactly its days.

The dbt target is DBT_TARGET (profiles.yml): `duckdb` (default) builds the models in
the DuckDB warehouse; `spark` builds them on Spark and copies the aggregates back into
DuckDB for the one-machine assets (spark_target.py, docs/scaling_out.md)."""


import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.dbt_project import using_dagster_dev
from dagster_duckdb import DuckDBResource

from cost_attribution.attribution import spark_target
from cost_attribution.partitions import daily_partitions

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=spark_target.dbt_target(),
)


def dbt_executable() -> str:
    """The dbt installed beside this interpreter (the venv's), else the one on PATH:
    a `.venv/bin/cost-attribution` call works without activating the venv."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_resource() -> DbtCliResource:
    # The target by configuration, per deployment (as hooli-data-eng-pipelines does
    # for its local vs warehouse targets): DBT_TARGET=duckdb | spark.
    return DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable(), target=spark_target.dbt_target())


def ensure_manifest() -> Path:
    """target/manifest.json, parsed by the dbt beside this interpreter when it is missing
    (fresh clone, no `make`) or under `dagster dev` (which re-parses so the graph follows
    the SQL). DbtProject.prepare_if_dev would look `dbt` up on PATH, which fails when the
    venv is not activated. Parsing needs no warehouse: dbt gets a scratch path."""
    if using_dagster_dev() or not dbt_project.manifest_path.exists():
        scratch = Path(tempfile.gettempdir()) / "cost-attribution-parse.duckdb"
        subprocess.run(
            [dbt_executable(), "parse", "--quiet", "--project-dir", str(DBT_PROJECT_DIR),
             "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(dbt_project.target_path),
             *(["--target", dbt_project.target] if dbt_project.target else [])],
            cwd=DBT_PROJECT_DIR, env={**os.environ, "COST_ATTRIBUTION_WAREHOUSE": str(scratch)},
            check=True, stdout=subprocess.DEVNULL,
        )
    return dbt_project.manifest_path


class CostAttributionTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "attribution"

    def get_owners(self, dbt_resource_props: Mapping[str, Any]):
        return ["team:platform-data"]


@dbt_assets(
    manifest=ensure_manifest(),
    dagster_dbt_translator=CostAttributionTranslator(),
    partitions_def=daily_partitions,
    # A backfill over a range is one dbt invocation over the whole window: dbt's
    # start-up dominates a day's SQL, and every model replaces exactly its days.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="warehouse",
)
def span_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource):
    window = context.partition_time_window
    dbt_vars = {"min_date": window.start.strftime("%Y-%m-%d"), "max_date": window.end.strftime("%Y-%m-%d")}
    on_spark = (dbt.target or spark_target.dbt_target()) == spark_target.SPARK_TARGET
    start, end = window.start.date(), window.end.date()
    if on_spark:
        lake = spark_target.lake_dir(DBT_PROJECT_DIR)
        with warehouse.get_connection() as conn:
            exported = spark_target.export_raw_sources(conn, lake, spark_target.window_days(start, end))
        context.log.info(f"spark target: raw sources exported to {lake / 'raw'}: {exported}")
    invocation = dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context)
    yield from invocation.stream()
    if on_spark:
        models = spark_target.aggregate_models(spark_target.built_models(invocation.get_artifact("run_results.json")))
        with warehouse.get_connection() as conn:
            copied = spark_target.import_model_tables(conn, lake, models, start, end)
        context.log.info(f"spark target: copied into the DuckDB warehouse (rows per table): {copied}")
