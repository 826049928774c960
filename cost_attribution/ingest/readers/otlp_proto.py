"""OTLP protobuf files (.pb, .binpb, .protobuf, gzip or not): one serialized ExportTraceServiceRequest."""

from __future__ import annotations

import datetime
import gzip
import math
import zlib
from pathlib import Path

import polars as pl
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cost_attribution.formats import GZIP_MAGIC
from cost_attribution.ingest.readers.collector import SourceFormat, SpanCollector, cyclic_gc_paused
from cost_attribution.ingest.readers.raw_spans import IdEncoding


def _span_text(row: tuple, collector: SpanCollector) -> str:
    return json_format.MessageToJson(row[-1], indent=None)


OTLP_PROTO = SourceFormat("otlp_proto", IdEncoding.HEX, _span_text)


def _any_value_text(value) -> str | None:
    which = value.WhichOneof("value")
    if which is None:
        return None
    return str(getattr(value, which))


def _any_value_float(value) -> float:
    which = value.WhichOneof("value")
    if which in ("double_value", "int_value"):
        return float(getattr(value, which))
    if which == "string_value":
        try:
            return float(value.string_value)
        except ValueError:
            return math.nan
    return math.nan


def _collect_request(request: ExportTraceServiceRequest, collector: SpanCollector) -> None:
    rows = collector.rows_for(OTLP_PROTO)
    for resource_span in request.resource_spans:
        service = None
        for attribute in resource_span.resource.attributes:
            if attribute.key == "service.name":
                service = _any_value_text(attribute.value)
                break
        for scope_span in resource_span.scope_spans:
            for span in scope_span.spans:
                found: dict[str, object] = {}
                for attribute in span.attributes:
                    key = attribute.key
                    if key == "sampling.probability":
                        found[key] = _any_value_float(attribute.value)
                    elif key in ("peer.service", "server.address", "net.peer.name", "enduser.id", "user.id"):
                        found[key] = _any_value_text(attribute.value)
                rows.append(
                    (
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex() or None,
                        service,
                        int(span.kind),
                        span.name,
                        span.start_time_unix_nano or None,  # proto3: 0 means not set
                        span.end_time_unix_nano or None,
                        found.get("peer.service") or found.get("server.address") or found.get("net.peer.name"),
                        found.get("enduser.id") or found.get("user.id"),
                        found.get("sampling.probability"),
                        span.trace_state or None,
                        None,
                        span,
                    )
                )
        collector.flush_if_full()


def read_otlp_proto_file(path: Path, dt: datetime.date, source_file: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    collector = SpanCollector(dt, source_file)
    try:
        payload = path.read_bytes()
        if payload[:2] == GZIP_MAGIC:
            payload = gzip.decompress(payload)
        request = ExportTraceServiceRequest()
        request.ParseFromString(payload)
    except (OSError, EOFError, zlib.error, DecodeError) as error:
        collector.reject("unreadable_files", f"not a readable OTLP protobuf ExportTraceServiceRequest: {error}", None, "")
        return collector.finish()
    with cyclic_gc_paused():
        _collect_request(request, collector)
        return collector.finish()
