"""Zipkin v2 JSON (an array of spans) -> raw span tuples.

Times are microseconds (timestamp + duration); a missing duration (incomplete span) leaves
the end unknown, which the shared rules quarantine as bad_timestamps. Missing kind means
INTERNAL (local span) per the Zipkin v2 model.
"""

from __future__ import annotations

import math
from typing import Any

from cost_attribution.ingest.readers.collector import ZIPKIN_JSON, SpanCollector, json_record_text


def looks_like_zipkin_spans(document: Any) -> bool:
    return isinstance(document, list) and all(isinstance(s, dict) and "traceId" in s and "id" in s for s in document[:5]) and bool(document)


def _tag_float(tags: dict, key: str) -> float | None:
    value = tags.get(key)
    if value is None:
        return None
    if isinstance(value, bool):  # float(True) == 1.0 would pass as a valid probability
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _micros_to_nanos(value: Any) -> Any:
    # Only exact integers convert; anything else is handed on as-is to fail validation.
    return value * 1000 if type(value) is int else value


def collect_zipkin_spans(spans: list, line_no: int | None, collector: SpanCollector) -> None:
    rows = collector.rows_for(ZIPKIN_JSON)
    for span in spans:
        try:
            tags = span.get("tags") or {}
            local = span.get("localEndpoint") or {}
            remote = span.get("remoteEndpoint") or {}
            timestamp = span.get("timestamp")
            duration = span.get("duration")
            end = (timestamp + duration) * 1000 if type(timestamp) is int and type(duration) is int else None
            rows.append(
                (
                    span.get("traceId"),
                    span.get("id"),
                    span.get("parentId"),
                    local.get("serviceName"),
                    span.get("kind") or "INTERNAL",
                    span.get("name"),
                    _micros_to_nanos(timestamp),
                    end,
                    tags.get("peer.service") or remote.get("serviceName") or tags.get("server.address") or tags.get("net.peer.name"),
                    tags.get("enduser.id") or tags.get("user.id"),
                    _tag_float(tags, "sampling.probability"),
                    None,  # Zipkin has no tracestate
                    line_no,
                    span,
                )
            )
        except (AttributeError, TypeError) as error:
            collector.reject("malformed_lines", f"zipkin span has an unexpected structure: {error}", line_no, json_record_text(span))
