"""Bounded-memory ingest: the streamed day (ingest_span_day), the incremental parse of one
big OTLP JSON document and the chunked OTLP protobuf read give the rows of the in-memory path."""

from __future__ import annotations

import base64
import datetime

import duckdb
import orjson
import polars as pl
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cost_attribution.ingest.readers import json_files, read_span_file, read_span_files
from cost_attribution.ingest.readers.collector import SpanCollector
from cost_attribution.ingest.readers.otlp_proto import read_otlp_proto_file
from cost_attribution.ingest.span_stream import ingest_span_day
from cost_attribution.ingest.spans import QUARANTINE_SCHEMA, SPAN_SCHEMA
from ingest_span_builders import START, request, span, write_lines

DT = datetime.date(2026, 5, 28)
T1, T2, T3 = "11" * 16, "22" * 16, "33" * 16


def _document(*requests: dict) -> dict:
    return {"resourceSpans": [entry for r in requests for entry in r["resourceSpans"]]}


def _big_document() -> dict:
    return _document(
        request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"}), span(T1, "b" * 16, kind="BOGUS")),
        {"resourceSpans": ["not a resource"]},
        request("auth", span(T2, "c" * 16, start=START + 500, end=START + 5), span(T2, "d" * 16)),
        request(None, span(T2, "e" * 16)),
        request("db", *(span(T3, f"{i + 1:016x}") for i in range(7)), span(T3, "0" * 16)),
        request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"})),
    )


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(pl.all(), nulls_last=True)


def test_big_document_streamed_gives_the_rows_of_a_whole_parse(tmp_path, monkeypatch):
    document = _big_document()
    one_line = tmp_path / "one-line.json.gz"
    write_lines(one_line, [document])
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    whole = {path: read_span_file(path, DT) for path in (one_line, pretty)}
    assert json_files._streamed_otlp_key(one_line) is None  # small: parsed whole
    monkeypatch.setattr(json_files, "WHOLE_DOCUMENT_LIMIT", 100)
    assert json_files._streamed_otlp_key(one_line) == ("resourceSpans", 1)
    assert json_files._streamed_otlp_key(pretty) == ("resourceSpans", None)
    for path, expected in whole.items():
        for chunk_size in (1, 3, 1000):
            spans, quarantine = json_files.read_json_file(path, SpanCollector(DT, str(path), chunk_size))
            streamed = read_span_files([path], DT)  # default chunk: the dedupe of the whole file
            assert _sorted(spans.drop("_source_file", "_line_no")).height == expected.spans.height + 1  # + its duplicate
            assert _sorted(streamed.spans).equals(_sorted(expected.spans))
            assert _sorted(streamed.quarantine).equals(_sorted(expected.quarantine))
            # the raw text of a rejected span is found again in the streamed chunk
            bogus = quarantine.filter(pl.col("reason") == "bad_kinds")["raw"].to_list()
            assert [orjson.loads(text)["spanId"] for text in bogus] == ["b" * 16]
    assert sorted(whole[one_line].spans["span_id"]) == sorted(["a" * 16, "d" * 16] + [f"{i + 1:016x}" for i in range(7)])


def test_huge_first_line_is_streamed_and_the_other_lines_still_read(tmp_path, monkeypatch):
    lines = [_big_document(), request("api", span(T2, "7" * 16)), b"not json", request("api", span(T1, "a" * 16))]
    path = write_lines(tmp_path / "lines.json.gz", lines)
    expected = read_span_file(path, DT)
    monkeypatch.setattr(json_files, "WHOLE_DOCUMENT_LIMIT", 1000)
    assert json_files._streamed_otlp_key(path) == ("resourceSpans", 1)
    streamed = read_span_file(path, DT)
    assert _sorted(streamed.spans).equals(_sorted(expected.spans))
    assert _sorted(streamed.quarantine).equals(_sorted(expected.quarantine))
    assert ("malformed_lines", 3) in streamed.quarantine.select("reason", "line_no").rows()


def test_cut_big_document_keeps_the_entries_before_the_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(json_files, "WHOLE_DOCUMENT_LIMIT", 100)
    path = tmp_path / "cut.json"
    text = orjson.dumps(_big_document())
    path.write_bytes(text[: text.index(b'"auth"') + 40])
    batch = read_span_file(path, DT)
    assert sorted(batch.spans["span_id"]) == ["a" * 16]
    assert sorted(batch.quarantine["reason"]) == ["bad_kinds", "malformed_lines", "malformed_lines"]  # + "not a resource"
    (line_no, detail), = batch.quarantine.filter(pl.col("detail").str.starts_with("invalid JSON")).select("line_no", "detail").rows()
    assert line_no == 1 and "after 2 resourceSpans entries; later content is lost" in detail


def _proto_file(tmp_path, name: str, document: dict, keep_bytes: int | None = None):
    for entry in document["resourceSpans"]:
        for scope in entry["scopeSpans"]:
            for record in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):  # proto JSON bytes are base64
                    record[key] = base64.b64encode(bytes.fromhex(record[key])).decode()
    payload = json_format.ParseDict(document, ExportTraceServiceRequest()).SerializeToString()
    path = tmp_path / name
    path.write_bytes(payload if keep_bytes is None else payload[:keep_bytes])
    return path, len(payload)


