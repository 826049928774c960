"""Configured resources: where the landing zone and the warehouse are, and the
analysis settings people tune. Nothing here is a module-level global; every value
comes from resource config (env vars in deployment, explicit values in tests)."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import dagster as dg
import yaml

_DAY_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
TRACE_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".pb", ".pb.gz", ".parquet")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffixes))


class LandingZone(dg.ConfigurableResource):
    """The directory the platform team drops its inputs into (see docs/contract.md)."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def trace_days(self) -> list[dt.date]:
        traces = self.path / "traces"
        if not traces.is_dir():
            return []
        days = []
        for child in traces.iterdir():
            match = _DAY_DIR.match(child.name)
            if child.is_dir() and match:
                days.append(dt.date.fromisoformat(match.group(1)))
        return sorted(days)

    def trace_files(self, day: dt.date) -> list[Path]:
        return _files(self.path / "traces" / f"dt={day.isoformat()}", TRACE_SUFFIXES)

    def table_files(self, folder: str) -> list[Path]:
        return _files(self.path / folder, TABLE_SUFFIXES)

    def catalog(self, name: str) -> dict:
        """experiments.yaml / services.yaml; a missing catalog is an empty one."""
        path = self.path / name
        if not path.exists():
            return {}
        with path.open() as handle:
            loaded = yaml.safe_load(handle)
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        return loaded or {}


class AnalysisSettings(dg.ConfigurableResource):
    """Knobs of the statistics, the cost models and the alerts."""

    alpha: float = 0.05
    fdr_q: float = 0.05
    sequential: bool = True
    min_trace_coverage: float = 0.5
    blind_spot_coverage: float = 0.5
    projection_days: int = 28
    # Load history the projection reads (>= projection_days): where an experiment's
    # treated share started inside it, production metrics calibrate the trace deltas.
    calibration_days: int = 56
    horizon_days: int = 30
    cost_alert_threshold_usd: float = 10_000.0
    app_tag: str = "app"
    static_headroom: float | None = None
    # Work per request: "duration" (SERVER span duration, the contract's definition) or
    # "busy" (duration minus the time the span's own calls were in flight).
    work_measure: str = "duration"


LANDING_ENV = "COST_ATTRIBUTION_LANDING"
MEMORY_LIMIT_ENV = "COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT"
WAREHOUSE_ENV = "COST_ATTRIBUTION_WAREHOUSE"


def default_resources() -> dict:
    """Resources as deployed: paths come from environment variables (set by the
    Makefile, the CLI, docker-compose or the test fixtures), read when a run starts."""
    from dagster_duckdb import DuckDBResource

    from cost_attribution.attribution.dbt_assets import dbt_resource

    return {
        "landing": LandingZone(root=dg.EnvVar(LANDING_ENV)),
        "warehouse": DuckDBResource(
            database=dg.EnvVar(WAREHOUSE_ENV),
            # The same cap as dbt's connection (dbt_project/profiles.yml): spill, don't swell.
            connection_config={"memory_limit": os.environ.get(MEMORY_LIMIT_ENV, "2GB")},
        ),
        "dbt": dbt_resource(),
        "settings": AnalysisSettings(),
    }
