"""DuckDB-native ingest of a day of flat span Parquet (the landing-zone contract's columns).

    ingest_parquet_day(conn, files, dt, sampling_floor=...) -> {"spans": n, <quarantine reason>: n, ...}

Same rows in raw.spans and raw.span_quarantine as ``read_span_files`` + ``replace_rows``
(the polars path, whose rules live in ``readers.raw_spans.finalize_frame`` and
``split_duplicates``), but validated, normalised and deduplicated by SQL over
``read_parquet`` so the day's spans stream from the files into the day's file of the span
lake (span_lake.py) instead of being materialised as a polars frame first. A 10M-span day
(21 files, 2 cores, load ~1.8): 11.6 s and 1.0 GB peak RSS, against 23.5 s and 8.0 GB for
the polars path.

Passes over the files: (1) validate every row, keeping only the locations of rejected
rows and the hashes of keys accepted more than once, and count the accepted rows that
normalising would change; (2) re-read just those rows (for quarantine text and file
order) and rank the duplicates; (3) write every other row. A clean delivery skips (3):
when every accepted row is already in the lake's normal form (lowercase ids, canonical
kind, trimmed service, a peer only on outbound spans), no file needs the polars reader
and at most a thousand rows in at most 16 files are left out, the files are copied into
the lake as they are and the view skips the left-out rows by row number
(span_lake.DayFile). At 10M spans that is a byte copy instead of decoding and
re-encoding every span (bench/README.md).

A file whose schema the SQL rules do not cover exactly (binary ids, string or datetime
timestamps, string sampling probabilities, missing columns, unreadable) is read by the
polars reader instead and its spans join the same cross-file dedupe, in file order.

One transaction: the day's old quarantine rows are replaced and raw.spans is pointed at
the new span file, so a rerun replaces the day and a failure leaves the previous state.
File paths and values are bound parameters; identifiers are quoted (the span file's path
is a quoted literal: COPY takes no parameter there).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from cost_attribution.ingest.readers import read_partition_file
from cost_attribution.ingest.readers.flat_parquet import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from cost_attribution.ingest.readers.raw_spans import _KIND_BY_SPELLING
from cost_attribution.ingest.spans import (
    DEFAULT_SAMPLING_PROBABILITY_FLOOR,
    QUARANTINE_SCHEMA,
    RAW_TEXT_LIMIT,
    SPAN_SCHEMA,
    duckdb_type,
    partition_bounds_nanos,
)
from cost_attribution.ingest import span_lake
from cost_attribution.warehouse import quote_ident, rollback_quietly

_log = logging.getLogger(__name__)

SPANS_TABLE = span_lake.SPANS_VIEW
QUARANTINE_TABLE = "raw.span_quarantine"

# DuckDB types the SQL rules reproduce exactly (anything else -> polars reader).
_TEXT_TYPES = {"VARCHAR", '"NULL"'}
_INT_TYPES = {"BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT"}
_FLOAT_TYPES = {"DOUBLE", "FLOAT", '"NULL"'}
_TEXT_COLUMNS = ("trace_id", "span_id", "parent_span_id", "service", "kind", "name", "peer_service", "member_id")
_TIME_COLUMNS = ("start_unix_nano", "end_unix_nano")
_KNOWN_COLUMNS = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
_GLOB_CHARS = set("*?[]{}")

# Rust's str::trim (what polars' str.strip_chars() uses) strips Unicode White_Space.
UNICODE_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# (file order, row) packed into one BIGINT to locate a row.
_LOCATION_STRIDE = 1 << 40
_EXCLUDED_LIST_MAX = 1000
# A delivered file with rows to skip is a scan of its own in raw.spans (span_lake): a day
# with more such files is rewritten instead, so the view stays a few scans a day.
_SKIPPING_FILES_MAX = 16

# Same order and texts as finalize_frame's reason_and_detail (first match wins).
_RULE_REASONS = (
    "bad_ids",
    "bad_ids",
    "bad_ids",
    "bad_kinds",
    "bad_timestamps",
    "negative_duration_spans",
    "missing_service_name",
    "bad_sampling_probability",
    "sampling_probability_below_floor",
    "timestamp_outside_partition",
)


def _create_table_sql(table: str, schema: dict[str, pl.DataType]) -> str:
    """The table replace_rows would create from a frame of `schema` (same names and types)."""
    columns = ", ".join(f"{quote_ident(name)} {duckdb_type(dtype)}" for name, dtype in schema.items())
    return f"CREATE TABLE IF NOT EXISTS {_qualified(table)} ({columns})"


def _qualified(table: str) -> str:
    return ".".join(quote_ident(part) for part in table.split("."))


def fast_path_schema(conn: duckdb.DuckDBPyConnection, path: Path) -> tuple[tuple[str, str], ...] | None:
    """The file's (column, DuckDB type) list when the SQL rules cover it exactly, else None."""
    text = str(path)
    if _GLOB_CHARS & set(text) or not path.is_file():
        return None
    try:
        rows = conn.execute("DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [text]).fetchall()
    except duckdb.Error:
        return None
    schema = tuple((str(row[0]), str(row[1])) for row in rows)
    names = [name for name, _ in schema]
    lowered = [name.lower() for name in names]
    # DuckDB binds identifiers case-insensitively, polars does not: only exact spellings.
    if len(set(lowered)) != len(lowered):
        return None
    if any(low in _KNOWN_COLUMNS and name not in _KNOWN_COLUMNS for name, low in zip(names, lowered)):
        return None
    types = dict(schema)
    if any(column not in types for column in REQUIRED_COLUMNS):
        return None
    if any(t == "BLOB" for t in types.values()):  # raw ids: hex-encoded by the polars reader
        return None
    for column in _TEXT_COLUMNS:
        if column in types and types[column] not in _TEXT_TYPES:
            return None
    for column in _TIME_COLUMNS:
        if types[column] not in _INT_TYPES:
            return None
    if "sampling_probability" in types and types["sampling_probability"] not in _FLOAT_TYPES:
        return None
    return schema


def _kind_mapping(values: list[str | None]) -> dict[str, list]:
    """The exact polars kind normalisation of each distinct raw kind, as a DuckDB MAP."""
    distinct = pl.Series("kind", [v for v in values if v is not None] + list(_KIND_BY_SPELLING), dtype=pl.Utf8).unique()
    mapped = distinct.str.strip_chars().str.to_uppercase().replace_strict(_KIND_BY_SPELLING, default=None, return_dtype=pl.Utf8)
    pairs = pl.DataFrame({"key": distinct, "value": mapped}).drop_nulls("value")
    return {"key": pairs["key"].to_list(), "value": pairs["value"].to_list()}


def _group_relation(group: int, schema: tuple[tuple[str, str], ...], rows_of_interest: bool = False) -> str:
    """Validated rows of one schema group: normalised span columns, `_rule` (index into
    _RULE_REASONS, NULL = accepted) and what quarantine rows print.

    rows_of_interest: only rows whose cheaply normalised key hashes into _pq_dupkeys or
    whose location is in _pq_rejects, filtered before the expensive id checks run."""
    types = dict(schema)

    def text(column: str) -> str:
        return f"CAST(src.{quote_ident(column)} AS VARCHAR)" if column in types else "CAST(NULL AS VARCHAR)"

    def nanos(column: str) -> str:
        return f"TRY_CAST(src.{quote_ident(column)} AS BIGINT)"

    sampling = "CAST(src.\"sampling_probability\" AS DOUBLE)" if "sampling_probability" in types else "CAST(NULL AS DOUBLE)"
    files, order = f"$files_{group}", f"$order_{group}"
    file_idx = f"CAST({order}[CAST(src.file_index AS BIGINT) + 1] AS BIGINT)"
    where = ""
    if rows_of_interest:
        cheap_key = f"lower({text('trace_id')}), lower({text('span_id')}), trim({text('service')}, $ws), $kinds[{text('kind')}]"
        where = f"""WHERE hash({cheap_key}) IN (SELECT h FROM _pq_dupkeys)
            OR {file_idx} * {_LOCATION_STRIDE} + CAST(src.file_row_number AS BIGINT) IN (SELECT loc FROM _pq_rejects)"""
    l1 = f"""
        SELECT
            {file_idx} AS _file_idx,
            CAST(src.file_row_number AS BIGINT) AS _row,
            {files}[CAST(src.file_index AS BIGINT) + 1] AS _source_file,
            {text("trace_id")} AS t_raw,
            {text("span_id")} AS s_raw,
            {text("parent_span_id")} AS p_raw,
            {text("service")} AS svc_raw,
            {text("kind")} AS kind_raw,
            {text("name")} AS name,
            {text("peer_service")} AS peer_raw,
            {text("member_id")} AS member_id,
            {nanos("start_unix_nano")} AS st,
            {nanos("end_unix_nano")} AS en,
            CAST(src."start_unix_nano" AS VARCHAR) AS st_txt,
            CAST(src."end_unix_nano" AS VARCHAR) AS en_txt,
            {sampling} AS attr,
            to_json(src) AS _record
        FROM read_parquet({files}, hive_partitioning = false) AS src
        {where}
    """
    # Ids: exactly 32/16 hex digits (any case) -> lowercase; all-zero trace/span id invalid.
    # (Mixed-case ids are rare: lower() only runs for the ids the lowercase check misses.)
    def hex_id(column: str, n_hex: int) -> str:
        return (f"CASE WHEN regexp_full_match({column}, '[0-9a-f]{{{n_hex}}}') THEN {column} "
                f"WHEN regexp_full_match({column}, '[0-9a-fA-F]{{{n_hex}}}') THEN lower({column}) END")

    l2 = f"""
        SELECT
            l1.*,
            NULLIF({hex_id("t_raw", 32)}, '{"0" * 32}') AS tid,
            NULLIF({hex_id("s_raw", 16)}, '{"0" * 16}') AS sid,
            {hex_id("p_raw", 16)} AS pc,
            $kinds[kind_raw] AS kind_norm,
            trim(svc_raw, $ws) AS svc_trim
        FROM ({l1}) AS l1
    """
    return f"""
        SELECT
            l2.*,
            CASE
                WHEN tid IS NULL THEN 0
                WHEN sid IS NULL THEN 1
                -- trim() only for the few invalid parents: on 10M distinct ids it costs seconds.
                WHEN pc IS NULL AND p_raw IS NOT NULL AND trim(p_raw, $ws) <> '' THEN 2
                WHEN kind_norm IS NULL THEN 3
                WHEN st IS NULL OR en IS NULL OR st <= 0 OR en <= 0 THEN 4
                WHEN en < st THEN 5
                WHEN svc_raw IS NULL OR svc_trim = '' THEN 6
                WHEN attr IS NOT NULL AND NOT (attr > 0 AND attr <= 1) THEN 7
                WHEN COALESCE(attr, 1.0) < $sampling_floor THEN 8
                WHEN st < $low OR st >= $high THEN 9
            END AS _rule,
            -- An accepted row the lake would store differently from how it was delivered.
            t_raw <> tid OR s_raw <> sid OR p_raw IS DISTINCT FROM NULLIF(pc, '{"0" * 16}')
                OR svc_raw <> svc_trim OR kind_raw <> kind_norm
                OR (peer_raw IS NOT NULL AND kind_norm NOT IN ('CLIENT', 'PRODUCER')) AS _abnormal
        FROM ({l2}) AS l2
    """


def _detail_cases() -> tuple[str, str]:
    shown = "COALESCE({}, '<missing>')"
    details = [
        f"'trace_id ''' || {shown.format('t_raw')} || ''' is not a valid 16-byte id'",
        f"'span_id ''' || {shown.format('s_raw')} || ''' is not a valid 8-byte id'",
        f"'parent_span_id ''' || {shown.format('p_raw')} || ''' is not a valid 8-byte id'",
        f"'unknown span kind ''' || {shown.format('kind_raw')} || ''''",
        f"'start ''' || {shown.format('st_txt')} || ''' / end ''' || {shown.format('en_txt')} "
        "|| ''' must be positive integer unix nanoseconds'",
        "'end ' || CAST(en AS VARCHAR) || ' is before start ' || CAST(st AS VARCHAR)",
        "'no service.name for the emitting service'",
        "'sampling.probability ' || CAST(attr AS VARCHAR) || ' is not in (0, 1]'",
        "'sampling probability ' || CAST(attr AS VARCHAR) || ' is below the floor ' || $floor_text",
        "'start ' || CAST(st AS VARCHAR) || ' is not within a day of the partition ' || CAST(CAST($dt AS DATE) AS VARCHAR)",
    ]
    reason = "CASE _rule " + " ".join(f"WHEN {i} THEN '{r}'" for i, r in enumerate(_RULE_REASONS)) + " END"
    detail = "CASE _rule " + " ".join(f"WHEN {i} THEN {d}" for i, d in enumerate(details)) + " END"
    return reason, detail


_REASON, _DETAIL = _detail_cases()
_KEY = "trace_id, span_id, service, kind"
_SPAN_COLUMNS = list(SPAN_SCHEMA)
_QUARANTINE_COLUMNS = list(QUARANTINE_SCHEMA)


def _span_select(relation: str, where: str) -> str:
    """Normalised span columns as finalize_frame's accepted frame holds them, plus file
    order, location, `_rule` and (for rejected rows) the quarantine reason/detail/raw."""
    return f"""
        SELECT
            _file_idx, _row, _source_file, _rule, _abnormal,
            CAST($dt AS DATE) AS dt,
            tid AS trace_id,
            sid AS span_id,
            NULLIF(pc, '{"0" * 16}') AS parent_span_id,
            svc_trim AS service,
            kind_norm AS kind,
            name,
            st AS start_unix_nano,
            en AS end_unix_nano,
            CASE WHEN kind_norm IN ('CLIENT', 'PRODUCER') THEN peer_raw END AS peer_service,
            member_id,
            COALESCE(attr, 1.0) AS sampling_probability,
            {_REASON} AS reason,
            {_DETAIL} AS detail,
            CASE WHEN _rule IS NOT NULL THEN substring(_record, 1, {RAW_TEXT_LIMIT}) END AS raw
        FROM ({relation}) AS v
        WHERE {where}
    """


def _union(groups: list[str], where: str, fallback_where: str | None) -> str:
    """One SELECT per schema group (each over its own read_parquet) plus the fallback spans."""
    parts = [_span_select(relation, where) for relation in groups]
    if fallback_where is not None:
        columns = ", ".join(quote_ident(c) for c in _SPAN_COLUMNS)
        no_quarantine = "CAST(NULL AS VARCHAR) AS reason, CAST(NULL AS VARCHAR) AS detail, CAST(NULL AS VARCHAR) AS raw"
        parts.append(
            f"SELECT _file_idx, _row, _source_file, CAST(NULL AS INTEGER) AS _rule, CAST(NULL AS BOOLEAN) AS _abnormal, "
            f"{columns}, {no_quarantine} "
            f"FROM _pq_fallback_spans WHERE {fallback_where}"
        )
    return " UNION ALL ".join(f"({part})" for part in parts)


def _duplicates_sql() -> str:
    span_struct = ", ".join(f"{quote_ident(c)} := {quote_ident(c)}" for c in _SPAN_COLUMNS)
    return f"""
        SELECT
            dt,
            _source_file AS source_file,
            CAST(NULL AS BIGINT) AS line_no,
            'duplicate_spans' AS reason,
            'same (trace_id, span_id, service, kind) as the span kept from ' || _first_at || ' line -' AS detail,
            trace_id,
            span_id,
            substring(to_json(struct_pack({span_struct})), 1, {RAW_TEXT_LIMIT}) AS raw
        FROM _pq_dups
        WHERE _rn > 1
    """


def _fallback_frames(
    files: Sequence[tuple[int, Path]], dt: datetime.date, sampling_floor: float
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    span_frames, quarantine_frames = [], []
    for order, path in files:
        spans, quarantine = read_partition_file(path, dt, sampling_floor)
        span_frames.append(
            spans.select(
                pl.lit(order, dtype=pl.Int64).alias("_file_idx"),
                pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
                pl.col("_source_file"),
                *_SPAN_COLUMNS,
            ).cast(SPAN_SCHEMA | {"_source_file": pl.Utf8})
        )
        quarantine_frames.append(quarantine.select(_QUARANTINE_COLUMNS).cast(QUARANTINE_SCHEMA))
    if not span_frames:
        return None, None
    return pl.concat(span_frames), pl.concat(quarantine_frames)


def ingest_parquet_day(
    conn: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    dt: datetime.date,
    memory_limit: str | None = None,
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> dict[str, int]:
    """Replace the day's raw.spans / raw.span_quarantine rows by what `files` (flat span
    Parquet, in this order) hold. Returns {"spans": rows inserted, reason: quarantined}.

    memory_limit (e.g. "2GB") caps DuckDB for this call; the connection's setting is
    restored afterwards. A span sampled below sampling_floor is quarantined
    (AnalysisSettings.sampling_probability_floor)."""
    paths = [Path(p) for p in files]
    fast: list[tuple[int, Path, tuple]] = []
    fallback: list[tuple[int, Path]] = []
    seen: set[str] = set()
    for order, path in enumerate(paths):
        schema = None if str(path) in seen else fast_path_schema(conn, path)
        seen.add(str(path))
        if schema is None:
            fallback.append((order, path))
        else:
            fast.append((order, path, schema))
    if fallback:
        _log.info("%d of %d Parquet files off the fast path, read with polars: %s", len(fallback), len(paths),
                  [str(p) for _, p in fallback])
    return _ingest(conn, fast, fallback, dt, memory_limit, float(sampling_floor))


def _ingest(conn, fast, fallback, dt, memory_limit, sampling_floor: float) -> dict[str, int]:
    groups: dict[tuple, list[tuple[int, Path]]] = {}
    for order, path, schema in fast:
        groups.setdefault(schema, []).append((order, path))
    low, high = partition_bounds_nanos(dt)
    params: dict[str, object] = {"dt": dt, "ws": UNICODE_WHITESPACE, "low": low, "high": high,
                                 "sampling_floor": sampling_floor, "floor_text": f"{sampling_floor:g}"}
    pass_one: list[str] = []
    interesting: list[str] = []
    raw_kinds: list[str | None] = []
    for g, (schema, members) in enumerate(groups.items()):
        params[f"files_{g}"] = [str(p) for _, p in members]
        params[f"order_{g}"] = [o for o, _ in members]
        pass_one.append(_group_relation(g, schema))
        interesting.append(_group_relation(g, schema, rows_of_interest=True))
        raw_kinds += [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT CAST(kind AS VARCHAR) FROM read_parquet($files, hive_partitioning = false)",
                {"files": params[f"files_{g}"]},
            ).fetchall()
        ]
    params["kinds"] = _kind_mapping(raw_kinds)

    fallback_spans, fallback_quarantine = _fallback_frames(fallback, dt, sampling_floor)
    has_fallback = fallback_spans is not None
    if has_fallback:
        conn.register("_pq_fallback_spans", fallback_spans.to_arrow())
        conn.register("_pq_fallback_quarantine", fallback_quarantine.to_arrow())

    def bound(sql: str) -> dict:
        return {k: v for k, v in params.items() if f"${k}" in sql}

    def run(label: str, sql: str) -> list[tuple]:
        started = time.perf_counter()
        rows = conn.execute(sql, bound(sql)).fetchall()
        _log.debug("%s: %.2f s", label, time.perf_counter() - started)
        return rows

    quarantine_table = _qualified(QUARANTINE_TABLE)
    span_columns = ", ".join(quote_ident(c) for c in _SPAN_COLUMNS)
    quarantine_columns = ", ".join(quote_ident(c) for c in _QUARANTINE_COLUMNS)
    candidate = f"hash({_KEY}) IN (SELECT h FROM _pq_dupkeys)"
    accepted_fallback = "true" if has_fallback else None

    previous = _settings(conn, ("preserve_insertion_order", "memory_limit"))
    conn.execute("SET preserve_insertion_order = false")  # order comes from (_file_idx, _row)
    if memory_limit:
        conn.execute("SET memory_limit = ?", [memory_limit])
    try:
        try:
            lake = begin_day_replacement(conn, dt)
            inserted, day_files = 0, []
            delivered = {path: _identity(path) for _, path, _ in fast}
            if pass_one or has_fallback:
                # Rejects and duplicates are found first, then the spans written once (a file
                # is written front to back: nothing in it can be taken out again).
                # 1. Validating pass, no output but two small sets: the locations of rejected
                #    rows, and the hashes of keys accepted more than once (8 bytes a span);
                #    and, over the whole day (the empty grouping set), how many accepted rows
                #    are not in the lake's normal form.
                run("find rejects and repeated keys", f"""CREATE OR REPLACE TEMP TABLE _pq_prepass AS
                    SELECT h, GROUPING(h) = 1 AS whole_day,
                        list(loc) FILTER (WHERE _rule IS NOT NULL) AS locs,
                        count(*) FILTER (WHERE _rule IS NULL AND _abnormal) AS abnormal
                    FROM (
                        SELECT CASE WHEN _rule IS NULL THEN hash({_KEY}) END AS h, _rule, _abnormal,
                               _file_idx * {_LOCATION_STRIDE} + _row AS loc
                        FROM ({_union(pass_one, 'true', accepted_fallback)})
                    )
                    GROUP BY GROUPING SETS ((h), ())
                    HAVING GROUPING(h) = 1 OR count(*) > 1 OR h IS NULL""")
                run("duplicate keys", "CREATE OR REPLACE TEMP TABLE _pq_dupkeys AS "
                    "SELECT h FROM _pq_prepass WHERE NOT whole_day AND h IS NOT NULL")
                run("reject locations", "CREATE OR REPLACE TEMP TABLE _pq_rejects AS "
                    "SELECT unnest(locs) AS loc FROM _pq_prepass WHERE NOT whole_day AND h IS NULL")
                [(abnormal,)] = run("rows to normalise", "SELECT abnormal FROM _pq_prepass WHERE whole_day")
                # 2. Only the rows of interest (duplicate candidates, rejects) read again and
                #    fully validated, for their quarantine text and file order.
                run("rejects and candidates", "CREATE OR REPLACE TEMP TABLE _pq_special AS " + _union(
                    interesting, "true", candidate if has_fallback else None))
                # 3. Exact comparison among the candidates (a hash match may be a collision):
                #    the first copy by (file order, row order) is kept, the others quarantined.
                run("rank candidates", f"""CREATE OR REPLACE TEMP TABLE _pq_dups AS
                    SELECT *, row_number() OVER w AS _rn, first_value(_source_file) OVER w AS _first_at
                    FROM _pq_special WHERE _rule IS NULL
                    WINDOW w AS (PARTITION BY {_KEY} ORDER BY _file_idx, _row)""")
                run("duplicate locations", f"""CREATE OR REPLACE TEMP TABLE _pq_losers AS
                    SELECT _file_idx * {_LOCATION_STRIDE} + _row AS loc FROM _pq_dups WHERE _rn > 1""")
                # 4. The writing pass: every row but the rejected and duplicate ones (known by
                #    location, so the filter runs on two scan columns before the id checks, which
                #    then run once, for the rows written), straight into the day's span file.
                run("excluded locations", "CREATE OR REPLACE TEMP TABLE _pq_excluded AS "
                    "SELECT loc FROM _pq_rejects UNION ALL SELECT loc FROM _pq_losers")
                excluded = [row[0] for row in run("excluded list", f"SELECT loc FROM _pq_excluded LIMIT {_EXCLUDED_LIST_MAX + 1}")]
                n_excluded = run("count excluded", "SELECT count(*) FROM _pq_excluded")[0][0]
                started = time.perf_counter()
                skipped = _rows_by_file(excluded)
                if (not has_fallback and not abnormal and len(excluded) <= _EXCLUDED_LIST_MAX
                        and len(skipped) <= _SKIPPING_FILES_MAX):
                    day_files = _copy_in(fast, skipped, dt, lake, delivered)
                    inserted = sum(_row_counts(conn, [f.path for f in day_files])) - n_excluded
                    _log.debug("copy the delivered files into the lake: %.2f s", time.perf_counter() - started)
                else:
                    location = f"_file_idx * {_LOCATION_STRIDE} + _row"
                    if not excluded:
                        keep = "true"
                    elif len(excluded) <= _EXCLUDED_LIST_MAX:  # a constant list beats an anti-join over 10M rows
                        params["excluded"] = excluded
                        keep = f"NOT list_contains($excluded, {location})"
                    else:
                        keep = f"{location} NOT IN (SELECT loc FROM _pq_excluded)"
                    kept = f"SELECT {span_columns} FROM ({_union(pass_one, keep, keep if has_fallback else None)})"
                    day_file, inserted = span_lake.write_day_file(conn, dt, kept, bound(kept), lake)
                    day_files = [span_lake.DayFile(day_file)]
                    _log.debug("write the day's span file: %.2f s", time.perf_counter() - started)
                    # Both passes must have seen the same rows (a file rewritten meanwhile would not).
                    total = sum(_row_counts(conn, [p for _, p, _ in fast])) + (fallback_spans.height if has_fallback else 0)
                    if inserted + n_excluded != total:
                        raise RuntimeError(f"{dt}: Parquet files changed while being ingested "
                                           f"({inserted} written + {n_excluded} left out != {total} rows)")
                parts = [
                    "SELECT dt, _source_file AS source_file, CAST(NULL AS BIGINT) AS line_no, reason, detail, "
                    "trace_id, span_id, raw FROM _pq_special WHERE _rule IS NOT NULL",
                    _duplicates_sql(),
                ]
                if has_fallback:
                    parts.append(f"SELECT {quarantine_columns} FROM _pq_fallback_quarantine")
                run("insert quarantine", f"INSERT INTO {quarantine_table} ({quarantine_columns}) "
                    + " UNION ALL ".join(f"(SELECT {quarantine_columns} FROM ({part}))" for part in parts))
            counts = conn.execute(
                f"SELECT reason, count(*) FROM {quarantine_table} WHERE dt = ? GROUP BY reason ORDER BY reason", [dt]
            ).fetchall()
            span_lake.publish_day(conn, dt, day_files)
            run("commit", "COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        span_lake.remove_unreferenced(conn, dt, lake)
    finally:
        for name in ("_pq_prepass", "_pq_dupkeys", "_pq_rejects", "_pq_special", "_pq_dups", "_pq_losers", "_pq_excluded"):
            conn.execute(f"DROP TABLE IF EXISTS temp.{quote_ident(name)}")
        if has_fallback:
            conn.unregister("_pq_fallback_spans")
            conn.unregister("_pq_fallback_quarantine")
        _restore(conn, previous)
    return {"spans": int(inserted), **{str(reason): int(n) for reason, n in counts}}


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _row_counts(conn: duckdb.DuckDBPyConnection, paths: Sequence[Path]) -> list[int]:
    """Rows per file, from the Parquet footers."""
    if not paths:
        return []
    rows = dict(conn.execute(
        "SELECT file_name, num_rows FROM parquet_file_metadata($files)",
        {"files": [str(p) for p in paths]}).fetchall())
    return [int(rows[str(p)]) for p in paths]


def _rows_by_file(locations: Sequence[int]) -> dict[int, list[int]]:
    """Packed (file order, row) locations as {file order: rows}."""
    rows: dict[int, list[int]] = {}
    for location in locations:
        rows.setdefault(location // _LOCATION_STRIDE, []).append(location % _LOCATION_STRIDE)
    return rows


def _copy_in(fast: Sequence[tuple[int, Path, tuple]], skipped: dict[int, list[int]],
             dt: datetime.date, lake: Path, delivered: dict[Path, tuple[int, int]]) -> list[span_lake.DayFile]:
    """The delivered files copied into the day's lake directory as they are, each with the
    span columns it has and the rows validation left out (`skipped`: rows by file order).
    A file that changed since validation read it (size or modification time) fails the
    day, as the rewriting path does when its passes disagree."""
    files = []
    for order, path, schema in fast:
        copy = span_lake.copy_in(dt, path, lake)
        if _identity(path) != delivered[path] or copy.stat().st_size != delivered[path][0]:
            raise RuntimeError(f"{dt}: {path} changed while being ingested (size or modification time): run the day again")
        columns = tuple(name for name, _ in schema if name in SPAN_SCHEMA and name != "dt")
        files.append(span_lake.DayFile(copy, columns, tuple(sorted(skipped.get(order, [])))))
    return files


def begin_day_replacement(conn: duckdb.DuckDBPyConnection, dt: datetime.date) -> Path:
    """Open the transaction that replaces day `dt` of raw.spans / raw.span_quarantine: the
    quarantine table and the span lake's bookkeeping created if need be (span_lake), the
    day's old quarantine rows deleted. Returns the warehouse's lake: the caller writes the
    day's span file there, publishes it (span_lake.publish_day) and commits or rolls back;
    then span_lake.remove_unreferenced."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS " + quote_ident(QUARANTINE_TABLE.split(".")[0]))
    conn.execute("BEGIN TRANSACTION")
    span_lake.ensure_span_files(conn)
    conn.execute(_create_table_sql(QUARANTINE_TABLE, QUARANTINE_SCHEMA))
    conn.execute(f"DELETE FROM {_qualified(QUARANTINE_TABLE)} WHERE dt = ?", [dt])
    return span_lake.lake_dir(conn)


def _settings(conn: duckdb.DuckDBPyConnection, names: Sequence[str]) -> dict[str, object]:
    return {name: conn.execute("SELECT current_setting(?)", [name]).fetchall()[0][0] for name in names}


def _restore(conn: duckdb.DuckDBPyConnection, previous: dict[str, object]) -> None:
    """Back to the connection's settings: the default when it had it (exact), else the
    value it showed (memory_limit shows rounded: '18.7 GiB')."""
    for name, value in previous.items():
        conn.execute(f"RESET {quote_ident(name)}")
        if _settings(conn, [name])[name] != value:
            conn.execute(f"SET {quote_ident(name)} = ?", [value])
