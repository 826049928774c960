"""The span-level SQL (enrich, attribute, aggregate) as dbt models, one Dagster
asset each, partitioned like the spans. dbt receives the partition window in its
environment (as vars, a new day would make dbt parse the whole project again), so a
backfill over a range is one `dbt build` per partition and each model replaces exactly
its days.

The dbt target is DBT_TARGET (profiles.yml): `duckdb` (default) builds the models in
the DuckDB warehouse; `spark` builds them on Spark and copies the aggregates back into
DuckDB for the one-machine assets (spark_target.py, docs/scaling_out.md)."""


import datetime as dt
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
from cost_attribution.attribution.member_usage import BUSY_TIME
from cost_attribution.dbt_project import (
    DBT_PROJECT_DIR, dbt_executable, dbt_project, ensure_manifest, keep_parse, prune_invocations)
from cost_attribution.ingest.span_lake import spans_per_day
from cost_attribution.memory import DBT_PROCESS_RESERVE, SPANS_PER_DBT_MB, mb
from cost_attribution.resources import AnalysisSettings, WarehouseResource
from cost_attribution.partitions import daily_partitions

__all__ = ["DBT_PROJECT_DIR", "build_span_models", "day_batches", "dbt_executable", "dbt_build_env", "dbt_vars"]


def dbt_vars(warehouse_path: str) -> dict[str, str]:
    """The dbt vars: the warehouse file profiles.yml connects to (the warehouse resource's).
    The same for every partition, so dbt's saved parse of the project stays valid."""
    return {"warehouse_path": warehouse_path}


def dbt_build_env(start: dt.date, end: dt.date, busy_time: bool = False) -> dict[str, str]:
    """What one dbt build's models read when they compile, as environment variables of the
    dbt process: the partition window [min_date, max_date) (macros/partition_window.sql) and
    whether enriched_spans computes busy time (macros/busy_time.sql)."""
    return {environment.DBT_MIN_DATE_ENV: start.strftime("%Y-%m-%d"),
            environment.DBT_MAX_DATE_ENV: end.strftime("%Y-%m-%d"),
            environment.DBT_BUSY_TIME_ENV: "true" if busy_time else "false"}


def day_batches(start: dt.date, end: dt.date, spans: Mapping[dt.date, int], limit: int) -> list[tuple[dt.date, dt.date]]:
    """[start, end) cut into consecutive windows of whole days holding at most `limit` spans
    each (a bigger day alone): what one dbt build can hold in its memory."""
    batches, first, held = [], start, 0
    day = start
    while day < end:
        n = spans.get(day, 0)
        if day > first and held + n > limit:
            batches.append((first, day))
            first, held = day, 0
        held += n
        day += dt.timedelta(days=1)
    batches.append((first, end))
    return batches


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
    def span_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource,
                    settings: AnalysisSettings):
        busy_time = settings.work_measure == BUSY_TIME or environment.dbt_busy_time()
        context.log.info("busy time: " + ("computed" if busy_time else
                                          f"not computed (work_measure {settings.work_measure!r})"))
        yield from _run_dbt(context, dbt, warehouse, busy_time)

    return span_models


@contextmanager
def _dbt_memory_limit(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> Iterator[int | None]:
    """dbt's DuckDB gets what the run's memory budget leaves beside this process (profiles.yml
    reads COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT), set only while dbt starts: the dbt process
    takes its environment from this one's. Yields the share in bytes (None: no budget)."""
    if not isinstance(warehouse, WarehouseResource):
        yield None
        return
    share = warehouse.budget().duckdb_share(DBT_PROCESS_RESERVE)
    context.log.info(f"dbt's DuckDB memory_limit: {mb(share)} (memory budget {warehouse.memory_budget})")
    with environment.overridden({environment.MEMORY_LIMIT_ENV: mb(share)}):
        yield share


def _run_dbt(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: DuckDBResource, busy_time: bool):
    window = context.partition_time_window
    on_spark = (dbt.target or environment.dbt_target()) == environment.SPARK_TARGET
    start, end = window.start.date(), window.end.date()
    spans: dict[dt.date, int] = {}
    if on_spark:
        lake = spark_target.lake_dir(warehouse.database, DBT_PROJECT_DIR)
        with warehouse.get_connection() as conn:
            exported = spark_target.export_raw_sources(conn, lake, spark_target.window_days(start, end))
        context.log.info(f"spark target: raw sources exported to {lake / 'raw'}: {exported}")
    else:
        with warehouse.get_connection() as conn:
            moved = move_member_history(conn)
            spans = spans_per_day(conn, start, end)
        if moved:
            context.log.info(f"per-member history moved out of the old tables (member days): {moved}")
    args = ["build", "--vars", json.dumps(dbt_vars(warehouse.database))]
    with _dbt_memory_limit(context, warehouse) as share:
        # A long backfill of big days is built a few days at a time, each build within the
        # memory budget (every model replaces exactly its days, so the batches add up to
        # the window). Only the last build's events are the step's: the asset is
        # materialized once for the whole window; an earlier build that fails stops it.
        batches = ([(start, end)] if on_spark or share is None
                   else day_batches(start, end, spans, (share // 10**6) * SPANS_PER_DBT_MB))
        for first, last in batches[:-1]:
            with environment.overridden(dbt_build_env(first, last, busy_time)):
                earlier = dbt.cli(args, context=context)
            earlier.wait()
            keep_parse(earlier.target_path)
            context.log.info(f"span models built for {first} .. {last - dt.timedelta(days=1)} "
                             f"({sum(n for day, n in spans.items() if first <= day < last):,} spans)")
        with environment.overridden(dbt_build_env(*batches[-1], busy_time)):
            invocation = dbt.cli(args, context=context)
    yield from invocation.stream()
    keep_parse(invocation.target_path)
    prune_invocations(invocation.target_path)
    if on_spark:
        models = spark_target.aggregate_models(spark_target.built_models(invocation.get_artifact("run_results.json")))
        with warehouse.get_connection() as conn:
            copied = spark_target.import_model_tables(conn, lake, models, start, end)
        context.log.info(f"spark target: copied into the DuckDB warehouse (rows per table): {copied}")
