"""The span-level SQL (enrich, attribute, aggregate) as dbt models, one Dagster
asset each, partitioned like the spans. dbt receives the partition window as vars,
so a backfill over a range is one `dbt build` per partition and each model replaces
exactly its days."""


import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from cost_attribution.partitions import daily_partitions

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=os.getenv("DBT_TARGET", "duckdb"),
)
# `dagster dev` re-parses on start; everywhere else `make install` (or the CLI) has
# already written target/manifest.json.
dbt_project.prepare_if_dev()


def dbt_executable() -> str:
    """The dbt installed beside this interpreter (the venv's), else the one on PATH:
    a `.venv/bin/cost-attribution` call works without activating the venv."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())


def ensure_manifest() -> Path:
    """Parse the dbt project once if no manifest exists yet (fresh clone, no `make`)."""
    if not dbt_project.manifest_path.exists():
        dbt_resource().cli(["parse", "--quiet"], target_path=dbt_project.target_path).wait()
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
def span_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    window = context.partition_time_window
    dbt_vars = {"min_date": window.start.strftime("%Y-%m-%d"), "max_date": window.end.strftime("%Y-%m-%d")}
    yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream()
