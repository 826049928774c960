"""Landing zone -> raw warehouse tables (schema `raw`).

Spans are daily partitions (the landing zone's dt= folders); catalogs, allocations,
cost and usage history are small and refreshed whole on every run.
"""


import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.ingest import catalogs
from cost_attribution.ingest.parquet_sql import ingest_parquet_day
from cost_attribution.ingest.readers import read_span_files
from cost_attribution.partitions import daily_partitions, partition_days
from cost_attribution.resources import AnalysisSettings, LandingZone
from cost_attribution.warehouse import markdown_table, read_frame, replace_rows

INGEST = "ingest"
OWNERS = ["team:platform-data"]


def _counts_by(frame: pl.DataFrame, column: str) -> dict[str, int]:
    if frame.is_empty():
        return {}
    return {str(k): int(v) for k, v in frame.group_by(column).len().sort(column).iter_rows()}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "raw_spans",
            description="Every span of the day's trace files, normalized (OTLP JSON/proto, Zipkin, Jaeger, Parquet) "
            "with its sampling probability resolved. Key: (dt, trace_id, span_id, service, kind).",
            kinds={"duckdb", "python"},
            owners=OWNERS,
            group_name=INGEST,
        ),
        dg.AssetSpec(
            "span_quarantine",
            description="Every trace record that could not be used, with the reason (truncated line, duplicate, "
            "end before start, missing service.name, bad id...). Counted, never silently dropped.",
            kinds={"duckdb"},
            owners=OWNERS,
            group_name=INGEST,
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="warehouse",
)
def raw_spans(context: dg.AssetExecutionContext, landing: LandingZone, warehouse: DuckDBResource):
    spans_total, files_read, per_service, quarantined = 0, [], [], {}
    for day in partition_days(context):
        files = landing.trace_files(day)
        if files and all(f.name.lower().endswith(".parquet") for f in files):
            # Flat Parquet only: validated and written inside DuckDB, never a polars frame
            # (10M spans: 11.6 s and 1.0 GB peak instead of 23.5 s and 8.0 GB); same rows.
            with warehouse.get_connection() as conn:
                counts = ingest_parquet_day(conn, files, day)
                day_services = read_frame(
                    conn,
                    "SELECT service, kind, CAST(count(*) AS UINTEGER) AS len FROM raw.spans WHERE dt = ? GROUP BY ALL",
                    [day],
                )
            day_spans = counts.pop("spans")
            day_quarantine = dict(sorted(counts.items()))
        else:
            batch = read_span_files(files, day)
            with warehouse.get_connection() as conn:
                replace_rows(conn, "raw.spans", batch.spans, where={"dt": day})
                replace_rows(conn, "raw.span_quarantine", batch.quarantine, where={"dt": day})
            day_spans = batch.spans.height
            day_services = batch.spans.group_by("service", "kind").len() if day_spans else None
            day_quarantine = _counts_by(batch.quarantine, "reason")
        spans_total += day_spans
        files_read += [str(f) for f in files]
        if day_spans:
            per_service.append(day_services)
        if day_quarantine:
            context.log.warning(f"{day}: quarantined {sum(day_quarantine.values())} trace records: {day_quarantine}")
        for reason, n in day_quarantine.items():
            quarantined[reason] = quarantined.get(reason, 0) + n
    services = (
        pl.concat(per_service).group_by("service", "kind").agg(pl.col("len").sum().alias("spans")).sort("service", "kind")
        if per_service
        else pl.DataFrame()
    )
    yield dg.MaterializeResult(
        asset_key="raw_spans",
        metadata={
            "dagster/row_count": spans_total,
            "files": dg.MetadataValue.json(files_read),
            "spans_by_service": dg.MetadataValue.md(markdown_table(services)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="span_quarantine",
        metadata={
            "dagster/row_count": sum(quarantined.values()),
            "by_reason": dg.MetadataValue.json(quarantined),
        },
    )


def _ingest_table(warehouse: DuckDBResource, table: str, source: str, load) -> tuple[pl.DataFrame, dict[str, int]]:
    """Load one landing-zone table with `load(conn) -> (rows, quarantined rows)`, replace
    the warehouse table and this source's quarantine rows, return rows and counts."""
    with warehouse.get_connection() as conn:
        frame, quarantine = load(conn)
        replace_rows(conn, table, frame)
        replace_rows(conn, "raw.input_quarantine", quarantine, where={"source": source})
    return frame, _counts_by(quarantine, "reason")


def _table_result(frame: pl.DataFrame, quarantined: dict[str, int], **tables: pl.DataFrame) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "quarantined": dg.MetadataValue.json(quarantined),
            **{name: dg.MetadataValue.md(markdown_table(table)) for name, table in tables.items()},
        }
    )


