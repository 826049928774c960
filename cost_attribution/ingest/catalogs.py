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

from cost_attribution.warehouse import read_frame

INPUT_QUARANTINE_SCHEMA = {
    "source": pl.Utf8,
    "source_file": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "raw": pl.Utf8,
}


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=INPUT_QUARANTINE_SCHEMA)


def _scan_sql(files: list[Path]) -> tuple[str, list]:
    """A UNION of all csv/parquet files as all-VARCHAR columns with a source_file column."""
    csvs = [str(f) for f in files if ".csv" in f.name]
    parquets = [str(f) for f in files if f.name.endswith(".parquet")]
    parts, params = [], []
    if csvs:
        parts.append(
            "SELECT * FROM read_csv(?, all_varchar = true, header = true, union_by_name = true, filename = 'source_file')"
        )
        params.append(csvs)
    if parquets:
        parts.append("SELECT * FROM read_parquet(?, union_by_name = true, filename = 'source_file')")
        params.append(parquets)
    return " UNION ALL BY NAME ".join(parts), params


def _quarantine_from(frame: pl.DataFrame, source: str, reason_col: str = "reason") -> pl.DataFrame:
    if frame.is_empty():
        return empty_quarantine()
    payload_cols = [c for c in frame.columns if c not in (reason_col, "detail", "source_file")]
    return frame.select(
        pl.lit(source).alias("source"),
        pl.col("source_file").cast(pl.Utf8),
        pl.col(reason_col).alias("reason"),
        pl.col("detail").cast(pl.Utf8) if "detail" in frame.columns else pl.lit(None, pl.Utf8).alias("detail"),
        pl.struct(payload_cols).map_elements(lambda s: json.dumps(s, default=str)[:2000], return_dtype=pl.Utf8).alias("raw"),
    )


