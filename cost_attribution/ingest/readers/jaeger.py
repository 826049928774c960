"""Jaeger JSON (query API / UI model: {"data": [trace]} or bare traces) -> raw span tuples.

startTime and duration are microseconds; kind comes from the span.kind tag (missing means
INTERNAL); the parent is the first CHILD_OF reference within the same trace, as Jaeger's
own model does.
"""

from __future__ import annotations

import math
from typing import Any

from cost_attribution.ingest.readers.collector import JAEGER_JSON, SpanCollector, json_record_text


def jaeger_traces(document: Any) -> list | None:
    """The list of Jaeger traces in a document, or None if it is not Jaeger JSON."""
    if isinstance(document, dict):
        if isinstance(document.get("data"), list):
            return document["data"]
        if "spans" in document and "processes" in document:
            return [document]
    if isinstance(document, list) and document and all(isinstance(t, dict) and "spans" in t and "processes" in t for t in document[:5]):
        return document
    return None


def _tags(tag_list: Any) -> dict:
    return {tag["key"]: tag.get("value") for tag in tag_list or () if isinstance(tag, dict) and "key" in tag}


def _float_tag(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _parent(span: dict) -> Any:
    trace_id = str(span.get("traceID", "")).lower().lstrip("0")
    for reference in span.get("references") or ():
        if reference.get("refType") == "CHILD_OF" and str(reference.get("traceID", "")).lower().lstrip("0") == trace_id:
            return reference.get("spanID")
    return span.get("parentSpanID")  # older Jaeger JSON carries the parent directly


def collect_jaeger_traces(traces: list, line_no: int | None, collector: SpanCollector) -> None:
    rows = collector.rows_for(JAEGER_JSON)
    for trace in traces:
        try:
            processes = trace.get("processes") or {}
            spans = trace.get("spans") or []
            if not isinstance(spans, list) or not isinstance(processes, dict):
                raise TypeError("spans must be a list and processes an object")
        except (AttributeError, TypeError) as error:
            collector.reject("malformed_lines", f"jaeger trace has an unexpected structure: {error}", line_no, json_record_text(trace))
            continue
        for span in spans:
            try:
                process = span.get("process") or processes.get(span.get("processID")) or {}
                tags = _tags(span.get("tags"))
                start = span.get("startTime")
                duration = span.get("duration")
                rows.append(
                    (
                        span.get("traceID"),
                        span.get("spanID"),
                        _parent(span),
                        process.get("serviceName"),
                        tags.get("span.kind") or "INTERNAL",
                        span.get("operationName"),
                        start * 1000 if type(start) is int else start,
                        (start + duration) * 1000 if type(start) is int and type(duration) is int else None,
                        _text(tags.get("peer.service") or tags.get("server.address") or tags.get("net.peer.name") or tags.get("peer.hostname")),
                        _text(tags.get("enduser.id") or tags.get("user.id")),
                        _float_tag(tags.get("sampling.probability")),
                        None,
                        line_no,
                        span,
                    )
                )
            except (AttributeError, TypeError, KeyError) as error:
                collector.reject("malformed_lines", f"jaeger span has an unexpected structure: {error}", line_no, json_record_text(span))
