"""Configured resources: where the landing zone and the warehouse are, and the
analysis settings people tune. Nothing here is a module-level global; every value
comes from resource config (env vars in deployment, explicit values in tests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from cost_attribution import environment, formats
from cost_attribution.attribution.member_usage import PRE_PERIOD_DAYS
from cost_attribution.dbt_project import dbt_resource
from cost_attribution.memory import IN_PROCESS_RESERVE, MemoryBudget, mb, parse_size
from cost_attribution.ingest.spans import DEFAULT_SAMPLING_PROBABILITY_FLOOR


class MissingInput(ValueError):
    """A required landing-zone input is absent: the message names it and the fix."""


class LandingZone(dg.ConfigurableResource):
    """The directory the platform team drops its inputs into (see docs/contract.md).
    Only files inside it are read: a symlink pointing outside is listed as unread."""

    root: str
    # Spans read, validated and staged per chunk when ingesting trace files other than flat
    # Parquet: the bound on the ingest's Python memory (~1.5 KB a span), whatever the day
    # or file size. Deployed from COST_ATTRIBUTION_INGEST_CHUNK_SPANS.
    ingest_chunk_spans: int = 200_000

    @property
    def path(self) -> Path:
        return Path(self.root)

    def _day_dirs(self) -> list[tuple[Path, dt.date | None]]:
        traces = self.path / "traces"
        if not traces.is_dir():
            return []
        return [(child, formats.parse_day_dir(child.name)) for child in sorted(traces.iterdir())
                if not child.name.startswith(".")]

    def trace_days(self) -> list[dt.date]:
        return sorted(day for child, day in self._day_dirs()
                      if day is not None and child.is_dir() and formats.inside(self.path, child))

    def trace_listing(self, day: dt.date) -> tuple[list[Path], list[formats.Unread]]:
        folder = self.path / "traces" / f"dt={day.isoformat()}"
        return formats.list_folder(self.path, folder, formats.trace_reader_refusal, folder.name)

    def trace_files(self, day: dt.date) -> list[Path]:
        return self.trace_listing(day)[0]

    def table_listing(self, folder: str) -> tuple[list[Path], list[formats.Unread]]:
        return formats.list_folder(self.path, self.path / folder, formats.table_reader_refusal, folder)

    def table_files(self, folder: str) -> list[Path]:
        return self.table_listing(folder)[0]

    def unread_files(self) -> list[formats.Unread]:
        """Everything in the landing zone that no reader takes, with the reason."""
        root = self.path
        unread: list[formats.Unread] = []
        if not root.is_dir():
            return unread
        for child in sorted(root.iterdir()):
            name = child.name
            if name.startswith(".") or formats.NOT_INPUTS.match(name) or name in ("traces", *formats.TABLE_FOLDERS):
                continue
            if name in formats.CATALOG_FILES and formats.inside(root, child) and child.is_file():
                continue
            if not formats.inside(root, child):
                unread.append(formats.Unread(child, "symlink pointing outside the landing zone: not followed"))
            else:
                unread.append(formats.Unread(child, "not part of the landing-zone contract (docs/contract.md)"))
        for folder in formats.TABLE_FOLDERS:
            unread += self.table_listing(folder)[1]
        for child, day in self._day_dirs():
            if not formats.inside(root, child):
                unread.append(formats.Unread(child, "symlink pointing outside the landing zone: not followed"))
            elif day is None or not child.is_dir():
                unread.append(formats.Unread(child, "not a traces/dt=YYYY-MM-DD folder with a valid date"))
            else:
                unread += self.trace_listing(day)[1]
        return unread

    def catalog_text(self, name: str) -> str:
        """experiments.yaml / services.yaml as text; a missing catalog is an error (an
        absent catalog would silently publish a report without experiments)."""
        path = self.path / name
        if not path.is_file() or not formats.inside(self.path, path):
            raise MissingInput(
                f"{path}: missing. Fix: add {name} to the landing zone (docs/contract.md); "
                f"if there are none, write `{name.split('.')[0]}: []`."
            )
        return path.read_text(encoding="utf-8")


class AnalysisSettings(dg.ConfigurableResource):
    """Knobs of the statistics, the cost models, the report and the alerts: the one home
    of every threshold, window and tolerance (docs/settings.md lists them all). Assets,
    checks, the report and the alert sensor read them from this resource."""

    alpha: float = 0.05
    fdr_q: float = 0.05
    sequential: bool = True
    min_trace_coverage: float = 0.5
    blind_spot_coverage: float = 0.5
    projection_days: int = 28
    # Load history the projection reads (>= projection_days): where an experiment's
    # treated share started inside it, production metrics calibrate the trace deltas.
    calibration_days: int = 56
    # The report's cost_over_threshold flag and the cost alert: one threshold, deployed
    # from COST_ATTRIBUTION_ALERT_COST_THRESHOLD_USD.
    cost_alert_threshold_usd: float = environment.DEFAULT_COST_THRESHOLD_USD
    app_tag: str = "app"
    # Assumed spare capacity of a static fleet over its observed peak (estimation.models.ModelConfig).
    static_headroom: float = 0.5
    # Cost-model drift: relative change of the price per instance-hour, of the cost level
    # against the model, and of the cost per request that counts as a structural change.
    price_change_tolerance: float = 0.05
    residual_shift_tolerance: float = 0.10
    cost_per_request_shift_tolerance: float = 0.10
    # FOCUS rows billed in another currency are quarantined (non_usd_currency) unless
    # converted here: currency code -> USD per unit, e.g. {"EUR": 1.08}.
    usd_rates: dict[str, float] = {}
    # Shift-left: an edge absent from control is a new dependency when the control would
    # have shown it with at least 1 - new_edge_alpha probability at the treatment's rate.
    new_edge_alpha: float = 0.01
    # A trace day with no spans, or fewer than this share of the median of the previous
    # days, fails the blocking trace_volume check: its report is not published.
    min_day_span_ratio: float = 0.25
    # A span sampled with probability p stands for 1/p requests: below this floor one span
    # would stand for millions, so it is quarantined (sampling_probability_below_floor)
    # rather than trusted. Both ingest paths apply it (the polars readers, the DuckDB one).
    sampling_probability_floor: float = Field(default=DEFAULT_SAMPLING_PROBABILITY_FLOOR, gt=0, le=1, allow_inf_nan=False)
    # CUPED's pre-period: a member's rows from this many days before its experiment's start
    # (and, allocated later, up to its allocation) are the covariate; older days are not
    # read, so the as-of analyses do not grow with the warehouse's history.
    pre_period_days: int = Field(default=PRE_PERIOD_DAYS, ge=0)
    # Work per request: "duration" (SERVER span duration, the contract's definition) or
    # "busy" (duration minus the time the span's own calls were in flight).
    work_measure: str = "duration"
    # The dollar intervals: "fixed" (95% fixed-horizon, from the deltas' standard errors;
    # the accuracy bench checks their coverage) or "sequential" (from the always-valid
    # delta intervals: valid however often the report is re-read, and wider).
    dollar_interval: str = "fixed"
    # The point estimate with fixed intervals: "shrinkage" (each service's change is its
    # empirical-Bayes posterior median given all of the day's changes; chosen by the accuracy
    # bench, see bench/README.md) or "gate" (significant changes as measured, others $0).
    point_estimate: str = "shrinkage"
    # Under shrinkage, "no change" for a service means "moved as its callers imply" (a
    # caller's change times its share of the service's calls; attribution/call_graph.py),
    # so a downstream move is priced through the caller that causes it. False: towards 0.
    shrink_towards_callers: bool = True
    # What +1% of a business metric is worth, in USD per 30 days, by metric name (e.g.
    # {"streaming_hours": 2000}). Where set, the report weighs it against the cost: net
    # value and the probability that it is positive. Unset metrics get cost per point only.
    value_per_point_usd: dict[str, float] = {}


LANDING_ENV = environment.LANDING_ENV
WAREHOUSE_ENV = environment.WAREHOUSE_ENV


class WarehouseResource(DuckDBResource):
    """The DuckDB warehouse, kept within the run's memory budget: each connection's
    memory_limit is what the budget leaves when it opens (memory.MemoryBudget), up to the
    cap in connection_config. Deployed from COST_ATTRIBUTION_MEMORY_BUDGET and
    COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT."""

    memory_budget: str = Field(default=environment.DEFAULT_MEMORY_BUDGET,
                               description="the whole run's memory: this process and the dbt process it starts")

    def budget(self) -> MemoryBudget:
        cap = (self.connection_config or {}).get("memory_limit", environment.DEFAULT_MEMORY_LIMIT)
        return MemoryBudget(parse_size(self.memory_budget, environment.MEMORY_BUDGET_ENV),
                            parse_size(str(cap), environment.MEMORY_LIMIT_ENV))

    @contextmanager
    def get_connection(self) -> Iterator:
        share = mb(self.budget().duckdb_share(IN_PROCESS_RESERVE))
        with super().get_connection() as conn:
            conn.execute("SET memory_limit = ?", [share])
            yield conn


def default_resources(landing: Path | None = None, warehouse: Path | None = None) -> dict:
    """Resources as deployed: paths given here (the CLI, tests), else environment
    variables (the Makefile, docker-compose) read when a run starts."""
    return {
        "landing": LandingZone(root=str(landing) if landing else dg.EnvVar(LANDING_ENV),
                               ingest_chunk_spans=environment.ingest_chunk_spans(
                                   LandingZone.model_fields["ingest_chunk_spans"].default)),
        "warehouse": WarehouseResource(
            database=str(warehouse) if warehouse else dg.EnvVar(WAREHOUSE_ENV),
            # The same cap as dbt's connection (dbt_project/profiles.yml): spill, don't swell.
            connection_config={"memory_limit": environment.memory_limit()},
            memory_budget=environment.memory_budget(),
        ),
        "dbt": dbt_resource(),
        "settings": AnalysisSettings(cost_alert_threshold_usd=environment.cost_threshold_usd()),
    }
