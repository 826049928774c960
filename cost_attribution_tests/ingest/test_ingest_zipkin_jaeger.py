"""Zipkin v2 and Jaeger JSON specifics beyond the public fixtures: kinds, sampling tags,
callee/member tags and dirty records."""

from __future__ import annotations

import datetime

import orjson

from cost_attribution.ingest.readers import read_span_file

DT = datetime.date(2026, 5, 28)
TS = 1_700_000_000_000_000  # microseconds


def _zipkin(span_id: str, **fields) -> dict:
    record = {"traceId": "ab" * 8, "id": span_id, "name": "get", "timestamp": TS, "duration": 250,
              "localEndpoint": {"serviceName": "web"}}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


def test_zipkin_tags_kinds_and_dirty_spans(tmp_path):
    spans = [
        _zipkin("0000000000000001", kind="SERVER", tags={"enduser.id": "m7", "sampling.probability": "0.25"}),
        _zipkin("0000000000000002", kind="CLIENT", parentId="0000000000000001", remoteEndpoint={"serviceName": "db"}),
        _zipkin("0000000000000003", kind="CLIENT", tags={"peer.service": "auth"}, remoteEndpoint={"serviceName": "10.0.0.1"}),
        _zipkin("0000000000000004", kind="WEIRD"),
        _zipkin("0000000000000005", localEndpoint={}),
        _zipkin("xyz"),
        _zipkin("0000000000000007", duration=-5),
        _zipkin("0000000000000008", tags={"sampling.probability": "2"}),
        _zipkin("0000000000000009", timestamp="soon"),
        _zipkin("000000000000000a", tags={"sampling.probability": True}),
    ]
    path = tmp_path / "zipkin.json"
    path.write_bytes(orjson.dumps(spans))
    batch = read_span_file(path, DT)
    rows = {r["span_id"]: r for r in batch.spans.iter_rows(named=True)}
    assert set(rows) == {"0000000000000001", "0000000000000002", "0000000000000003"}
    assert rows["0000000000000001"]["member_id"] == "m7" and rows["0000000000000001"]["sampling_probability"] == 0.25
    assert rows["0000000000000001"]["end_unix_nano"] - rows["0000000000000001"]["start_unix_nano"] == 250_000
    assert rows["0000000000000002"]["peer_service"] == "db" and rows["0000000000000002"]["parent_span_id"] == "0000000000000001"
    assert rows["0000000000000003"]["peer_service"] == "auth"  # peer.service tag beats remoteEndpoint
    assert sorted(batch.quarantine["reason"].to_list()) == sorted([
        "bad_ids", "bad_kinds", "bad_timestamps", "negative_duration_spans", "missing_service_name",
        "bad_sampling_probability", "bad_sampling_probability"])
    assert set(batch.quarantine["span_id"].drop_nulls()) == {f"{i:016x}" for i in (4, 5, 7, 8, 9, 10)}


def test_zipkin_span_arrays_one_per_line(tmp_path):
    path = tmp_path / "zipkin.jsonl"
    path.write_bytes(orjson.dumps([_zipkin("0000000000000001")]) + b"\n[oops\n" + orjson.dumps([_zipkin("0000000000000002")]) + b"\n")
    batch = read_span_file(path, DT)
    assert batch.spans["span_id"].to_list() == ["0000000000000001", "0000000000000002"]
    assert batch.spans["kind"].to_list() == ["INTERNAL", "INTERNAL"]  # Zipkin: no kind = local span
    assert batch.quarantine.select("reason", "line_no").rows() == [("malformed_lines", 2)]


def test_jaeger_query_api_document(tmp_path):
    def jspan(span_id, process="p1", **extra):
        return {"traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": span_id, "operationName": "op",
                "references": [], "startTime": TS, "duration": 10, "tags": extra.pop("tags", []), "processID": process, **extra}

    document = {"data": [{
        "traceID": "0af7651916cd43dd8448eb211c80319c",
        "spans": [
            jspan("00f067aa0ba902b7", tags=[{"key": "span.kind", "type": "string", "value": "server"},
                                           {"key": "user.id", "type": "int64", "value": 12345},
                                           {"key": "sampling.probability", "type": "float64", "value": 0.5}]),
            jspan("00f067aa0ba902b8", tags=[{"key": "span.kind", "type": "string", "value": "client"},
                                           {"key": "peer.service", "type": "string", "value": "ledger"}],
                  references=[{"refType": "CHILD_OF", "traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": "00f067aa0ba902b7"}]),
            jspan("00f067aa0ba902b9", process="p-missing"),
            jspan("00f067aa0ba902ba", tags=[{"key": "span.kind", "type": "string", "value": "sideways"}]),
        ],
        "processes": {"p1": {"serviceName": "payments", "tags": []}},
    }], "total": 0, "limit": 0, "offset": 0, "errors": None}
    path = tmp_path / "jaeger.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    batch = read_span_file(path, DT)
    assert batch.spans.select("span_id", "service", "kind", "parent_span_id", "peer_service", "member_id", "sampling_probability").rows() == [
        ("00f067aa0ba902b7", "payments", "SERVER", None, None, "12345", 0.5),
        ("00f067aa0ba902b8", "payments", "CLIENT", "00f067aa0ba902b7", "ledger", None, 1.0),
    ]
    assert sorted(batch.quarantine.select("span_id", "reason").rows()) == [("00f067aa0ba902b9", "missing_service_name"), ("00f067aa0ba902ba", "bad_kinds")]


def test_jaeger_structural_garbage_is_quarantined(tmp_path):
    good = {"traceID": "01", "spanID": "02", "operationName": "op", "startTime": TS, "duration": 3, "processID": "p1"}
    document = {"data": [
        {"traceID": "01", "spans": 5, "processes": {}},
        {"traceID": "01", "spans": [good, "not a span"], "processes": {"p1": {"serviceName": "svc"}}},
    ]}
    path = tmp_path / "jaeger.json"
    path.write_bytes(orjson.dumps(document))
    batch = read_span_file(path, DT)
    assert batch.spans.select("trace_id", "span_id", "service").rows() == [("0" * 30 + "01", "0" * 14 + "02", "svc")]
    assert batch.quarantine.select("reason", "line_no").rows() == [("malformed_lines", 1), ("malformed_lines", 1)]