def _split(typed: pl.DataFrame, schema: dict, source: str, payload: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with a null `reason` are clean (cast to `schema`); the rest become quarantine
    rows of `source` carrying the `payload` columns as their raw record."""
    bad = typed.filter(pl.col("reason").is_not_null()).select(
        "source_file", "reason", pl.lit(None, pl.Utf8).alias("detail"), *payload
    )
    good = typed.filter(pl.col("reason").is_null()).select(list(schema)).cast(schema)
    return good, _quarantine_from(bad, source)


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
    conn: duckdb.DuckDBPyConnection, files: list[Path], app_tag: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """FOCUS 1.x rows -> typed rows with the application tag pulled out of Tags.

    Rows without the tag stay (app = NULL): they are unattributable but counted.
    Rows whose period or EffectiveCost cannot be read are quarantined.
    """
    if not files:
        return pl.DataFrame(schema=FOCUS_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(files)
    present = {r[0] for r in conn.execute(f"DESCRIBE {scan}", params).fetchall()}
    missing = [c for c in FOCUS_COLUMNS if c not in present]
    if missing:
        raise ValueError(f"FOCUS cost files lack required columns {missing}: {[str(f) for f in files]}")
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
    reason = (
        pl.when(pl.col("charge_period_start").is_null())
        .then(pl.lit("bad_charge_period"))
        .when(pl.col("effective_cost").is_null())
        .then(pl.lit("bad_effective_cost"))
        .when(pl.col("bad_tags"))
        .then(pl.lit("bad_tags"))
    )
    typed = typed.with_columns(reason.alias("reason"))
    return _split(typed, FOCUS_SCHEMA, "costs", ["raw_start", "raw_cost", "resource_id"])


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
    """hour, service, requests: full production request counts from metrics.

    A repeated (hour, service) keeps the first row and quarantines the rest, because
    summing two deliveries of the same counter would double the hour's volume."""
    if not files:
        return pl.DataFrame(schema=USAGE_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(files)
    present = {r[0] for r in conn.execute(f"DESCRIBE {scan}", params).fetchall()}
    # cpu_seconds is optional: the CPU time the hour's requests used (load driver of the cost models).
    cpu = "try_cast(cpu_seconds AS DOUBLE)" if "cpu_seconds" in present else "CAST(NULL AS DOUBLE)"
    typed = read_frame(
        conn,
        f"""
        WITH src AS ({scan})
        SELECT source_file, try_cast(hour AS TIMESTAMPTZ) AS hour, service,
               try_cast(requests AS DOUBLE) AS requests, {cpu} AS cpu_seconds,
               hour AS raw_hour, requests AS raw_requests
        FROM src
        """,
        params,
    )
    typed = typed.with_columns(
        pl.when(pl.col("hour").is_null())
        .then(pl.lit("bad_hour"))
        .when(pl.col("service").is_null() | (pl.col("service").str.strip_chars() == ""))
        .then(pl.lit("missing_service_name"))
        .when(pl.col("requests").is_null() | (pl.col("requests") < 0) | pl.col("requests").is_nan())
        .then(pl.lit("bad_request_count"))
        .when(pl.col("cpu_seconds").is_not_null() & ((pl.col("cpu_seconds") < 0) | ~pl.col("cpu_seconds").is_finite()))
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
    return _split(typed, USAGE_SCHEMA, "usage_metrics", ["raw_hour", "service", "raw_requests"])


EXPERIMENT_SCHEMA = {
    "experiment_id": pl.Utf8,
    "name": pl.Utf8,
    "control_cell": pl.Utf8,
    "cells": pl.Utf8,  # comma-separated: portable to every SQL engine the dbt models target
    "start_date": pl.Date,
    "owner": pl.Utf8,
    "weights": pl.Utf8,  # JSON list aligned with cells: the intended split (NULL = even)
    "kind": pl.Utf8,  # ab | aa (calibration: no effect expected)
    "shipped_cell": pl.Utf8,  # optional shipped: {cell, date}: the cell that went to 100% ...
    "shipped_date": pl.Date,  # ... from 00:00 UTC that day (NULL: not shipped)
}


def parse_experiments(catalog: dict) -> pl.DataFrame:
    """experiments.yaml -> one row per experiment; a malformed entry is a clear error,
    because a silently skipped experiment would be a silently missing cost."""
    rows = []
    for index, entry in enumerate(catalog.get("experiments") or []):
        if not isinstance(entry, dict) or not entry.get("id"):
            raise ValueError(f"experiments.yaml entry {index} has no id: {entry!r}")
        cells = [str(c) for c in entry.get("cells") or []]
        control = str(entry.get("control_cell") or "control")
        if cells and control not in cells:
            raise ValueError(f"experiment {entry['id']}: control_cell {control!r} is not one of its cells {cells}")
        weights = entry.get("weights")
        if weights is not None:
            if not isinstance(weights, list) or len(weights) != len(cells or [control, "treatment"]):
                raise ValueError(f"experiment {entry['id']}: weights {weights!r} must list one number per cell")
            weights = [float(w) for w in weights]
            if any(not (w >= 0) for w in weights) or sum(weights) <= 0:
                raise ValueError(f"experiment {entry['id']}: weights {weights!r} must be non-negative with a positive sum")
            weights = [w / sum(weights) for w in weights]
        shipped_cell, shipped_date = _parse_shipped(entry, cells or [control, "treatment"], control)
        start = entry.get("start")
        if isinstance(start, str):
            start = dt.date.fromisoformat(start[:10])
        elif isinstance(start, dt.datetime):
            start = start.date()
        rows.append(
            {
                "experiment_id": str(entry["id"]),
                "name": str(entry.get("name") or entry["id"]),
                "control_cell": control,
                "cells": ",".join(cells or [control, "treatment"]),
                "start_date": start,
                "owner": None if entry.get("owner") is None else str(entry["owner"]),
                "weights": None if weights is None else json.dumps(weights),
                "kind": str(entry.get("kind") or "ab"),
                "shipped_cell": shipped_cell,
                "shipped_date": shipped_date,
            }
        )
    frame = pl.DataFrame(rows, schema=EXPERIMENT_SCHEMA)
    duplicated = frame.filter(pl.col("experiment_id").is_duplicated())["experiment_id"].unique().to_list()
    if duplicated:
        raise ValueError(f"experiments.yaml lists these ids more than once: {duplicated}")
    return frame


def _parse_shipped(entry: dict, cells: list[str], control: str) -> tuple[str | None, dt.date | None]:
    """`shipped: {cell, date}` -> (cell, date); absent -> (None, None)."""
    shipped = entry.get("shipped")
    if shipped is None:
        return None, None
    fix = "write shipped: {cell: <a treatment cell>, date: YYYY-MM-DD}"
    if not isinstance(shipped, dict) or shipped.get("cell") is None or shipped.get("date") is None:
        raise ValueError(f"experiments.yaml: experiment {entry['id']}: shipped {shipped!r} needs a cell and a date; {fix}")
    cell, day = str(shipped["cell"]), shipped["date"]
    if cell not in cells or cell == control:
        raise ValueError(f"experiments.yaml: experiment {entry['id']}: shipped cell {cell!r} is not one of its "
                         f"treatment cells {[c for c in cells if c != control]}; {fix}")
    try:
        day = day.date() if isinstance(day, dt.datetime) else day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day)[:10])
    except ValueError:
        raise ValueError(f"experiments.yaml: experiment {entry['id']}: shipped date {day!r} is not a date; {fix}") from None
    return cell, day


SERVICE_SCHEMA = {"service": pl.Utf8, "owner": pl.Utf8, "deprecated": pl.Boolean, "tier": pl.Int64}


def parse_services(catalog: dict) -> pl.DataFrame:
    rows = []
    for index, entry in enumerate(catalog.get("services") or []):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ValueError(f"services.yaml entry {index} has no name: {entry!r}")
        tier = entry.get("tier")
        rows.append(
            {
                "service": str(entry["name"]),
                "owner": None if entry.get("owner") is None else str(entry["owner"]),
                "deprecated": bool(entry.get("deprecated", False)),
                "tier": None if tier is None else int(tier),
            }
        )
    return pl.DataFrame(rows, schema=SERVICE_SCHEMA)


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


def load_allocations(
    conn: duckdb.DuckDBPyConnection, files: list[Path], experiments: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """member -> experiment cell. Quarantines rows with missing fields, unknown
    experiments or cells, and members allocated to two cells of one experiment
    (their exposure is ambiguous, so all their rows for that experiment go)."""
    if not files:
        return pl.DataFrame(schema=ALLOCATION_SCHEMA), empty_quarantine()
    scan, params = _scan_sql(files)
    typed = read_frame(
        conn,
        f"""
        WITH src AS ({scan})
        SELECT source_file, CAST(member_id AS VARCHAR) AS member_id, CAST(experiment_id AS VARCHAR) AS experiment_id,
               CAST(cell AS VARCHAR) AS cell, try_cast(allocated_at AS TIMESTAMPTZ) AS allocated_at,
               CAST(allocated_at AS VARCHAR) AS raw_allocated_at
        FROM src
        """,
        params,
    )
    known_cells = {
        row["experiment_id"]: set(row["cells"].split(",")) for row in experiments.iter_rows(named=True)
    }
    cell_ok = pl.struct("experiment_id", "cell").map_elements(
        lambda r: r["cell"] in known_cells.get(r["experiment_id"], set()), return_dtype=pl.Boolean
    )
    typed = typed.with_columns(
        pl.when(pl.col("member_id").is_null() | pl.col("experiment_id").is_null() | pl.col("cell").is_null())
        .then(pl.lit("missing_allocation_fields"))
        .when(pl.col("allocated_at").is_null())
        .then(pl.lit("bad_allocated_at"))
        .when(~pl.col("experiment_id").is_in(list(known_cells)))
        .then(pl.lit("unknown_experiment"))
        .when(~cell_ok)
        .then(pl.lit("unknown_cell"))
        .alias("reason")
    )
    valid = typed.filter(pl.col("reason").is_null())
    conflicting = (
        valid.group_by("experiment_id", "member_id")
        .agg(pl.col("cell").n_unique().alias("n_cells"))
        .filter(pl.col("n_cells") > 1)
        .select("experiment_id", "member_id", pl.lit(True).alias("conflict"))
    )
    typed = (
        typed.join(conflicting, on=["experiment_id", "member_id"], how="left")
        .with_columns(
            pl.when(pl.col("reason").is_null() & pl.col("conflict").fill_null(False))
            .then(pl.lit("conflicting_allocations"))
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
        .drop("conflict")
    )
    # The same allocation delivered twice is one allocation: keep the earliest, count the rest.
    typed = typed.sort("allocated_at", nulls_last=True).with_columns(
        pl.when(pl.col("reason").is_null() & (pl.int_range(pl.len()).over("experiment_id", "member_id") > 0))
        .then(pl.lit("duplicate_allocations"))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    typed = typed.with_columns(pl.col("allocated_at").dt.convert_time_zone("UTC").dt.cast_time_unit("us")).with_columns(
        (pl.col("allocated_at").dt.epoch("us") * 1000).alias("allocated_at_unix_nano"),
        pl.col("allocated_at").dt.date().alias("allocated_date"),
    )
    return _split(typed, ALLOCATION_SCHEMA, "allocations", ["member_id", "experiment_id", "cell", "raw_allocated_at"])


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
    scan, params = _scan_sql(files)
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
        .when(pl.col("delta_pct").is_null())
        .then(pl.lit("bad_metric_value"))
        .alias("reason")
    )
    return _split(typed, BUSINESS_SCHEMA, "business_metrics", ["experiment_id", "metric", "raw_delta"])
