"""Typed loading of the landing zone's small tables and catalogs.

Each loader returns (clean rows, quarantined rows). A quarantined row carries the
source file, a reason from a fixed vocabulary and the offending values, so every
input row is either used or counted. Heavy files (FOCUS rows) are parsed by DuckDB.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import polars as pl

from cost_attribution import formats
from cost_attribution.ingest.catalog_schema import (  # noqa: F401  (the catalog half of this module's API)
    EXPERIMENT_SCHEMA,
    SERVICE_SCHEMA,
    CatalogError,
    parse_experiments,
    parse_services,
)
from cost_attribution.warehouse import qualified, read_frame, replace_rows_from

INPUT_QUARANTINE_SCHEMA = {
    "source": pl.Utf8,
    "source_file": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "raw": pl.Utf8,
}


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=INPUT_QUARANTINE_SCHEMA)


class InputFileError(ValueError):
    """A landing-zone table file that cannot be read as a table; names file, problem, fix."""


_REJECTS = ("_csv_rejects", "_csv_reject_scans")


def _csv_options(path: Path) -> str:
    # Compression by magic bytes, not by name (`.CSV.GZ`, or gzip named .csv); ragged
    # rows go to the rejects tables (one quarantine row each) instead of failing the file.
    compression = "gzip" if formats.is_gzip(path) else "none"
    return (f"all_varchar = true, header = true, filename = 'source_file', compression = '{compression}', "
            f"store_rejects = true, rejects_table = '{_REJECTS[0]}', rejects_scan = '{_REJECTS[1]}'")


def _check_columns(conn: duckdb.DuckDBPyConnection, relation: str, path: Path, required: list[str]) -> None:
    present = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM {relation}", [str(path)]).fetchall()]
    missing = [c for c in required if c not in present]
    if missing:
        raise InputFileError(
            f"{path}: lacks the columns {missing} (its header reads {[c for c in present if c != 'source_file'][:12]}). "
            f"Fix: the first line must be a header naming {', '.join(required)} (docs/contract.md)."
        )


def _scan_sql(conn: duckdb.DuckDBPyConnection, files: list[Path], required: list[str]) -> tuple[str, list]:
    """A UNION of all csv/parquet files as all-VARCHAR columns with a source_file column.
    Every file must carry the `required` columns (a clear error names the file if not)."""
    for name in _REJECTS:
        conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
    parts, params = [], []
    for path in files:
        if formats.read_magic(path) == formats.PARQUET_MAGIC:
            relation = "read_parquet(?, filename = 'source_file')"
        else:
            relation = f"read_csv(?, {_csv_options(path)})"
        try:
            _check_columns(conn, relation, path, required)
        except duckdb.Error as error:
            raise InputFileError(f"{path}: cannot be read as a table: {error}. Fix: deliver it as CSV with a header "
                                 "line, or Parquet (docs/contract.md).") from None
        parts.append(f"SELECT * FROM {relation}")
        params.append(str(path))
    return " UNION ALL BY NAME ".join(parts), params


def _columns(conn: duckdb.DuckDBPyConnection, scan: str, params: list) -> set[str]:
    return {r[0] for r in conn.execute(f"DESCRIBE {scan}", params).fetchall()}


# Quarantine rows keep at most this many characters of the offending record.
RAW_CHARS = 2000

# CSV lines with too many or too few fields (DuckDB's rejects tables), one quarantine row
# per line, of the source bound to the parameter; read after the scan ran.
_RAGGED_SQL = f"""
    SELECT CAST(? AS VARCHAR) AS source, s.file_path AS source_file, 'ragged_rows' AS reason,
           'line ' || CAST(e.line AS VARCHAR) || ': ' || min(e.error_message) AS detail, left(any_value(e.csv_line), {RAW_CHARS}) AS raw
    FROM temp.{_REJECTS[0]} e JOIN temp.{_REJECTS[1]} s USING (scan_id, file_id)
    GROUP BY s.file_path, e.line ORDER BY s.file_path, e.line
