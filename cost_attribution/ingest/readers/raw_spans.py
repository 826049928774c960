"""Shared back half of every reader: raw span values in, validated span table out.

Format readers only pull values out of their records (cheap Python loops, one tuple per
span); all validation and normalisation (ids, kinds, timestamps, sampling) happens here
once per file, vectorised in polars, so the rules are identical for every format.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NamedTuple

import polars as pl

from cost_attribution.ingest.spans import (
    DEFAULT_SAMPLING_PROBABILITY_FLOOR,
    QUARANTINE_SCHEMA,
    RAW_TEXT_LIMIT,
    SPAN_SCHEMA,
    empty_quarantine,
    parse_tracestate_threshold,
    partition_bounds_nanos,
)

OUTSIDE_PARTITION = "timestamp_outside_partition"

# One span as a format reader extracts it, before any validation. Values are whatever the
# source held (ids as text, kind as int or text, times as int or text) so that nothing is
# judged before the common rules below run.
RAW_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "service",
    "kind",
    "name",
    "start_unix_nano",
    "end_unix_nano",
    "peer_service",
    "member_id",
    "sampling_attr",  # float; NaN = attribute present but not a number
    "tracestate",
    "line_no",
    "record",  # locates the source record; printed only if the span is quarantined
)

# Internal columns carried on span frames until cross-file dedupe, to say where a span
# came from; stripped before frames leave the package.
INTERNAL_COLUMNS = ("_source_file", "_line_no")


class IdEncoding(Enum):
    HEX = "hex"  # exactly 32/16 hex digits (OTLP protobuf bytes, flat Parquet)
    HEX_OR_BASE64 = "hex_or_base64"  # OTLP JSON: spec says hex, some exporters write base64
    SHORT_HEX = "short_hex"  # Zipkin/Jaeger: 64-bit trace ids and unpadded ids are legal


class QuarantineRow(NamedTuple):
    reason: str
    detail: str
    line_no: int | None
    trace_id: str | None
    span_id: str | None
    raw: str


def clip_raw(text: str) -> str:
    return text[:RAW_TEXT_LIMIT]


def quarantine_frame(rows: Sequence[QuarantineRow], dt: datetime.date, source_file: str) -> pl.DataFrame:
    if not rows:
        return empty_quarantine()
    columns = list(zip(*rows))
    return pl.DataFrame(
        {
            "dt": [dt] * len(rows),
            "source_file": [source_file] * len(rows),
            "line_no": columns[2],
            "reason": columns[0],
            "detail": columns[1],
            "trace_id": columns[3],
            "span_id": columns[4],
            "raw": [clip_raw(r) for r in columns[5]],
        },
        schema=QUARANTINE_SCHEMA,
    )


# Every spelling of span kind seen in OTLP (enum int or name), Zipkin and Jaeger
# (span.kind tag, lower case), matched after upper-casing.
_KIND_BY_SPELLING = {
    "0": "UNSPECIFIED",
    "1": "INTERNAL",
    "2": "SERVER",
    "3": "CLIENT",
    "4": "PRODUCER",
    "5": "CONSUMER",
}
for _kind in ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"):
    _KIND_BY_SPELLING[_kind] = _kind
    _KIND_BY_SPELLING["SPAN_KIND_" + _kind] = _kind

_TEXT_COLUMNS = ("trace_id", "span_id", "parent_span_id", "service", "kind", "name", "peer_service", "member_id", "tracestate")


def _decode_id(value: str, n_bytes: int, encoding: IdEncoding) -> str | None:
    """Slow path for ids that are not already canonical hex; None if undecodable."""
    text = value.strip()
    if encoding is IdEncoding.SHORT_HEX:
        if 0 < len(text) <= 2 * n_bytes:
            try:
                int(text, 16)
            except ValueError:
                return None
            return text.lower().zfill(2 * n_bytes)
        return None
    if encoding is IdEncoding.HEX_OR_BASE64:
        padded = text + "=" * (-len(text) % 4)
        for alphabet in (None, b"-_"):  # standard, then URL-safe base64
            try:
                decoded = base64.b64decode(padded, altchars=alphabet, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(decoded) == n_bytes:
                return decoded.hex()
        return None
    return None


def _canonical_id_expr(frame: pl.DataFrame, column: str, n_bytes: int, encoding: IdEncoding) -> pl.Expr:
    """Canonical lowercase hex, or null when the text is not an id of n_bytes."""
    n_hex = 2 * n_bytes
    lowered = pl.col(column).str.to_lowercase()
    is_hex = lowered.str.contains(f"^[0-9a-f]{{{n_hex}}}$")
    decoded = pl.lit(None, dtype=pl.Utf8)
    if encoding is not IdEncoding.HEX:
        # Slow path only for the distinct non-canonical values (normally none or few).
        odd = frame.filter(~frame[column].str.to_lowercase().str.contains(f"^[0-9a-f]{{{n_hex}}}$"))[column]
        mapping = {v: _decode_id(v, n_bytes, encoding) for v in odd.drop_nulls().unique().to_list()}
        mapping = {k: v for k, v in mapping.items() if v is not None}
        if mapping:
            decoded = pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.Utf8)
    return pl.when(is_hex).then(lowered).otherwise(decoded)


def _zero_as_null(canonical: pl.Expr, n_bytes: int) -> pl.Expr:
    # An all-zero id means "no id": invalid for trace/span ids, "root" for a parent.
    return pl.when(canonical == "0" * (2 * n_bytes)).then(None).otherwise(canonical)


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else repr(value)


def _raw_frame(rows: list[tuple]) -> pl.DataFrame:
    try:
        return _raw_frame_unchecked(rows)
    except Exception:  # exotic values (nested objects where scalars belong): stringify, retry
        return _raw_frame_unchecked([tuple(_plain(v) for v in row[:-1]) + row[-1:] for row in rows])


# Only types that cannot have been coerced from a mix (ints + floats infer as Float64,
# which would turn valid integer times into float text).
_LOSSLESS_DTYPES = (pl.Utf8, pl.Int64, pl.Null)


def _text_series(name: str, values: Sequence[Any]) -> pl.Series:
    """Any scalar values as text. Homogeneous columns (the normal case: all strings, or
    all ints for OTLP kind) take polars' fast typed path; mixed ones the slow lenient one."""
    try:
        series = pl.Series(name, values)
        # polars infers [2, True] as Int64 [2, 1]: a bool must never pass for a kind or time.
        if series.dtype in _LOSSLESS_DTYPES and not (series.dtype == pl.Int64 and any(v.__class__ is bool for v in values)):
            return series.cast(pl.Utf8)
    except Exception:  # mixed types or ints beyond 64 bits
        pass
    return pl.Series(name, values, dtype=pl.Utf8, strict=False)


