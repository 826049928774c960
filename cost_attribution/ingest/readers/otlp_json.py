"""OTLP JSON (ExportTraceServiceRequest, protobuf JSON mapping) -> raw span tuples.

Hot loop: the product ingests ~10M spans a day on 2 cores, so each span costs one tuple
append and a scan of its attribute list for the few keys the span table needs.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from cost_attribution.ingest.readers.collector import SourceFormat, SpanCollector, json_record_text
from cost_attribution.ingest.readers.raw_spans import IdEncoding

# Span attribute keys the span table needs; index into the per-span slots below.
_PEER_SERVICE, _SERVER_ADDRESS, _NET_PEER_NAME, _ENDUSER_ID, _USER_ID, _SAMPLING = range(6)
_WANTED_ATTRIBUTES = {
    "peer.service": _PEER_SERVICE,
    "server.address": _SERVER_ADDRESS,
    "net.peer.name": _NET_PEER_NAME,
    "enduser.id": _ENDUSER_ID,
    "user.id": _USER_ID,
    "sampling.probability": _SAMPLING,
}


def any_value_text(value: Any) -> str | None:
    """OTLP AnyValue -> text (ids such as user.id are sometimes sent as intValue)."""
    if not isinstance(value, dict):
        return None
    text = value.get("stringValue")
    if text is not None:
        return text if isinstance(text, str) else str(text)
    for key in ("intValue", "doubleValue", "boolValue"):
        if key in value:
            return str(value[key])
    return None


def any_value_float(value: Any) -> float:
    """OTLP AnyValue -> float; NaN when present but not a number (quarantined later)."""
    if isinstance(value, dict):
        for key in ("doubleValue", "intValue", "stringValue"):
            number = value.get(key)
            if number is not None and not isinstance(number, bool):
                try:
                    return float(number)  # doubleValue may be "NaN"/"Infinity" text
                except (TypeError, ValueError):
                    return math.nan
    return math.nan


def resource_service_name(resource: Any) -> str | None:
    if not isinstance(resource, dict):
        return None
    for attribute in resource.get("attributes") or ():
        if attribute.get("key") == "service.name":
            return any_value_text(attribute.get("value"))
    return None


# Span fields as proto3 JSON names them (lowerCamelCase) and as some exporters do (snake_case),
# in the order collect_otlp_request unpacks them. A span is read in the style of its spanId.
_CAMEL_FIELDS = ("traceId", "spanId", "parentSpanId", "startTimeUnixNano", "endTimeUnixNano", "traceState")
_SNAKE_FIELDS = ("trace_id", "span_id", "parent_span_id", "start_time_unix_nano", "end_time_unix_nano", "trace_state")


def _first_present(record: dict, camel: str, snake: str) -> Any:
    value = record.get(camel)
    return record.get(snake) if value is None else value


def is_otlp_request(document: Any) -> bool:
    return isinstance(document, dict) and ("resourceSpans" in document or "resource_spans" in document)


def _span_lists(resource_span: Any) -> list[list]:
    """The span lists of one resourceSpans entry; TypeError if the nesting is not lists."""
    scope_spans = (
        resource_span.get("scopeSpans")
        or resource_span.get("scope_spans")
        or resource_span.get("instrumentationLibrarySpans")  # collectors before OTLP 0.19
        or []
    )
    if not isinstance(scope_spans, list):
        raise TypeError("scopeSpans is not a list")
    span_lists = [scope_span.get("spans") or [] for scope_span in scope_spans]
    if not all(isinstance(spans, list) for spans in span_lists):
        raise TypeError("spans is not a list")
    return span_lists


def _located_span_text(row: tuple, collector: SpanCollector) -> str:
    """Re-parse the source line of a rejected span and print the span at its index.

    A streamed document (json_files: one OTLP document too big to parse whole) is stored
    as the list of its current chunk's resourceSpans entries, each as JSON text."""
    line_no, span_index = row[-2], row[-1]
    stored = collector.documents[line_no]
    if isinstance(stored, list):
        resource_spans: Any = [orjson.loads(text) for text in stored]
    else:
        resource_spans = _first_present(orjson.loads(stored), "resourceSpans", "resource_spans") or ()
    position = 0
    for resource_span in resource_spans:
        try:
            resource_service_name(resource_span.get("resource"))  # same failure points as the hot loop
            span_lists = _span_lists(resource_span)
        except (AttributeError, TypeError):
            continue  # skipped by the hot loop too (and quarantined there)
        for spans in span_lists:
            for span in spans:
                if position == span_index:
                    return json_record_text(span)
                position += 1
    return ""


# OTLP JSON rows end with the span's index within its document (line), not the span dict.
OTLP_JSON = SourceFormat("otlp_json", IdEncoding.HEX_OR_BASE64, _located_span_text)


def collect_otlp_request(document: dict, line_no: int | None, collector: SpanCollector, span_offset: int = 0) -> int:
    """Append the spans of one request; the caller has stored its text in collector.documents.
    Spans are numbered from span_offset within the stored document; returns the next number."""
    rows = collector.rows_for(OTLP_JSON)
    append = rows.append
    wanted = _WANTED_ATTRIBUTES
    resource_spans = _first_present(document, "resourceSpans", "resource_spans") or ()
    if not isinstance(resource_spans, list):
        collector.reject("malformed_lines", "resourceSpans is not a list", line_no, json_record_text(document))
        return span_offset
    span_index = span_offset - 1
    for resource_span in resource_spans:
        try:
            service = resource_service_name(resource_span.get("resource"))
            span_lists = _span_lists(resource_span)
        except (AttributeError, TypeError) as error:
            collector.reject("malformed_lines", f"resourceSpans entry has an unexpected structure: {error}", line_no, json_record_text(resource_span))
            continue
        for spans in span_lists:
            for span in spans:
                span_index += 1
                try:
                    slots = [None, None, None, None, None, None]
                    attributes = span.get("attributes")
                    if attributes:
                        for attribute in attributes:
                            slot = wanted.get(attribute.get("key"))
                            if slot is not None:
                                value = attribute.get("value")
                                slots[slot] = any_value_float(value) if slot == _SAMPLING else any_value_text(value)
                    get = span.get
                    trace_id, span_id, parent_span_id, start, end, tracestate = map(
                        get, _CAMEL_FIELDS if "spanId" in span else _SNAKE_FIELDS
                    )
                except (AttributeError, TypeError) as error:
                    collector.reject("malformed_lines", f"span has an unexpected structure: {error}", line_no, json_record_text(span))
                    continue
                append(
                    (
                        trace_id,
                        span_id,
                        parent_span_id,
                        service,
                        get("kind", 0),  # proto3 JSON omits the default 0 = UNSPECIFIED
                        get("name"),
                        start,
                        end,
                        slots[_PEER_SERVICE] or slots[_SERVER_ADDRESS] or slots[_NET_PEER_NAME],
                        slots[_ENDUSER_ID] or slots[_USER_ID],
                        slots[_SAMPLING],
                        tracestate,
                        line_no,
                        span_index,
                    )
                )
    return span_index + 1