def test_protobuf_read_in_chunks_and_damage_keeps_earlier_entries(tmp_path):
    first = request("api", *(span(T1, f"{i + 1:016x}") for i in range(5)))
    second = request("db", span(T2, "d" * 16))
    path, size = _proto_file(tmp_path, "batch.pb", _document(first, second))
    batch = read_span_file(path, DT)
    assert batch.spans.height == 6 and batch.quarantine.is_empty()
    spans, quarantine = read_otlp_proto_file(path, SpanCollector(DT, str(path), chunk_size=2))
    assert _sorted(spans.drop("_source_file", "_line_no")).equals(_sorted(batch.spans)) and quarantine.is_empty()
    cut, _ = _proto_file(tmp_path, "cut.pb", _document(request("api", *(span(T1, f"{i + 1:016x}") for i in range(5))),
                                                       request("db", span(T2, "d" * 16))), keep_bytes=size - 5)
    damaged = read_span_file(cut, DT)
    assert damaged.spans.height == 5
    assert damaged.quarantine.select("reason").rows() == [("unreadable_files",)]
    assert "after 1 resourceSpans entries" in damaged.quarantine["detail"][0]


def _tables(conn) -> tuple[pl.DataFrame, pl.DataFrame]:
    spans = pl.from_arrow(conn.sql("SELECT * FROM raw.spans").to_arrow_table()).cast(SPAN_SCHEMA)
    quarantine = pl.from_arrow(conn.sql("SELECT * FROM raw.span_quarantine").to_arrow_table()).cast(QUARANTINE_SCHEMA)
    return spans.select(list(SPAN_SCHEMA)), quarantine.select(list(QUARANTINE_SCHEMA))


def test_streamed_day_writes_the_rows_of_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr(json_files, "WHOLE_DOCUMENT_LIMIT", 1000)
    good = request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"}),
                   span(T1, "b" * 16, kind=3, parent="a" * 16, attributes={"peer.service": "auth"}))
    truncated = orjson.dumps(request("api", span(T2, "c" * 16)))[:70]
    redelivered = request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"}), span(T2, "d" * 16))
    yesterday = request("api", span(T2, "f" * 16, start=START - 5 * 86_400 * 10**9))
    files = [
        write_lines(tmp_path / "part-0.json.gz", [good, truncated, redelivered, yesterday]),
        write_lines(tmp_path / "part-1.json", [request("api", span(T1, "b" * 16, kind=3, parent="a" * 16)), redelivered]),
        write_lines(tmp_path / "big.json", [_big_document()]),
        _proto_file(tmp_path, "batch.pb", _document(request("api", span(T2, "d" * 16)), request("pay", span(T3, "9" * 16))))[0],
        tmp_path / "missing.json",
    ]
    assert json_files._streamed_otlp_key(files[2]) == ("resourceSpans", 1)
    expected = read_span_files(files, DT, partition=True)
    assert {"duplicate_spans", "timestamp_outside_partition", "malformed_lines", "bad_kinds"} <= set(expected.quarantine["reason"])
    for chunk_spans in (1, 2, 200_000):
        conn = duckdb.connect()
        counts = ingest_span_day(conn, files, DT, chunk_spans)
        ingest_span_day(conn, files, DT, chunk_spans)  # a rerun replaces the day
        spans, quarantine = _tables(conn)
        assert _sorted(spans).equals(_sorted(expected.spans))
        assert _sorted(quarantine).equals(_sorted(expected.quarantine))
        assert counts == {"spans": expected.spans.height, **dict(expected.quarantine["reason"].value_counts().iter_rows())}


@pytest.mark.parametrize("floor", [None, 1e-4])
def test_sampling_floor_is_the_setting_on_every_reader_and_the_streamed_day(tmp_path, floor):
    """p = 1e-5 (one span for 100,000 requests) is trusted under the default floor (1e-6)
    and quarantined under a configured 1e-4, by each reader and by ingest_span_day."""
    rare = {"sampling.probability": 1e-5}
    files = [
        write_lines(tmp_path / "part-0.json", [request("api", span(T1, "a" * 16, attributes=rare), span(T1, "b" * 16))]),
        _proto_file(tmp_path, "part-1.binpb", _document(request("db", span(T2, "c" * 16, attributes=rare))))[0],
        tmp_path / "part-2.parquet",
    ]
    pl.DataFrame({"trace_id": [T3, T3], "span_id": ["d" * 16, "e" * 16], "service": "pay", "kind": "SERVER",
                  "start_unix_nano": START, "end_unix_nano": START + 10,
                  "sampling_probability": [1e-5, 0.5]}).write_parquet(files[2])
    floor_kwargs = {} if floor is None else {"sampling_floor": floor}
    rare_ids = ["a" * 16, "c" * 16, "d" * 16]
    for path in files:
        batch = read_span_file(path, DT, **floor_kwargs)
        below = batch.quarantine.filter(pl.col("reason") == "sampling_probability_below_floor")
        assert batch.quarantine.height == below.height == (0 if floor is None else 1)
        if floor is None:
            assert batch.spans.filter(pl.col("span_id").is_in(rare_ids))["sampling_probability"].to_list() == [1e-5]
        else:
            assert below["span_id"].item() in rare_ids and "is below the floor 0.0001" in below["detail"].item()
    conn = duckdb.connect()
    counts = ingest_span_day(conn, files, DT, 2, **floor_kwargs)
    spans, quarantine = _tables(conn)
    expected = read_span_files(files, DT, partition=True, **floor_kwargs)
    assert _sorted(spans).equals(_sorted(expected.spans)) and _sorted(quarantine).equals(_sorted(expected.quarantine))
    if floor is None:
        assert counts == {"spans": 5} and sorted(spans.filter(pl.col("sampling_probability") == 1e-5)["span_id"]) == rare_ids
    else:
        assert counts == {"spans": 2, "sampling_probability_below_floor": 3}
        assert sorted(quarantine["span_id"]) == rare_ids
        assert quarantine["detail"].str.ends_with("is below the floor 0.0001").all()