def _raw_frame_unchecked(rows: list[tuple]) -> pl.DataFrame:
    columns = list(zip(*rows)) if rows else [()] * len(RAW_FIELDS)
    data: dict[str, pl.Series] = {}
    for name, values in zip(RAW_FIELDS, columns):
        if name == "record":
            continue
        if name in _TEXT_COLUMNS:
            data[name] = _text_series(name, values)
        elif name in ("start_unix_nano", "end_unix_nano"):
            # Via text so that floats ("1.5e18") fail the integer cast instead of being
            # silently truncated; ints and decimal strings both parse.
            text = _text_series(name, values)
            data[name] = text.cast(pl.Int64, strict=False)
            data[name + "_raw"] = text.alias(name + "_raw")
        elif name == "sampling_attr":
            data[name] = pl.Series(name, values, dtype=pl.Float64, strict=False)
        elif name == "line_no":
            data[name] = pl.Series(name, values, dtype=pl.Int64, strict=False)
    return pl.DataFrame(data)


def finalize_spans(
    rows: list[tuple],
    dt: datetime.date,
    source_file: str,
    id_encoding: IdEncoding,
    record_text: Callable[[tuple], str],
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate raw span tuples (fields in RAW_FIELDS order) -> (spans, quarantine).

    record_text(row) prints the source record of a rejected row; a span whose sampling
    probability is below sampling_floor is quarantined (AnalysisSettings.sampling_probability_floor).

    The spans frame has SPAN_SCHEMA plus INTERNAL_COLUMNS; every rejected span becomes one
    quarantine row with the first rule it broke.
    """
    frame = _raw_frame(rows).with_row_index("_row")
    return finalize_frame(
        frame, dt, source_file, id_encoding, lambda indices: [record_text(rows[i]) for i in indices], sampling_floor
    )


def finalize_frame(
    frame: pl.DataFrame,
    dt: datetime.date,
    source_file: str,
    id_encoding: IdEncoding,
    record_texts: Callable[[list[int]], list[str]],
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Same as finalize_spans for an already columnar raw frame (RAW_FIELDS minus record,
    plus *_raw time text columns and `_row`); record_texts prints the source records at
    the given `_row` indices and is only called for rejected spans."""
    spans = frame.with_columns(
        _zero_as_null(_canonical_id_expr(frame, "trace_id", 16, id_encoding), 16).alias("trace_id_norm"),
        _zero_as_null(_canonical_id_expr(frame, "span_id", 8, id_encoding), 8).alias("span_id_norm"),
        _canonical_id_expr(frame, "parent_span_id", 8, id_encoding).alias("parent_canonical"),
        pl.col("kind").str.strip_chars().str.to_uppercase().replace_strict(_KIND_BY_SPELLING, default=None).alias("kind_norm"),
    )
    # Tracestates repeat heavily (a few thresholds per client domain): parse each distinct
    # one once in Python, then map.
    threshold_status: dict[str, str] = {}
    threshold_p: dict[str, float] = {}
    for state in spans["tracestate"].drop_nulls().unique().to_list():
        parsed = parse_tracestate_threshold(state)
        threshold_status[state] = parsed.status
        if parsed.probability is not None:
            threshold_p[state] = parsed.probability
    parent_given = pl.col("parent_span_id").is_not_null() & (pl.col("parent_span_id").str.strip_chars() != "")
    attr_present = pl.col("sampling_attr").is_not_null()
    attr_valid = (pl.col("sampling_attr") > 0) & (pl.col("sampling_attr") <= 1)  # NaN fails both
    ts_status = pl.col("tracestate").replace_strict(threshold_status, default="absent", return_dtype=pl.Utf8)
    ts_p = pl.col("tracestate").replace_strict(threshold_p, default=None, return_dtype=pl.Float64)
    service_missing = pl.col("service").is_null() | (pl.col("service").str.strip_chars() == "")
    probability = pl.when(attr_present).then(pl.col("sampling_attr")).otherwise(ts_p).fill_null(1.0)

    def shown(column: str) -> pl.Expr:
        return pl.col(column).fill_null("<missing>")

    reason_and_detail = [
        (pl.col("trace_id_norm").is_null(), "bad_ids", pl.format("trace_id '{}' is not a valid 16-byte id", shown("trace_id"))),
        (pl.col("span_id_norm").is_null(), "bad_ids", pl.format("span_id '{}' is not a valid 8-byte id", shown("span_id"))),
        (
            parent_given & pl.col("parent_canonical").is_null(),
            "bad_ids",
            pl.format("parent_span_id '{}' is not a valid 8-byte id", shown("parent_span_id")),
        ),
        (pl.col("kind_norm").is_null(), "bad_kinds", pl.format("unknown span kind '{}'", shown("kind"))),
        (
            pl.col("start_unix_nano").is_null()
            | pl.col("end_unix_nano").is_null()
            | (pl.col("start_unix_nano") <= 0)
            | (pl.col("end_unix_nano") <= 0),
            "bad_timestamps",
            pl.format(
                "start '{}' / end '{}' must be positive integer unix nanoseconds",
                shown("start_unix_nano_raw"),
                shown("end_unix_nano_raw"),
            ),
        ),
        (
            pl.col("end_unix_nano") < pl.col("start_unix_nano"),
            "negative_duration_spans",
            pl.format("end {} is before start {}", pl.col("end_unix_nano"), pl.col("start_unix_nano")),
        ),
        (service_missing, "missing_service_name", pl.lit("no service.name for the emitting service")),
        (
            attr_present & ~attr_valid,
            "bad_sampling_probability",
            pl.format("sampling.probability {} is not in (0, 1]", pl.col("sampling_attr")),
        ),
        (
            ~attr_present & (ts_status == "malformed"),
            "bad_sampling_probability",
            pl.format("tracestate '{}' has a malformed ot th threshold", pl.col("tracestate")),
        ),
        (
            probability < sampling_floor,
            "sampling_probability_below_floor",
            pl.format(f"sampling probability {{}} is below the floor {float(sampling_floor):g}", probability),
        ),
    ]
    # First matching rule wins: the rule index is computed for every row (cheap booleans);
    # the human-readable detail only for the few rejected rows.
    rule = pl.lit(None, dtype=pl.Int32)
    for index in reversed(range(len(reason_and_detail))):
        rule = pl.when(reason_and_detail[index][0].fill_null(False)).then(pl.lit(index, dtype=pl.Int32)).otherwise(rule)
    spans = spans.with_columns(
        rule.alias("_rule"),
        probability.alias("p_norm"),
    )
    # rechunk: polars 2.1 panics (`i < self.len()`) evaluating when/then chains over the
    # multi-chunk columns a large Parquet read leaves behind.
    rejected = spans.filter(pl.col("_rule").is_not_null()).rechunk()
    if rejected.height:
        reason = pl.lit(None, dtype=pl.Utf8)
        detail = pl.lit(None, dtype=pl.Utf8)
        for index, (_, name, text) in enumerate(reason_and_detail):
            reason = pl.when(pl.col("_rule") == index).then(pl.lit(name)).otherwise(reason)
            detail = pl.when(pl.col("_rule") == index).then(text).otherwise(detail)
        rejected = rejected.with_columns(reason.alias("_reason"), detail.alias("_detail"))
        raw_text = [clip_raw(text) for text in record_texts(rejected["_row"].to_list())]
        quarantine = rejected.select(
            pl.lit(dt, dtype=pl.Date).alias("dt"),
            pl.lit(source_file, dtype=pl.Utf8).alias("source_file"),
            pl.col("line_no"),
            pl.col("_reason").alias("reason"),
            pl.col("_detail").alias("detail"),
            pl.col("trace_id_norm").alias("trace_id"),
            pl.col("span_id_norm").alias("span_id"),
            pl.Series("raw", raw_text, dtype=pl.Utf8),
        )
    else:
        quarantine = empty_quarantine()
    accepted = spans.filter(pl.col("_rule").is_null()).select(
        pl.lit(dt, dtype=pl.Date).alias("dt"),
        pl.col("trace_id_norm").alias("trace_id"),
        pl.col("span_id_norm").alias("span_id"),
        _zero_as_null(pl.col("parent_canonical"), 8).alias("parent_span_id"),
        pl.col("service").str.strip_chars(),
        pl.col("kind_norm").alias("kind"),
        pl.col("name"),
        pl.col("start_unix_nano"),
        pl.col("end_unix_nano"),
        pl.when(pl.col("kind_norm").is_in(["CLIENT", "PRODUCER"])).then(pl.col("peer_service")).alias("peer_service"),
        pl.col("member_id"),
        pl.col("p_norm").alias("sampling_probability"),
        pl.lit(source_file, dtype=pl.Utf8).alias("_source_file"),
        pl.col("line_no").alias("_line_no"),
    )
    return accepted.cast(SPAN_SCHEMA | {"_source_file": pl.Utf8, "_line_no": pl.Int64}), quarantine.cast(QUARANTINE_SCHEMA)


def split_duplicates(spans: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first span per (trace_id, span_id, service, kind); the rest -> quarantine.

    Zipkin's shared client/server halves share a span id but differ in kind (and usually
    service), so both survive. `spans` must carry INTERNAL_COLUMNS.
    """
    key = ["trace_id", "span_id", "service", "kind"]
    first = pl.struct(key).is_first_distinct()
    if spans.is_empty() or spans.select(first.all()).item():
        return spans, empty_quarantine()
    location = pl.concat_str(pl.col("_source_file"), pl.lit(" line "), pl.col("_line_no").cast(pl.Utf8).fill_null("-"))
    marked = spans.with_columns(first.alias("_first"), location.first().over(key).alias("_first_at"))
    duplicates = marked.filter(~pl.col("_first"))
    quarantine = duplicates.select(
        pl.col("dt"),
        pl.col("_source_file").alias("source_file"),
        pl.col("_line_no").alias("line_no"),
        pl.lit("duplicate_spans").alias("reason"),
        pl.format("same (trace_id, span_id, service, kind) as the span kept from {}", pl.col("_first_at")).alias("detail"),
        pl.col("trace_id"),
        pl.col("span_id"),
        pl.struct(list(SPAN_SCHEMA)).struct.json_encode().str.slice(0, RAW_TEXT_LIMIT).alias("raw"),
    )
    return marked.filter(pl.col("_first")).drop("_first", "_first_at"), quarantine.cast(QUARANTINE_SCHEMA)


def split_outside_partition(spans: pl.DataFrame, dt: datetime.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(spans of the dt= partition, quarantine rows for the others). A format reader does
    not know which day a file was delivered for; the landing zone does, so this rule runs
    when a partition's files are read (before cross-file dedupe, as in the SQL path).
    `spans` must carry INTERNAL_COLUMNS."""
    low, high = partition_bounds_nanos(dt)
    outside = (pl.col("start_unix_nano") < low) | (pl.col("start_unix_nano") >= high)
    rejected = spans.filter(outside)
    if rejected.is_empty():
        return spans, empty_quarantine()
    quarantine = rejected.select(
        pl.col("dt"),
        pl.col("_source_file").alias("source_file"),
        pl.col("_line_no").alias("line_no"),
        pl.lit(OUTSIDE_PARTITION).alias("reason"),
        pl.format(f"start {{}} is not within a day of the partition {dt.isoformat()}", pl.col("start_unix_nano")).alias("detail"),
        pl.col("trace_id"),
        pl.col("span_id"),
        pl.struct(list(SPAN_SCHEMA)).struct.json_encode().str.slice(0, RAW_TEXT_LIMIT).alias("raw"),
    )
    return spans.filter(~outside), quarantine.cast(QUARANTINE_SCHEMA)
