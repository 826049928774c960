"""Helpers of the simulator's tests: generate a world once, and an independent, minimal
OTLP JSON reader (the contract's rules, nothing shared with the project's ingest)."""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

import orjson

from cost_attribution.simulator import WorldConfig, generate_world


def generate_in(tmp_path_factory, name: str, config: WorldConfig) -> tuple[Path, dict]:
    """(landing zone, truth) of a world in a fresh temporary folder. How fast worlds are
    made is not asserted here: a timed unit test fails on a busy machine, not on slow code."""
    out = tmp_path_factory.mktemp(name)
    return out, generate_world(out, config)


def _attribute(attributes: list[dict], key: str):
    for attr in attributes:
        if attr["key"] == key:
            return next(iter(attr["value"].values()))
    return None


def _probability(span: dict) -> float:
    p = _attribute(span["attributes"], "sampling.probability")
    if p is not None:
        return float(p)
    for entry in span.get("traceState", "").split(","):
        if entry.startswith("ot="):
            for field in entry[3:].split(";"):
                if field.startswith("th:"):
                    return 1.0 - int(field[3:].ljust(14, "0"), 16) / 2**56
    return 1.0


def read_otlp_day(path: Path) -> tuple[list[dict], int]:
    """All span records of a file (duplicates and bad ones included) and unparsable lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    records, malformed = [], 0
    with opener(path, "rb") as fh:
        for line in fh:
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError:
                malformed += 1
                continue
            for resource_spans in request["resourceSpans"]:
                service = _attribute(resource_spans["resource"]["attributes"], "service.name")
                for scope in resource_spans["scopeSpans"]:
                    for span in scope["spans"]:
                        records.append({
                            "raw": span, "service": service, "kind": span["kind"],
                            "trace": span["traceId"], "span": span["spanId"], "parent": span["parentSpanId"],
                            "start": int(span["startTimeUnixNano"]), "end": int(span["endTimeUnixNano"]),
                            "p": _probability(span), "member": _attribute(span["attributes"], "enduser.id"),
                            "peer": _attribute(span["attributes"], "peer.service"),
                            "has_p_attr": _attribute(span["attributes"], "sampling.probability") is not None,
                            "tracestate": span.get("traceState", ""),
                        })
    return records, malformed


def valid_spans(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        key = (r["trace"], r["span"])
        if key in seen or r["service"] is None or r["end"] < r["start"]:
            continue
        seen.add(key)
        out.append(r)
    return out


def trace_files(world: Path) -> dict[str, list[Path]]:
    days = defaultdict(list)
    for path in sorted(world.glob("traces/dt=*/*")):
        days[path.parent.name.removeprefix("dt=")].append(path)
    return days
