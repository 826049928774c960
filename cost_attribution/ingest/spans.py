"""The one span table every trace format is normalised into, plus its quarantine.

Readers (``cost_attribution.ingest.readers``) turn OTLP JSON/protobuf, Zipkin v2, Jaeger
JSON and flat Parquet into frames with exactly ``SPAN_SCHEMA``; every record they cannot
trust becomes one ``QUARANTINE_SCHEMA`` row whose ``reason`` is in ``QUARANTINE_REASONS``.
"""

from __future__ import annotations

import datetime
import re
from typing import NamedTuple

import polars as pl

SPAN_SCHEMA: dict[str, pl.DataType] = {
    "dt": pl.Date(),
    "trace_id": pl.Utf8(),  # 32 lowercase hex
    "span_id": pl.Utf8(),  # 16 lowercase hex
    "parent_span_id": pl.Utf8(),  # 16 lowercase hex, null for a root span
    "service": pl.Utf8(),
    "kind": pl.Utf8(),  # one of SPAN_KINDS
    "name": pl.Utf8(),
    "start_unix_nano": pl.Int64(),
    "end_unix_nano": pl.Int64(),
    "peer_service": pl.Utf8(),  # callee of an outbound (CLIENT/PRODUCER) span
    "member_id": pl.Utf8(),
    "sampling_probability": pl.Float64(),  # 0 < p <= 1; adjusted count is 1/p
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "dt": pl.Date(),
    "source_file": pl.Utf8(),
    "line_no": pl.Int64(),  # 1-based for line-oriented files, else null
    "reason": pl.Utf8(),  # one of QUARANTINE_REASONS
    "detail": pl.Utf8(),
    "trace_id": pl.Utf8(),  # normalised id when it was valid, else null
    "span_id": pl.Utf8(),
    "raw": pl.Utf8(),  # offending record text, at most RAW_TEXT_LIMIT chars
}

# The DuckDB type of each column type the two schemas use (the quarantine table's DDL,
# the span lake's empty view).
_DUCKDB_TYPES = {pl.Date: "DATE", pl.Utf8: "VARCHAR", pl.Int64: "BIGINT", pl.Float64: "DOUBLE"}


def duckdb_type(dtype: pl.DataType) -> str:
    for polars_type, sql in _DUCKDB_TYPES.items():
        if dtype == polars_type:
            return sql
    raise TypeError(f"no DuckDB type for {dtype}")


QUARANTINE_REASONS = (
    "malformed_lines",
    "duplicate_spans",
    "negative_duration_spans",
    "missing_service_name",
    "bad_ids",
    "bad_kinds",
    "bad_timestamps",
    "bad_sampling_probability",
    "sampling_probability_below_floor",
    "timestamp_outside_partition",
    "unreadable_files",
    "unread_files",
    "duplicate_files",
)

# A span sampled with probability p stands for 1/p requests. Below this floor one span
# would outweigh millions of real ones (1e-300 -> an adjusted count of 1e300), so such a
# span is quarantined as sampling_probability_below_floor rather than trusted. The default
# of AnalysisSettings.sampling_probability_floor and of the readers' `sampling_floor`.
DEFAULT_SAMPLING_PROBABILITY_FLOOR = 1e-6
# A span belongs to its dt= folder's UTC day; collectors flush late and spans straddle
# midnight, so a start up to this long before or after the day is still accepted. Any
# other start (1970, 2100, another day's file) is timestamp_outside_partition.
PARTITION_SLACK_NANOS = 24 * 3600 * 10**9


def partition_bounds_nanos(dt: datetime.date) -> tuple[int, int]:
    """[low, high) unix nanoseconds a span start of day `dt` must fall in."""
    start = datetime.datetime.combine(dt, datetime.time(), tzinfo=datetime.timezone.utc)
    day_start = int(start.timestamp()) * 10**9
    return day_start - PARTITION_SLACK_NANOS, day_start + 24 * 3600 * 10**9 + PARTITION_SLACK_NANOS

SPAN_KINDS = ("SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER", "UNSPECIFIED")

RAW_TEXT_LIMIT = 2000


class SpanBatch(NamedTuple):
    spans: pl.DataFrame
    quarantine: pl.DataFrame


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


# OTEP 235: the `ot` tracestate value is `;`-separated `key:value` pairs; `th` is the
# rejection threshold T as 1-14 lowercase hex digits with trailing zeros dropped, so it is
# right-padded to 14 digits (56 bits) before use. The sampling probability is 1 - T/2^56.
_THRESHOLD_HEX = re.compile(r"[0-9a-f]{1,14}")
_TWO_POW_56 = 1 << 56


class ThresholdParse(NamedTuple):
    status: str  # "absent" (no ot th), "ok" or "malformed"
    probability: float | None


def parse_tracestate_threshold(tracestate: str | None) -> ThresholdParse:
    """Find the OTEP 235 threshold in a W3C tracestate, telling absent from malformed."""
    if not tracestate:
        return ThresholdParse("absent", None)
    ot_value = None
    for member in tracestate.split(","):
        key, sep, value = member.strip().partition("=")
        if sep and key == "ot":
            ot_value = value
            break  # W3C: the first occurrence of a key wins
    if ot_value is None:
        return ThresholdParse("absent", None)
    for field in ot_value.split(";"):
        sub_key, sep, sub_value = field.partition(":")
        if sub_key != "th":
            continue
        if not sep or _THRESHOLD_HEX.fullmatch(sub_value) is None:
            return ThresholdParse("malformed", None)
        threshold = int(sub_value.ljust(14, "0"), 16)
        # (2^56 - T) / 2^56 instead of 1 - T/2^56 keeps full precision for tiny p.
        return ThresholdParse("ok", (_TWO_POW_56 - threshold) / _TWO_POW_56)
    return ThresholdParse("absent", None)


def sampling_probability_from_tracestate(tracestate: str | None) -> float | None:
    """OTEP 235 ``ot=th:<hex>`` -> p = 1 - T/2^56 (th:0 -> 1.0).

    Returns None when the tracestate carries no ``ot`` threshold or when it is malformed;
    use ``parse_tracestate_threshold`` to tell the two apart.
    """
    return parse_tracestate_threshold(tracestate).probability
