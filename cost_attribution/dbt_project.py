"""The dbt project beside the package: where it is, which dbt runs it, its manifest, the
parse dbt saves between runs and the DbtCliResource. Floor 1 (docs/style.md): resources
and the dbt assets both ask here.

Nothing runs at import time: the manifest is parsed, when it is missing or under
`dagster dev`, only when the dbt assets are first built (attribution/dbt_assets.py)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from dagster_dbt.compat import DBT_PYTHON_VERSION
from dagster_dbt.core.dbt_cli_invocation import PARTIAL_PARSE_FILE_NAME, _get_dbt_target_path
from dagster_dbt.dbt_project import using_dagster_dev
from packaging import version

from cost_attribution import environment

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"


def dbt_executable() -> str:
    """The dbt installed beside this interpreter (the venv's), else the one on PATH:
    a `.venv/bin/cost-attribution` call works without activating the venv."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


@functools.cache
def dbt_project(target: str | None = None) -> DbtProject:
    """The project for a dbt target (DBT_TARGET by default: duckdb | spark)."""
    return DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=target or environment.dbt_target())


class VenvDbtCliResource(DbtCliResource):
    """DbtCliResource without two costs dagster-dbt pays before every dbt command:
    - `dbt --version`, to learn the CLI's version: it asks PyPI for the latest dbt-core and
      adapter releases (three requests, 1 s timeout each), a network call a run must not
      make, and 3.8 s here. The venv's own dbt is answered from its installed dbt-core;
      any other executable is still asked.
    - a dbt adapter built inside the Dagster process (2.6 s, ~50 MB): it serves only
      fetch_row_counts / fetch_column_metadata, which this project does not call."""

    def _initialize_dbt_core_adapter(self, args):
        return None

    @functools.cached_property
    def _cli_version(self) -> version.Version:
        if DBT_PYTHON_VERSION is not None and Path(self.dbt_executable) == Path(sys.executable).parent / "dbt":
            return DBT_PYTHON_VERSION
        return DbtCliResource._cli_version.func(self)


def dbt_resource(target: str | None = None) -> DbtCliResource:
    # The target by configuration, per deployment (as hooli-data-eng-pipelines does
    # for its local vs warehouse targets): DBT_TARGET=duckdb | spark.
    project = dbt_project(target)
    return VenvDbtCliResource(project_dir=project, dbt_executable=dbt_executable(), target=project.target)


def ensure_manifest(project: DbtProject) -> Path:
    """target/manifest.json, parsed by the dbt beside this interpreter when it is missing
    (fresh clone, no `make`) or under `dagster dev` (which re-parses so the graph follows
    the SQL). DbtProject.prepare_if_dev would look `dbt` up on PATH, which fails when the
    venv is not activated. Parsing needs no warehouse: dbt gets a scratch path."""
    if using_dagster_dev() or not project.manifest_path.exists():
        scratch = Path(tempfile.gettempdir()) / "cost-attribution-parse.duckdb"
        subprocess.run(
            [dbt_executable(), "parse", "--quiet", "--project-dir", str(DBT_PROJECT_DIR),
             "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(project.target_path),
             *(["--target", project.target] if project.target else [])],
            cwd=DBT_PROJECT_DIR, env={**os.environ, environment.WAREHOUSE_ENV: str(scratch)},
            check=True, stdout=subprocess.DEVNULL,
        )
    return project.manifest_path


def saved_parse_dir() -> Path:
    """Where dagster-dbt looks for a saved parse to copy into each command's target
    directory: DBT_TARGET_PATH (default `target`), relative to the project directory."""
    target = _get_dbt_target_path()
    return target if target.is_absolute() else DBT_PROJECT_DIR / target


# dagster-dbt gives every dbt command a directory of its own under target/ (logs,
# run_results, compiled SQL: ~2 MB) and never removes one: a month of daily runs' is kept
# for looking into a failed day, older ones are removed after each build. A directory
# touched within the last day stays whatever the count: another run's dbt may be using it.
KEPT_DBT_INVOCATIONS = 30
PRUNE_AFTER_SECONDS = 24 * 3600


def prune_invocations(current: Path, project_target: Path | None = None,
                      keep: int = KEPT_DBT_INVOCATIONS) -> list[Path]:
    """Remove the command directories under the project's target beyond the newest `keep`
    (the one just used, `current`, counts and stays) that are older than a day. A command
    directory is one dbt wrote a manifest into; target/ itself and anything else in it
    are left alone. Returns what was removed."""
    project_target = project_target or saved_parse_dir()
    try:
        commands = [(d.stat().st_mtime, d) for d in project_target.iterdir()
                    if d.is_dir() and d.resolve() != current.resolve() and (d / "manifest.json").exists()]
    except OSError:
        return []
    commands.sort(reverse=True)
    cutoff = time.time() - PRUNE_AFTER_SECONDS
    removed = [d for mtime, d in commands[max(keep - 1, 0):] if mtime < cutoff]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed


def keep_parse(invocation_target: Path, project_target: Path | None = None) -> bool:
    """Keep the parse a dbt command saved (partial_parse.msgpack) where dagster-dbt looks
    for one before the next command: dbt then re-reads only changed files instead of the
    whole project (2-3 s). dbt itself checks that the saved parse still fits (same vars,
    profile, files) and parses in full when it does not. Replaced atomically: two runs may
    finish together. False when there was nothing to keep or the project is read-only."""
    saved = invocation_target / PARTIAL_PARSE_FILE_NAME
    if not saved.exists():
        return False
    project_target = project_target or saved_parse_dir()
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=project_target, prefix=".partial_parse.", delete=False) as tmp, saved.open("rb") as src:
            shutil.copyfileobj(src, tmp)
        shutil.copymode(saved, tmp.name)  # a temporary file is private (0600); dbt's is not
        os.replace(tmp.name, project_target / PARTIAL_PARSE_FILE_NAME)
    except OSError:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
        return False
    return True