"""


def _has_rejects(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the last scan left rejects tables (none when no CSV was scanned)."""
    try:
        conn.execute(f"SELECT 1 FROM temp.{_REJECTS[0]}, temp.{_REJECTS[1]} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def _ragged_rows(conn: duckdb.DuckDBPyConnection, source: str) -> pl.DataFrame:
    if not _has_rejects(conn):
        return empty_quarantine()
    return read_frame(conn, _RAGGED_SQL, [source]).cast(INPUT_QUARANTINE_SCHEMA)


def _quarantine_from(frame: pl.DataFrame, source: str, reason_col: str = "reason") -> pl.DataFrame:
    if frame.is_empty():
        return empty_quarantine()
    payload_cols = [c for c in frame.columns if c not in (reason_col, "detail", "source_file")]
    return frame.select(
        pl.lit(source).alias("source"),
        pl.col("source_file").cast(pl.Utf8),
        pl.col(reason_col).alias("reason"),
        pl.col("detail").cast(pl.Utf8) if "detail" in frame.columns else pl.lit(None, pl.Utf8).alias("detail"),
        pl.struct(payload_cols).map_elements(lambda s: json.dumps(s, default=str)[:RAW_CHARS], return_dtype=pl.Utf8).alias("raw"),
    )


# What each input quarantine reason means and how to fix it (the row's `raw` holds the values).
REASON_DETAIL = {
    "bad_charge_period": "ChargePeriodStart is not a timestamp: write ISO 8601, e.g. 2026-10-04T00:00:00Z",
    "bad_effective_cost": "EffectiveCost is not a number",
    "non_finite_cost": "EffectiveCost or BilledCost is NaN or infinite: export the real amount",
    "non_usd_currency": "BillingCurrency is not USD: convert upstream or set AnalysisSettings.usd_rates, e.g. {'EUR': 1.08}",
    "bad_tags": "Tags is not a JSON object",
    "timestamp_out_of_range": "the timestamp is before 2000 or more than two days in the future: a parse accident",
    "bad_hour": "hour is not a timestamp: write ISO 8601, e.g. 2026-10-04T00:00:00Z",
    "missing_service_name": "service is empty",
    "bad_request_count": "requests is missing, negative, NaN or infinite",
    "bad_cpu_seconds": "cpu_seconds is present but not a finite non-negative number (leave it empty when unknown)",
    "duplicate_metric_rows": "a second row for the same (hour, service): the first is kept",
    "missing_allocation_fields": "member_id, experiment_id or cell is empty",
    "bad_allocated_at": "allocated_at is not a timestamp: write ISO 8601, e.g. 2026-10-04T00:00:00Z",
    "unknown_experiment": "experiment_id is not in experiments.yaml",
    "unknown_cell": "cell is not one of the experiment's cells in experiments.yaml",
    "conflicting_allocations": "the member is allocated to two cells of this experiment: all its rows are set aside",
    "duplicate_allocations": "the same allocation again: the earliest is kept",
    "missing_metric_fields": "experiment_id or metric is empty",
    "bad_metric_value": "delta_pct is not a finite number",
}


def _detail_sql(reasons: list[str]) -> tuple[str, list[str]]:
    """REASON_DETAIL of the `reason` column as SQL, with its parameters."""
    return "CASE reason " + " ".join("WHEN ? THEN ?" for _ in reasons) + " END", [
        v for reason in reasons for v in (reason, REASON_DETAIL[reason])]


def _split(
    conn: duckdb.DuckDBPyConnection, typed: pl.DataFrame, schema: dict, source: str, payload: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with a null `reason` are clean (cast to `schema`); the rest become quarantine
    rows of `source` carrying the `payload` columns as their raw record, followed by the
    scan's ragged CSV lines."""
    bad = typed.filter(pl.col("reason").is_not_null()).select(
        "source_file", "reason", pl.col("reason").replace_strict(REASON_DETAIL, default=None, return_dtype=pl.Utf8).alias("detail"),
        *payload,
    )
    good = typed.filter(pl.col("reason").is_null()).select(list(schema)).cast(schema)
    return good, pl.concat([_quarantine_from(bad, source), _ragged_rows(conn, source)])


# Timestamps outside this range are parse accidents (epoch 0, two-digit years, 2100),
# not history: quarantined as timestamp_out_of_range.
EARLIEST_SENSIBLE = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


def _out_of_range(column: str) -> pl.Expr:
    latest = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    seconds = pl.col(column).dt.epoch("s")
    return (seconds < int(EARLIEST_SENSIBLE.timestamp())) | (seconds > int(latest.timestamp()))


def _not_finite(column: str) -> pl.Expr:
    return pl.col(column).is_nan() | pl.col(column).is_infinite()


FOCUS_COLUMNS = [
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ServiceName",
    "ResourceId",
    "SkuId",
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "Tags",
]


def load_focus_costs(
    conn: duckdb.DuckDBPyConnection, files: list[Path], app_tag: str, usd_rates: dict[str, float] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """FOCUS 1.x rows -> typed rows with the application tag pulled out of Tags.

    Rows without the tag stay (app = NULL): they are unattributable but counted.
    Rows whose period or cost cannot be read, or is not finite, are quarantined; so are
    rows billed in another currency than USD unless `usd_rates` (currency -> USD per
    unit) converts them (their costs are then in USD and billing_currency reads USD).
    """
    if not files:
        return pl.DataFrame(schema=FOCUS_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(conn, files, FOCUS_COLUMNS)
    tag_path = "$." + json.dumps(app_tag)
    typed = read_frame(
        conn,
        f"""
        WITH src AS ({scan})
        SELECT
            source_file,
            try_cast(ChargePeriodStart AS TIMESTAMPTZ) AS charge_period_start,
            try_cast(ChargePeriodEnd AS TIMESTAMPTZ) AS charge_period_end,
            ChargeCategory AS charge_category,
            ServiceName AS provider_service,
            ResourceId AS resource_id,
            SkuId AS sku_id,
            try_cast(BilledCost AS DOUBLE) AS billed_cost,
            try_cast(EffectiveCost AS DOUBLE) AS effective_cost,
            BillingCurrency AS billing_currency,
            CASE WHEN Tags IS NULL OR trim(Tags) = '' THEN NULL
                 WHEN json_valid(Tags) THEN json_extract_string(Tags, ?) END AS app,
            Tags IS NOT NULL AND trim(Tags) <> '' AND NOT json_valid(Tags) AS bad_tags,
            ChargePeriodStart AS raw_start, EffectiveCost AS raw_cost
        FROM src
        """,
        [*params, tag_path],
    )
    rates = {"USD": 1.0, **{k.upper(): float(v) for k, v in (usd_rates or {}).items()}}
    currency = pl.col("billing_currency").str.strip_chars().str.to_uppercase()
    rate = currency.replace_strict(rates, default=None, return_dtype=pl.Float64)
    reason = (
        pl.when(pl.col("charge_period_start").is_null())
        .then(pl.lit("bad_charge_period"))
        .when(_out_of_range("charge_period_start"))
        .then(pl.lit("timestamp_out_of_range"))
        .when(pl.col("effective_cost").is_null())
        .then(pl.lit("bad_effective_cost"))
        .when(_not_finite("effective_cost") | _not_finite("billed_cost").fill_null(False))
        .then(pl.lit("non_finite_cost"))
        .when(rate.is_null())
        .then(pl.lit("non_usd_currency"))
        .when(pl.col("bad_tags"))
        .then(pl.lit("bad_tags"))
    )
    typed = typed.with_columns(reason.alias("reason"), rate.alias("_rate"), pl.col("billing_currency").alias("raw_currency"))
    typed = typed.with_columns(
        pl.col("effective_cost") * pl.col("_rate"),
        pl.col("billed_cost") * pl.col("_rate"),
        pl.when(pl.col("_rate").is_not_null()).then(pl.lit("USD")).otherwise(pl.col("billing_currency")).alias("billing_currency"),
    )
    return _split(conn, typed, FOCUS_SCHEMA, "costs", ["raw_start", "raw_cost", "raw_currency", "resource_id"])


FOCUS_SCHEMA = {
    "source_file": pl.Utf8,
    "charge_period_start": pl.Datetime("us", "UTC"),
    "charge_period_end": pl.Datetime("us", "UTC"),
    "charge_category": pl.Utf8,
    "provider_service": pl.Utf8,
    "resource_id": pl.Utf8,
    "sku_id": pl.Utf8,
    "billed_cost": pl.Float64,
    "effective_cost": pl.Float64,
    "billing_currency": pl.Utf8,
    "app": pl.Utf8,
}

USAGE_SCHEMA = {"hour": pl.Datetime("us", "UTC"), "service": pl.Utf8, "requests": pl.Float64, "cpu_seconds": pl.Float64}


def load_usage_metrics(conn: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """hour, service, requests[, cpu_seconds]: full production request counts (and the
    CPU time they used) from metrics. cpu_seconds is NULL when the files lack it.

    A repeated (hour, service) keeps the first row and quarantines the rest, because
    summing two deliveries of the same counter would double the hour's volume."""
    if not files:
        return pl.DataFrame(schema=USAGE_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(conn, files, ["hour", "service", "requests"])
    cpu = "cpu_seconds" if "cpu_seconds" in _columns(conn, scan, params) else "CAST(NULL AS VARCHAR)"
    typed = read_frame(
        conn,
        f"""
        WITH src AS ({scan})
        SELECT source_file, try_cast(hour AS TIMESTAMPTZ) AS hour, service,
               try_cast(requests AS DOUBLE) AS requests, try_cast({cpu} AS DOUBLE) AS cpu_seconds,
               hour AS raw_hour, requests AS raw_requests, CAST({cpu} AS VARCHAR) AS raw_cpu_seconds
        FROM src
        """,
        params,
    )
    bad_cpu = pl.col("raw_cpu_seconds").is_not_null() & (
        pl.col("cpu_seconds").is_null() | (pl.col("cpu_seconds") < 0) | _not_finite("cpu_seconds")
    )
    typed = typed.with_columns(
        pl.when(pl.col("hour").is_null())
        .then(pl.lit("bad_hour"))
        .when(_out_of_range("hour"))
        .then(pl.lit("timestamp_out_of_range"))
        .when(pl.col("service").is_null() | (pl.col("service").str.strip_chars() == ""))
        .then(pl.lit("missing_service_name"))
        .when(pl.col("requests").is_null() | (pl.col("requests") < 0) | _not_finite("requests"))
        .then(pl.lit("bad_request_count"))
        .when(bad_cpu.fill_null(False))
        .then(pl.lit("bad_cpu_seconds"))
        .alias("reason")
    )
    typed = typed.with_columns(
        pl.when(pl.col("reason").is_null() & pl.struct("hour", "service").is_duplicated())
        .then(
            pl.when(pl.int_range(pl.len()).over("hour", "service") > 0).then(pl.lit("duplicate_metric_rows"))
        )
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    return _split(conn, typed, USAGE_SCHEMA, "usage_metrics", ["raw_hour", "service", "raw_requests", "raw_cpu_seconds"])


ALLOCATION_SCHEMA = {
    "experiment_id": pl.Utf8,
    "member_id": pl.Utf8,
    "cell": pl.Utf8,
    "allocated_at": pl.Datetime("us", "UTC"),
    # Epoch nanoseconds, so span-level SQL compares integers on every engine.
    "allocated_at_unix_nano": pl.Int64,
    # The UTC day of the allocation: a member allocated before a day counts all of that
    # day's spans, which lets the span models aggregate per member before joining.
    "allocated_date": pl.Date,
}


ALLOCATIONS_SOURCE = "allocations"
# Reasons in precedence order: a row carries the first that applies.
ALLOCATION_REASONS = ["missing_allocation_fields", "bad_allocated_at", "timestamp_out_of_range", "unknown_experiment",
                      "unknown_cell", "conflicting_allocations", "duplicate_allocations"]
# What stage_allocations leaves on the connection: a view and a temporary table.
CLEAN_ALLOCATIONS, QUARANTINED_ALLOCATIONS = "_allocations_clean", "_allocations_quarantine"
_CLASSIFIED = "_allocations_classified"


def _sensible_range() -> list[dt.datetime]:
    """[earliest, latest] sensible timestamp, as query parameters ("now" moves with the run)."""
    return [EARLIEST_SENSIBLE, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)]


def _allocation_scan(conn: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[str, list]:
    if files:
        return _scan_sql(conn, files, ["member_id", "experiment_id", "cell", "allocated_at"])
    empty = ", ".join(f"CAST(NULL AS VARCHAR) AS {c}" for c in ["source_file", "member_id", "experiment_id", "cell",
                                                                  "allocated_at"])
    return f"SELECT {empty} WHERE false", []


def stage_allocations(
    conn: duckdb.DuckDBPyConnection, files: list[Path], experiments: str = "raw.experiments",
    skipped: str | None = None,
) -> None:
    """member -> experiment cell, typed and classified inside DuckDB: no frame of all rows
    in Python. Leaves on `conn` the view CLEAN_ALLOCATIONS (ALLOCATION_SCHEMA) and the
    temporary table QUARANTINED_ALLOCATIONS (INPUT_QUARANTINE_SCHEMA: the rows set aside with their
    reason, the scan's ragged CSV lines, and the rows of the relation `skipped` if given).

    A row is set aside with the first reason of ALLOCATION_REASONS that applies: missing
    fields, an unreadable or implausible allocated_at, an experiment not in `experiments`
    (a table or view with experiment_id and comma-separated cells) or a cell not among its
    cells; then, among the rows left, a member allocated to two cells of one experiment
    loses all its rows for it (its exposure is ambiguous), and an allocation delivered
    again keeps its earliest row (ties, the same allocation to the microsecond: the row
    of the first file by name, then of the first spelling of the time).
    """
    scan, params = _allocation_scan(conn, files)
    catalog = qualified(experiments)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_CLASSIFIED} AS
        WITH src AS ({scan}),
        typed AS (
            SELECT source_file,
                   CAST(member_id AS VARCHAR) AS member_id, CAST(experiment_id AS VARCHAR) AS experiment_id,
                   CAST(cell AS VARCHAR) AS cell, try_cast(allocated_at AS TIMESTAMPTZ) AS allocated_at,
                   CAST(allocated_at AS VARCHAR) AS raw_allocated_at
            FROM src
        ),
        known_cells AS (SELECT DISTINCT experiment_id, unnest(string_split(cells, ',')) AS cell FROM {catalog}),
        row_level AS (
            SELECT t.*, CASE
                WHEN t.member_id IS NULL OR t.experiment_id IS NULL OR t.cell IS NULL THEN 'missing_allocation_fields'
                WHEN t.allocated_at IS NULL THEN 'bad_allocated_at'
                WHEN t.allocated_at < ? OR t.allocated_at > ? THEN 'timestamp_out_of_range'
                WHEN NOT EXISTS (SELECT 1 FROM {catalog} e WHERE e.experiment_id = t.experiment_id) THEN 'unknown_experiment'
                WHEN k.cell IS NULL THEN 'unknown_cell'
            END AS reason
            FROM typed t LEFT JOIN known_cells k ON k.experiment_id = t.experiment_id AND k.cell = t.cell
        ),
        -- Only a key with two valid rows can conflict or repeat (about 1% of keys): the
        -- window runs on those rows alone, not on every allocation.
        repeated AS (
            SELECT experiment_id, member_id FROM row_level WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1
        )
        SELECT * FROM row_level r
        WHERE reason IS NOT NULL
           OR NOT EXISTS (SELECT 1 FROM repeated p WHERE p.experiment_id = r.experiment_id AND p.member_id = r.member_id)
        UNION ALL
        SELECT * EXCLUDE (first_cell, last_cell, nth) REPLACE (
            CASE WHEN first_cell <> last_cell THEN 'conflicting_allocations'
                 WHEN nth > 1 THEN 'duplicate_allocations' END AS reason)
        FROM (
            SELECT r.*, min(cell) OVER member AS first_cell, max(cell) OVER member AS last_cell,
                   row_number() OVER (member ORDER BY allocated_at, source_file, raw_allocated_at) AS nth
            FROM row_level r SEMI JOIN repeated USING (experiment_id, member_id)
            WHERE r.reason IS NULL
            WINDOW member AS (PARTITION BY r.experiment_id, r.member_id)
        )
        """,
        [*params, *_sensible_range()],
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {CLEAN_ALLOCATIONS} AS
        SELECT experiment_id, member_id, cell, allocated_at,
               epoch_us(allocated_at) * 1000 AS allocated_at_unix_nano,
               CAST(timezone('UTC', allocated_at) AS DATE) AS allocated_date
        FROM {_CLASSIFIED} WHERE reason IS NULL
        """
    )
    payload = ", ".join(f"""'"{c}": ' || coalesce(CAST(to_json({c}) AS VARCHAR), 'null')"""
                        for c in ["member_id", "experiment_id", "cell", "raw_allocated_at"])
    detail, detail_params = _detail_sql(ALLOCATION_REASONS)
    # The same record as _quarantine_from writes with json.dumps (non-ASCII stays UTF-8).
    parts = [f"""SELECT CAST(? AS VARCHAR) AS source, source_file, reason, {detail} AS detail,
                        left('{{' || concat_ws(', ', {payload}) || '}}', {RAW_CHARS}) AS raw
                 FROM {_CLASSIFIED} WHERE reason IS NOT NULL"""]
    quarantine_params = [ALLOCATIONS_SOURCE, *detail_params]
    if _has_rejects(conn):
        parts.append(f"SELECT * FROM ({_RAGGED_SQL})")
        quarantine_params.append(ALLOCATIONS_SOURCE)
    if skipped:
        parts.append(f"SELECT source, source_file, reason, detail, raw FROM {qualified(skipped)}")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {QUARANTINED_ALLOCATIONS} AS {' UNION ALL '.join(parts)}",
                 quarantine_params)


def drop_staged_allocations(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(f"DROP VIEW IF EXISTS temp.{CLEAN_ALLOCATIONS}")
    for table in (_CLASSIFIED, QUARANTINED_ALLOCATIONS, *_REJECTS):
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")


def ingest_allocations(conn: duckdb.DuckDBPyConnection, files: list[Path], skipped: pl.DataFrame | None = None) -> int:
    """Replace raw.allocations and the allocations rows of raw.input_quarantine (plus
    `skipped` files) from `files`, with the known cells of raw.experiments, by
    INSERT ... SELECT inside the warehouse (see stage_allocations). Returns the number of
    allocations written."""
    if skipped is not None:
        conn.register("_skipped_allocation_files", skipped.to_arrow())
    try:
        stage_allocations(conn, files, skipped="_skipped_allocation_files" if skipped is not None else None)
        replace_rows_from(conn, "raw.allocations", CLEAN_ALLOCATIONS)
        replace_rows_from(conn, "raw.input_quarantine", QUARANTINED_ALLOCATIONS, where={"source": ALLOCATIONS_SOURCE})
    finally:
        drop_staged_allocations(conn)
        if skipped is not None:
            conn.unregister("_skipped_allocation_files")
    return conn.execute("SELECT count(*) FROM raw.allocations").fetchall()[0][0]


def load_allocations(
    conn: duckdb.DuckDBPyConnection, files: list[Path], experiments: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """stage_allocations with the catalog as a frame, read back as (clean rows, quarantined
    rows): for benches and tests that want the frames. The asset writes with
    ingest_allocations and never holds them."""
    conn.register("_experiment_catalog", experiments.select("experiment_id", "cells").to_arrow())
    try:
        stage_allocations(conn, files, "_experiment_catalog")
        clean = read_frame(conn, f"SELECT * FROM {CLEAN_ALLOCATIONS} ORDER BY allocated_at, experiment_id, member_id")
        quarantined = read_frame(conn, f"SELECT * FROM {QUARANTINED_ALLOCATIONS}")
    finally:
        drop_staged_allocations(conn)
        conn.unregister("_experiment_catalog")
    return clean.cast(ALLOCATION_SCHEMA), quarantined.cast(INPUT_QUARANTINE_SCHEMA)


BUSINESS_SCHEMA = {
    "experiment_id": pl.Utf8,
    "cell": pl.Utf8,
    "metric": pl.Utf8,
    "delta_pct": pl.Float64,
    "ci_low_pct": pl.Float64,
    "ci_high_pct": pl.Float64,
}


def load_business_metrics(conn: duckdb.DuckDBPyConnection, files: list[Path]) -> tuple[pl.DataFrame, pl.DataFrame]:
    if not files:
        return pl.DataFrame(schema=BUSINESS_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(conn, files, list(BUSINESS_SCHEMA))
    typed = read_frame(
        conn,
        f"""
        WITH src AS ({scan})
        SELECT source_file, experiment_id, cell, metric,
               try_cast(delta_pct AS DOUBLE) AS delta_pct, try_cast(ci_low_pct AS DOUBLE) AS ci_low_pct,
               try_cast(ci_high_pct AS DOUBLE) AS ci_high_pct, delta_pct AS raw_delta
        FROM src
        """,
        params,
    )
    typed = typed.with_columns(
        pl.when(pl.col("experiment_id").is_null() | pl.col("metric").is_null())
        .then(pl.lit("missing_metric_fields"))
        .when(pl.col("delta_pct").is_null() | _not_finite("delta_pct"))
        .then(pl.lit("bad_metric_value"))
        .alias("reason")
    )
    return _split(conn, typed, BUSINESS_SCHEMA, "business_metrics", ["experiment_id", "metric", "raw_delta"])


def cells_without_members(experiments: pl.DataFrame, allocations: pl.DataFrame) -> list[dict]:
    """[{experiment_id, cell}] for every catalog cell no allocated member is in (an
    experiment with an empty control cannot be compared, and must not vanish unsaid).
    `allocations` needs only experiment_id and cell: the rows, or their counts per cell."""
    if experiments.is_empty():
        return []
    present = set(allocations.select("experiment_id", "cell").unique().iter_rows())
    return [
        {"experiment_id": row["experiment_id"], "cell": cell}
        for row in experiments.iter_rows(named=True)
        for cell in row["cells"].split(",")
        if (row["experiment_id"], cell) not in present
    ]
