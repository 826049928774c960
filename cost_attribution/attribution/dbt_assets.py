"""The span-level SQL (enrich, attribute, aggregate) as dbt models, one Dagster
asset each, partitioned like the spans. dbt receives the partition window in its
environment (as vars, a new day would make dbt parse the whole project again), so a
backfill over a range is one `dbt build` per partition and each model replaces exactly
its days.

The dbt target is DBT_TARGET (profiles.yml): `duckdb` (default) builds the models in
the DuckDB warehouse; `spark` builds them on Spark and copies the aggregates back into
DuckDB for the one-machine assets (spark_target.py, docs/scaling_out.md)."""


import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets
from dagster_duckdb import DuckDBResource

from cost_attribution import environment
from cost_attribution.attribution import spark_target
from cost_attribution.attribution.member_rows import move_member_history
from cost_attribution.dbt_project import (
    DBT_PROJECT_DIR, dbt_executable, dbt_project, ensure_manifest, keep_parse, prune_invocations)
from cost_attribution.memory import DBT_PROCESS_RESERVE, mb
from cost_attribution.resources import WarehouseResource
from cost_attribution.partitions import daily_partitions

__all__ = ["DBT_PROJECT_DIR", "build_span_models", "dbt_executable", "dbt_vars", "dbt_window_env"]


def dbt_vars(warehouse_path: str) -> dict[str, str]:
    """The dbt vars: the warehouse file profiles.yml connects to (the warehouse resource's).
    The same for every partition, so dbt's saved parse of the project stays valid."""
    return {"warehouse_path": warehouse_path}


def dbt_window_env(window: dg.TimeWindow) -> dict[str, str]:
    """The partition window macros/partition_window.sql reads when a model compiles,
    [min_date, max_date), as environment variables of the dbt process."""
    return {environment.DBT_MIN_DATE_ENV: window.start.strftime("%Y-%m-%d"),
            environment.DBT_MAX_DATE_ENV: window.end.strftime("%Y-%m-%d")}


class CostAttributionTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "attribution"

    def get_owners(self, dbt_resource_props: Mapping[str, Any]):
        return ["team:platform-data"]


@functools.cache
def build_span_models() -> dg.AssetsDefinition:
    """The dbt models as assets, built on first use (never at import: the manifest may
    need a `dbt parse` first, see dbt_project.ensure_manifest)."""

    @dbt_assets(
        manifest=ensure_manifest(dbt_project()),
        dagster_dbt_translator=CostAttributionTranslator(),
        partitions_def=daily_partitions,
        # A backfill over a range is one dbt invocation over the whole window: dbt's
        # start-up dominates a day's SQL, and every model replaces exactly its days.
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="warehouse",
    )
    def span_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource):
        yield from _run_dbt(context, dbt, warehouse)

    return span_models


@contextmanager
def _dbt_memory_limit(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> Iterator[None]:
    """dbt's DuckDB gets what the run's memory budget leaves beside this process (profiles.yml
    reads COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT), set only while dbt starts: the dbt process
    takes its environment from this one's."""
    if not isinstance(warehouse, WarehouseResource):
        yield
        return
    share = mb(warehouse.budget().duckdb_share(DBT_PROCESS_RESERVE))
    context.log.info(f"dbt's DuckDB memory_limit: {share} (memory budget {warehouse.memory_budget})")
    with environment.overridden({environment.MEMORY_LIMIT_ENV: share}):
        yield


def _run_dbt(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource):
    window = context.partition_time_window
    on_spark = (dbt.target or environment.dbt_target()) == environment.SPARK_TARGET
    start, end = window.start.date(), window.end.date()
    if on_spark:
        lake = spark_target.lake_dir(warehouse.database, DBT_PROJECT_DIR)
        with warehouse.get_connection() as conn:
            exported = spark_target.export_raw_sources(conn, lake, spark_target.window_days(start, end))
        context.log.info(f"spark target: raw sources exported to {lake / 'raw'}: {exported}")
    else:
        with warehouse.get_connection() as conn:
            moved = move_member_history(conn)
        if moved:
            context.log.info(f"per-member history moved out of the old tables (member days): {moved}")
    with _dbt_memory_limit(context, warehouse), environment.overridden(dbt_window_env(window)):
        invocation = dbt.cli(["build", "--vars", json.dumps(dbt_vars(warehouse.database))], context=context)
    yield from invocation.stream()
    keep_parse(invocation.target_path)
    prune_invocations(invocation.target_path)
    if on_spark:
        models = spark_target.aggregate_models(spark_target.built_models(invocation.get_artifact("run_results.json")))
        with warehouse.get_connection() as conn:
            copied = spark_target.import_model_tables(conn, lake, models, start, end)
        context.log.info(f"spark target: copied into the DuckDB warehouse (rows per table): {copied}")
