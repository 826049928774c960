"""Every copied public fixture ingests with counts derived by hand from the files.

Expected numbers were counted by reading each fixture with the standard json module
(independently of the readers); comments give the reasoning.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import polars as pl
import pytest

from cost_attribution.ingest.readers import read_span_file, read_span_files
from cost_attribution.ingest.spans import QUARANTINE_SCHEMA, SPAN_SCHEMA

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "public_traces"
DT = datetime.date(2026, 5, 28)

# file -> (spans, distinct services, {kind: count}, {reason: count})
EXPECTED = {
    # one SERVER span of my.service
    "otlp-json/opentelemetry-proto-example-trace.json": (1, 1, {"SERVER": 1}, {}),
    # envoy frontend-proxy: one CLIENT + one SERVER, base64 ids
    "otlp-json/otlp2parquet-trace.json": (2, 1, {"CLIENT": 1, "SERVER": 1}, {}),
    # 19 lines, one span each, 8 services
    "otlp-json/otlp2parquet-traces.jsonl": (19, 8, {"INTERNAL": 10, "CLIENT": 6, "SERVER": 3}, {}),
    # 3 resources; 3 spans without kind (proto default 0 = UNSPECIFIED), one kind 2, one kind 3
    "otlp-json/jaeger-example_trace.json": (5, 3, {"UNSPECIFIED": 3, "SERVER": 1, "CLIENT": 1}, {}),
    "otlp-proto/otlp2parquet-trace.pb": (2, 1, {"CLIENT": 1, "SERVER": 1}, {}),
    "otlp-proto/otlp2parquet-traces.pb": (19, 8, {"INTERNAL": 10, "CLIENT": 6, "SERVER": 3}, {}),
    # 5 spans, no span.kind tags (INTERNAL); span ...02 appears twice under process p1
    # (service-x), so the second copy is a duplicate by (trace, span, service, kind)
    "jaeger-json/ui_01.json": (4, 2, {"INTERNAL": 4}, {"duplicate_spans": 1}),
    # 8 spans; 2 shared ids (client+server halves) both kept; 2 spans without kind
    "zipkin-v2/ascend.json": (8, 3, {"CLIENT": 3, "SERVER": 3, "INTERNAL": 2}, {}),
    "zipkin-v2/messaging2.json": (11, 4, {"CLIENT": 4, "INTERNAL": 3, "SERVER": 2, "PRODUCER": 1, "CONSUMER": 1}, {}),
    # 175 spans, 19 without duration (incomplete, end unknown) -> bad_timestamps; the 5
    # copies of pusher span 9d2d35b746db84f3 are among those 19, so no duplicates remain
    "zipkin-v2/smartthings-oauth-authorization.json": (156, 8, {"CLIENT": 87, "SERVER": 66, "INTERNAL": 3}, {"bad_timestamps": 19}),
    "zipkin-v2/yelp.json": (16, 6, {"CLIENT": 11, "SERVER": 4, "INTERNAL": 1}, {}),
    # invalid fixtures: their only span is quarantined with the specific reason
    "otlp-json-invalid/otlp2parquet-trace_invalid_base64.json": (0, 0, {}, {"bad_ids": 1}),
    "otlp-json-invalid/otlp2parquet-trace_invalid_kind.json": (0, 0, {}, {"bad_kinds": 1}),
    "otlp-json-invalid/otlp2parquet-trace_mixed_encoding.json": (0, 0, {}, {"bad_ids": 1}),
}


def test_every_fixture_is_covered():
    on_disk = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_fixture_counts(relative):
    n_spans, n_services, kinds, reasons = EXPECTED[relative]
    batch = read_span_file(FIXTURES / relative, DT)
    assert dict(batch.spans.schema) == SPAN_SCHEMA
    assert dict(batch.quarantine.schema) == QUARANTINE_SCHEMA
    assert batch.spans.height == n_spans
    assert batch.spans["service"].n_unique() == n_services
    assert dict(batch.spans["kind"].value_counts().iter_rows()) == kinds
    assert dict(batch.quarantine["reason"].value_counts().iter_rows()) == reasons
    assert batch.spans["trace_id"].str.contains("^[0-9a-f]{32}$").all()
    assert batch.spans["span_id"].str.contains("^[0-9a-f]{16}$").all()
    assert batch.spans["parent_span_id"].drop_nulls().str.contains("^[0-9a-f]{16}$").all()
    assert (batch.spans["sampling_probability"] == 1.0).all()  # none of them declares sampling
    assert (batch.quarantine["dt"] == DT).all() and (batch.spans["dt"] == DT).all()


def test_invalid_fixture_details_name_the_bad_value():
    batch = read_span_file(FIXTURES / "otlp-json-invalid/otlp2parquet-trace_invalid_kind.json", DT)
    row = batch.quarantine.row(0, named=True)
    assert "SPAN_KIND_INVALID_TYPE" in row["detail"]
    assert row["trace_id"] == "9d79b1a37f31801cd11a6706fb40d6bd"  # the ids were fine
    assert "SPAN_KIND_INVALID_TYPE" in row["raw"] and row["line_no"] is None  # pretty-printed file
    base64 = read_span_file(FIXTURES / "otlp-json-invalid/otlp2parquet-trace_invalid_base64.json", DT).quarantine
    assert "!!!INVALID_BASE64!!!" in base64["detail"][0] and base64["trace_id"][0] is None


def test_invalid_files_lose_nothing_else_when_read_with_valid_ones():
    paths = [FIXTURES / p for p in sorted(EXPECTED)]
    batch = read_span_files(paths, DT)
    # Cross-file: the .pb files repeat the spans of the OTLP JSON (base64) files exactly,
    # so 2 + 19 more duplicates appear on top of the per-file numbers.
    assert batch.spans.height == sum(v[0] for v in EXPECTED.values()) - 21
    reasons = dict(batch.quarantine["reason"].value_counts().iter_rows())
    assert reasons == {"duplicate_spans": 1 + 21, "bad_timestamps": 19, "bad_ids": 2, "bad_kinds": 1}


def test_base64_json_and_protobuf_give_identical_rows():
    from_json = read_span_file(FIXTURES / "otlp-json/otlp2parquet-traces.jsonl", DT).spans
    from_proto = read_span_file(FIXTURES / "otlp-proto/otlp2parquet-traces.pb", DT).spans
    order = ["trace_id", "span_id", "service", "kind"]
    assert from_json.sort(order).equals(from_proto.sort(order))
    envoy = read_span_file(FIXTURES / "otlp-json/otlp2parquet-trace.json", DT).spans.sort("kind")
    assert envoy["trace_id"].to_list() == ["9d79b1a37f31801cd11a6706fb40d6bd"] * 2  # nXmxo38xgBzRGmcG+0DWvQ==
    assert envoy["span_id"].to_list() == ["de562439e9c1b823", "57526846903bb13e"]  # 3lYkOenBuCM=, V1JoRpA7sT4=


def test_uppercase_hex_ids_are_lowercased():
    spans = read_span_file(FIXTURES / "otlp-json/opentelemetry-proto-example-trace.json", DT).spans
    assert spans.row(0, named=True) | {"dt": None} == {
        "dt": None,
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "eee19b7ec3c1b173",
        "service": "my.service",
        "kind": "SERVER",
        "name": "I'm a server span",
        "start_unix_nano": 1544712660000000000,
        "end_unix_nano": 1544712661000000000,
        "peer_service": None,
        "member_id": None,
        "sampling_probability": 1.0,
    }


def test_jaeger_ids_times_parents_and_peers():
    spans = read_span_file(FIXTURES / "jaeger-json/ui_01.json", DT).spans
    by_id = {row["span_id"]: row for row in spans.iter_rows(named=True)}
    assert set(by_id) == {"0000000000000002", "0000000000000003", "0000000000000004", "0000000000000005"}
    assert {row["trace_id"] for row in by_id.values()} == {"0" * 31 + "1"}  # 64-bit id, left-padded
    assert by_id["0000000000000002"]["name"] == "test-general-conversion"  # first copy kept
    assert by_id["0000000000000002"]["service"] == "service-x"
    # span 4 has a CHILD_OF into another trace first; the parent is the one in its own trace
    assert by_id["0000000000000004"]["parent_span_id"] == "0000000000000002"
    assert by_id["0000000000000005"]["parent_span_id"] == "0000000000000004"
    assert by_id["0000000000000003"]["start_unix_nano"] == 1485467191639875000
    assert by_id["0000000000000003"]["end_unix_nano"] == 1485467191639875000 + 5_000


def test_zipkin_shared_halves_times_and_callee():
    spans = read_span_file(FIXTURES / "zipkin-v2/ascend.json", DT).spans
    halves = spans.filter(pl.col("span_id") == "ecc00062ceef4bf0").sort("kind")
    assert halves.select("service", "kind").rows() == [("mobile-gateway", "CLIENT"), ("content-service", "SERVER")]
    server = halves.row(1, named=True)
    assert server["trace_id"] == "0" * 16 + "ef86c83c0a05a6d6"
    assert (server["start_unix_nano"], server["end_unix_nano"]) == (1531282088552037000, (1531282088552037 + 15888) * 1000)
    yelp = read_span_file(FIXTURES / "zipkin-v2/yelp.json", DT).spans
    callees = yelp.filter(pl.col("kind") == "CLIENT")["peer_service"].to_list()
    assert sorted(callees) == sorted(["blt", "spectre", "memcache", "memcache", "mobile_api", "memcache", "mysql", "memcache", "mysql", "memcache", "yelp-main.mobile_api"])
    assert yelp.filter(pl.col("kind") != "CLIENT")["peer_service"].null_count() == 5  # callee only on outbound spans
