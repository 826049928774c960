"""OTLP protobuf files (.pb, .binpb, .protobuf, gzip or not): one serialized ExportTraceServiceRequest.

Read in chunks: the request's top-level fields are walked on the (decompressed) byte
stream and each ResourceSpans message is parsed on its own, so memory holds one
ResourceSpans and the collector's chunk, never the whole file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import polars as pl
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

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


_RESOURCE_SPANS_FIELD = 1  # ExportTraceServiceRequest.resource_spans
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(stream: IO[bytes]) -> int | None:
    """The next base-128 varint, None at a clean end of stream."""
    result, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise DecodeError("file ends inside a varint")
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def _exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DecodeError(f"file ends {n - len(data)} bytes short of a {n}-byte field")
    return data


def _resource_spans(stream: IO[bytes]) -> Iterator[ResourceSpans]:
    """Each ResourceSpans of a serialized ExportTraceServiceRequest, parsed one at a time
    (unknown top-level fields are skipped, as a full parse would)."""
    while (tag := _varint(stream)) is not None:
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _LEN:
            length = _varint(stream)
            if length is None:
                raise DecodeError("file ends after a field tag")
            data = _exactly(stream, length)
            if field == _RESOURCE_SPANS_FIELD:
                yield ResourceSpans.FromString(data)
        elif wire_type == _VARINT:
            if _varint(stream) is None:
                raise DecodeError("file ends after a field tag")
        elif wire_type in (_I64, _I32):
            _exactly(stream, 8 if wire_type == _I64 else 4)
        else:
            raise DecodeError(f"unsupported wire type {wire_type} for field {field}")


def _collect_resource_spans(resource_span: ResourceSpans, collector: SpanCollector) -> None:
    rows = collector.rows_for(OTLP_PROTO)
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


def read_otlp_proto_file(path: Path, collector: SpanCollector) -> tuple[pl.DataFrame, pl.DataFrame]:
    parsed = 0
    with cyclic_gc_paused():
        try:
            with open(path, "rb") as raw:
                gzipped = raw.read(2) == GZIP_MAGIC
            with (gzip.open(path, "rb") if gzipped else open(path, "rb", buffering=1 << 20)) as stream:
                for resource_span in _resource_spans(stream):
                    _collect_resource_spans(resource_span, collector)
                    parsed += 1
        except (OSError, EOFError, zlib.error, DecodeError) as error:
            if parsed:
                # Spans of the resourceSpans read before the damage are kept (as for a cut
                # JSON file); the file is still reported.
                detail = f"OTLP protobuf file damaged after {parsed} resourceSpans entries; later content is lost: {error}"
            else:
                detail = f"not a readable OTLP protobuf ExportTraceServiceRequest: {error}"
            collector.reject("unreadable_files", detail, None, "")
        return collector.finish()
