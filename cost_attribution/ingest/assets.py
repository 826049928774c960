"""Landing zone -> raw warehouse tables (schema `raw`).

Spans are daily partitions (the landing zone's dt= folders); catalogs, allocations,
cost and usage history are small and refreshed whole on every run.
"""


from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution import formats
from cost_attribution.formats import trace_format
from cost_attribution.ingest import catalogs
from cost_attribution.ingest.parquet_sql import ingest_parquet_day
from cost_attribution.ingest.span_stream import ingest_span_day
from cost_attribution.ingest.spans import QUARANTINE_SCHEMA
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
def raw_spans(context: dg.AssetExecutionContext, landing: LandingZone, warehouse: DuckDBResource, settings: AnalysisSettings):
    spans_total, files_read, per_service, quarantined, unread = 0, [], [], {}, []
    for day in partition_days(context):
        files, skipped = _trace_inputs(landing, day)
        unread += skipped["source_file"].to_list()
        with warehouse.get_connection() as conn:
            if files and all(trace_format(f).name == "parquet" for f in files):
                # Flat Parquet only: validated and written inside DuckDB, never a polars frame
                # (10M spans: 11.6 s and 1.0 GB peak instead of 23.5 s and 8.0 GB); same rows.
                counts = ingest_parquet_day(conn, files, day, sampling_floor=settings.sampling_probability_floor)
            else:
                # Any other mix: read in chunks of landing.ingest_chunk_spans spans, staged as
                # Parquet and appended by DuckDB; memory bounded by the chunk, not the day.
                counts = ingest_span_day(conn, files, day, landing.ingest_chunk_spans, settings.sampling_probability_floor)
            if skipped.height:
                conn.register("_skipped", skipped.to_arrow())
                conn.execute(f"INSERT INTO raw.span_quarantine ({', '.join(skipped.columns)}) "
                             f"SELECT {', '.join(skipped.columns)} FROM _skipped")
                conn.unregister("_skipped")
                for reason, n in _counts_by(skipped, "reason").items():
                    counts[reason] = counts.get(reason, 0) + n
            day_services = read_frame(
                conn,
                "SELECT service, kind, CAST(count(*) AS UINTEGER) AS len FROM raw.spans WHERE dt = ? GROUP BY ALL",
                [day],
            )
        day_spans = counts.pop("spans")
        day_quarantine = dict(sorted(counts.items()))
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
    if unread:
        context.log.warning(f"{len(unread)} trace files not read (see span_quarantine): {unread[:20]}")
    yield dg.MaterializeResult(
        asset_key="raw_spans",
        metadata={
            "dagster/row_count": spans_total,
            "files": dg.MetadataValue.json(files_read),
            "files_not_read": dg.MetadataValue.json(unread),
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


def _skipped_files(unread: list[formats.Unread], duplicates: list[tuple[Path, Path]]) -> list[dict]:
    """Files of a folder that are not ingested: unread (no reader takes them) and whole-file
    duplicates (the same bytes under another name, which would double every row)."""
    return [{"source_file": str(u.path), "reason": "unread_files", "detail": u.why} for u in unread] + [
        {"source_file": str(dup), "reason": "duplicate_files", "detail": f"same content (sha256) as {first}: skipped"}
        for dup, first in duplicates
    ]


def _trace_inputs(landing: LandingZone, day) -> tuple[list[Path], pl.DataFrame]:
    """(trace files to read, span_quarantine rows for the day's files that are skipped).
    A file with the same bytes as one of an earlier day (or earlier in this day) is a
    duplicate delivery: its spans would count twice."""
    files, unread = landing.trace_listing(day)
    earlier = [f for d in landing.trace_days() if d < day for f in landing.trace_files(d)]
    _, duplicates = formats.split_duplicate_files(earlier + files)
    duplicates = [(dup, first) for dup, first in duplicates if dup in files]
    files = [f for f in files if f not in {dup for dup, _ in duplicates}]
    skipped = pl.DataFrame(_skipped_files(unread, duplicates), schema={"source_file": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8})
    return files, skipped.select(
        pl.lit(day, dtype=pl.Date).alias("dt"), "source_file", pl.lit(None, dtype=pl.Int64).alias("line_no"), "reason", "detail",
        pl.lit(None, dtype=pl.Utf8).alias("trace_id"), pl.lit(None, dtype=pl.Utf8).alias("span_id"), pl.lit("", dtype=pl.Utf8).alias("raw"),
    ).cast(QUARANTINE_SCHEMA)


def _table_inputs(landing: LandingZone, folder: str, source: str) -> tuple[list[Path], pl.DataFrame]:
    """(table files to read, input_quarantine rows for the folder's files that are skipped)."""
    files, unread = landing.table_listing(folder)
    files, duplicates = formats.split_duplicate_files(files)
    rows = [{"source": source, **row, "raw": ""} for row in _skipped_files(unread, duplicates)]
    return files, pl.DataFrame(rows, schema=catalogs.INPUT_QUARANTINE_SCHEMA)


def _ingest_table(
    warehouse: DuckDBResource, table: str, source: str, load, skipped: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Load one landing-zone table with `load(conn) -> (rows, quarantined rows)`, replace
    the warehouse table and this source's quarantine rows (plus `skipped` files), return
    rows and counts."""
    with warehouse.get_connection() as conn:
        frame, quarantine = load(conn)
        if skipped is not None:
            quarantine = pl.concat([quarantine, skipped])
        replace_rows(conn, table, frame)
        replace_rows(conn, "raw.input_quarantine", quarantine, where={"source": source})
    return frame, _counts_by(quarantine, "reason")


def _table_result(rows: pl.DataFrame | int, quarantined: dict[str, int], **tables: pl.DataFrame) -> dg.MaterializeResult:
    """`rows`: the table written, or its row count."""
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows if isinstance(rows, int) else rows.height,
            "quarantined": dg.MetadataValue.json(quarantined),
            **{name: dg.MetadataValue.md(markdown_table(table)) for name, table in tables.items()},
        }
    )


def _catalog_asset(name: str, description: str, parse: Callable[[str, str], pl.DataFrame]) -> dg.AssetsDefinition:
    """A YAML catalog in the landing zone as a raw table. A malformed entry raises: a
    silently skipped experiment is a missing cost."""

    @dg.asset(key=name, description=description, kinds={"duckdb", "yaml"}, owners=OWNERS, group_name=INGEST, pool="warehouse")
    def catalog(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
        frame = parse(landing.catalog_text(f"{name}.yaml"), str(landing.path / f"{name}.yaml"))
        _, quarantined = _ingest_table(warehouse, f"raw.{name}", name, lambda _: (frame, catalogs.empty_quarantine()))
        return _table_result(frame, quarantined, **{name: frame})

    return catalog


experiments = _catalog_asset(
    "experiments", "experiments.yaml: one row per experiment with its control cell and start date.", catalogs.parse_experiments
)
services = _catalog_asset("services", "services.yaml: the service catalog (owner, deprecated, tier).", catalogs.parse_services)


@dg.asset(
    key="allocations",
    deps=["experiments"],
    description="member -> experiment cell, with allocated_at; conflicting or unknown allocations quarantined.",
    kinds={"duckdb"},
    owners=OWNERS,
    group_name=INGEST,
    pool="warehouse",
)
def allocations(context: dg.AssetExecutionContext, landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
    files, skipped = _table_inputs(landing, "allocations", "allocations")
    with warehouse.get_connection() as conn:
        # Typed, classified and written inside DuckDB; the metadata comes from small GROUP BYs
        # (1.7M rows: a polars frame of them all was 1.68 GB peak in this process).
        rows = catalogs.ingest_allocations(conn, files, skipped)
        quarantined = _quarantined_counts(conn, "allocations")
        per_cell = read_frame(conn, "SELECT experiment_id, cell, CAST(count(*) AS UINTEGER) AS len "
                                    "FROM raw.allocations GROUP BY ALL ORDER BY ALL")
        known = read_frame(conn, "SELECT * FROM raw.experiments")
    empty = catalogs.cells_without_members(known, per_cell)
    if empty:
        # Its statistics cannot run: say so here rather than let the experiment vanish downstream.
        context.log.warning(f"experiment cells without allocated members (no deltas for them): {empty}")
    return _table_result(rows, quarantined, members_per_cell=per_cell,
                         cells_without_members=pl.DataFrame(empty, schema={"experiment_id": pl.Utf8, "cell": pl.Utf8}))


def _quarantined_counts(conn: duckdb.DuckDBPyConnection, source: str) -> dict[str, int]:
    rows = conn.execute("SELECT reason, count(*) FROM raw.input_quarantine WHERE source = ? GROUP BY reason ORDER BY reason",
                        [source]).fetchall()
    return {str(reason): int(n) for reason, n in rows}


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
    files, skipped = _table_inputs(landing, "costs", "costs")
    frame, quarantined = _ingest_table(
        warehouse,
        "raw.focus_costs",
        "costs",
        lambda conn: catalogs.load_focus_costs(conn, files, settings.app_tag, settings.usd_rates),
        skipped,
    )
    by_app = (
        frame.group_by(pl.col("app").fill_null("(unattributed)"))
        .agg(pl.col("effective_cost").sum().alias("effective_cost_usd"), pl.len().alias("rows"))
        .sort("effective_cost_usd", descending=True)
    )
    return _table_result(frame, quarantined, cost_by_app=by_app)


def _landing_table_asset(
    name: str, description: str, load: Callable[[duckdb.DuckDBPyConnection, list[Path]], tuple], owners: list[str]
) -> dg.AssetsDefinition:
    """A landing-zone folder of CSV/Parquet files (name/) as the raw table raw.<name>."""

    @dg.asset(key=name, description=description, kinds={"duckdb"}, owners=owners, group_name=INGEST, pool="warehouse")
    def table(landing: LandingZone, warehouse: DuckDBResource) -> dg.MaterializeResult:
        files, skipped = _table_inputs(landing, name, name)
        return _table_result(*_ingest_table(warehouse, f"raw.{name}", name, lambda conn: load(conn, files), skipped))

    return table


usage_metrics = _landing_table_asset(
    "usage_metrics",
    "Full hourly request counts per service from metrics (the production volume the projections scale).",
    catalogs.load_usage_metrics,
    OWNERS,
)
business_metrics = _landing_table_asset(
    "business_metrics",
    "Business metric deltas per experiment cell (from the experimentation platform), shown beside cost.",
    catalogs.load_business_metrics,
    ["team:experimentation"],
)


ingest_assets = [raw_spans, experiments, services, allocations, focus_costs, usage_metrics, business_metrics]