@dg.asset(
    key="experiments",
    description="experiments.yaml: one row per experiment with its control cell and start date.",
    kinds={"duckdb", "yaml"},
    owners=OWNERS,
    group_name=INGEST,
    pool="warehouse",
)
def experiments(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    # A malformed catalog entry raises (a silently skipped experiment is a missing cost).
    frame = catalogs.parse_experiments(landing.catalog("experiments.yaml"))
    _, quarantined = _ingest_table(warehouse, "raw.experiments", "experiments", lambda _: (frame, catalogs.empty_quarantine()))
    return _table_result(frame, quarantined, experiments=frame)


@dg.asset(
    key="services",
    description="services.yaml: the service catalog (owner, deprecated, tier).",
    kinds={"duckdb", "yaml"},
    owners=OWNERS,
    group_name=INGEST,
    pool="warehouse",
)
def services(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    frame = catalogs.parse_services(landing.catalog("services.yaml"))
    _, quarantined = _ingest_table(warehouse, "raw.services", "services", lambda _: (frame, catalogs.empty_quarantine()))
    return _table_result(frame, quarantined, services=frame)


@dg.asset(
    key="allocations",
    deps=["experiments"],
    description="member -> experiment cell, with allocated_at; conflicting or unknown allocations quarantined.",
    kinds={"duckdb"},
    owners=OWNERS,
    group_name=INGEST,
    pool="warehouse",
)
def allocations(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    def load(conn):
        known = read_frame(conn, "SELECT * FROM raw.experiments")
        return catalogs.load_allocations(conn, landing.table_files("allocations"), known)

    frame, quarantined = _ingest_table(warehouse, "raw.allocations", "allocations", load)
    per_cell = frame.group_by("experiment_id", "cell").len().sort("experiment_id", "cell")
    return _table_result(frame, quarantined, members_per_cell=per_cell)


@dg.asset(
    key="focus_costs",
    description="FOCUS 1.x hourly cost rows with the application tag extracted. Untagged rows (support, credits, "
    "untagged resources) are kept with app = NULL: unattributable, reported, never spread over services.",
    kinds={"duckdb"},
    owners=["team:finops"],
    group_name=INGEST,
    pool="warehouse",
)
def focus_costs(landing: LandingZone, settings: AnalysisSettings, warehouse: DuckDBResource) -> dg.MaterializeResult:
    frame, quarantined = _ingest_table(
        warehouse,
        "raw.focus_costs",
        "costs",
        lambda conn: catalogs.load_focus_costs(conn, landing.table_files("costs"), settings.app_tag),
    )
    by_app = (
        frame.group_by(pl.col("app").fill_null("(unattributed)"))
        .agg(pl.col("effective_cost").sum().alias("effective_cost_usd"), pl.len().alias("rows"))
        .sort("effective_cost_usd", descending=True)
    )
    return _table_result(frame, quarantined, cost_by_app=by_app)


@dg.asset(
    key="usage_metrics",
    description="Full hourly request counts per service from metrics (the production volume the projections scale).",
    kinds={"duckdb"},
    owners=OWNERS,
    group_name=INGEST,
    pool="warehouse",
)
def usage_metrics(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    return _table_result(
        *_ingest_table(
            warehouse,
            "raw.usage_metrics",
            "usage_metrics",
            lambda conn: catalogs.load_usage_metrics(conn, landing.table_files("usage_metrics")),
        )
    )


@dg.asset(
    key="business_metrics",
    description="Business metric deltas per experiment cell (from the experimentation platform), shown beside cost.",
    kinds={"duckdb"},
    owners=["team:experimentation"],
    group_name=INGEST,
    pool="warehouse",
)
def business_metrics(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    return _table_result(
        *_ingest_table(
            warehouse,
            "raw.business_metrics",
            "business_metrics",
            lambda conn: catalogs.load_business_metrics(conn, landing.table_files("business_metrics")),
        )
    )


ingest_assets = [raw_spans, experiments, services, allocations, focus_costs, usage_metrics, business_metrics]
