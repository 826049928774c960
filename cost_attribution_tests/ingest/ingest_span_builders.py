"""Tiny builders for OTLP JSON test data (kept next to the tests that use them)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

START = 1_780_000_000_000_000_000


def attr(key: str, value: Any) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def span(trace_id: str, span_id: str, *, kind: Any = 2, parent: str = "", start: Any = None, end: Any = None,
         attributes: dict | None = None, tracestate: str | None = None, name: str = "op") -> dict:
    start = START if start is None else start
    end = (start + 1_000_000 if isinstance(start, int) else start) if end is None else end
    record = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "attributes": [attr(k, v) for k, v in (attributes or {}).items()],
    }
    if tracestate is not None:
        record["traceState"] = tracestate
    return record


def request(service: str | None, *spans: dict) -> dict:
    attributes = [] if service is None else [attr("service.name", service)]
    return {"resourceSpans": [{"resource": {"attributes": attributes}, "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}]}]}


def write_lines(path: Path, lines: list[bytes | dict]) -> Path:
    payload = b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines) + b"\n"
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path
