"""Dirty input: every bad record is one quarantine row with a reason; nothing raises,
nothing is dropped silently, and the good records around it still ingest."""

from __future__ import annotations

import datetime
import gzip

import orjson
import polars as pl

from cost_attribution.ingest.readers import read_span_file, read_span_files
from cost_attribution.ingest.spans import QUARANTINE_REASONS, QUARANTINE_SCHEMA, SPAN_SCHEMA
from ingest_span_builders import START, request, span, write_lines

DT = datetime.date(2026, 5, 28)
T1, T2 = "11" * 16, "22" * 16


def _reasons(batch) -> dict[str, int]:
    return dict(batch.quarantine["reason"].value_counts().iter_rows())


def _collector_style_day(tmp_path):
    good = request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"}),
                   span(T1, "b" * 16, kind=3, parent="a" * 16, attributes={"peer.service": "auth"}))
    truncated = orjson.dumps(request("api", span(T2, "c" * 16)))[:70]
    redelivered = request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1"}), span(T2, "d" * 16))
    backwards = request("auth", span(T2, "e" * 16, start=START + 500, end=START + 5))
    nameless = request(None, span(T2, "f" * 16))
    return write_lines(tmp_path / "part-0000.json.gz", [good, truncated, redelivered, backwards, nameless])


def test_collector_style_file_exact_quarantine_counts(tmp_path):
    batch = read_span_file(_collector_style_day(tmp_path), DT)
    assert _reasons(batch) == {"malformed_lines": 1, "duplicate_spans": 1, "negative_duration_spans": 1, "missing_service_name": 1}
    assert sorted(batch.spans["span_id"].to_list()) == ["a" * 16, "b" * 16, "d" * 16]
    lines = dict(batch.quarantine.select("reason", "line_no").iter_rows())
    assert lines == {"malformed_lines": 2, "duplicate_spans": 3, "negative_duration_spans": 4, "missing_service_name": 5}
    assert set(batch.quarantine["reason"]) <= set(QUARANTINE_REASONS)
    duplicate = batch.quarantine.filter(pl.col("reason") == "duplicate_spans").row(0, named=True)
    assert duplicate["span_id"] == "a" * 16 and "line 1" in duplicate["detail"]
    malformed = batch.quarantine.filter(pl.col("reason") == "malformed_lines").row(0, named=True)
    assert malformed["raw"].startswith('{"resourceSpans"') and len(malformed["raw"]) == 70


def test_duplicates_across_files_keep_the_first(tmp_path):
    first = write_lines(tmp_path / "a.json", [request("api", span(T1, "a" * 16))])
    second = write_lines(tmp_path / "b.json", [request("api", span(T1, "a" * 16), span(T1, "b" * 16))])
    batch = read_span_files([first, second], DT)
    assert batch.spans["span_id"].to_list() == ["a" * 16, "b" * 16]
    assert batch.quarantine.select("source_file", "reason", "line_no").rows() == [(str(second), "duplicate_spans", 1)]
    # read one at a time (no cross-file dedupe) both keep the span
    assert read_span_file(second, DT).spans.height == 2


def test_same_span_id_with_other_kind_or_service_is_not_a_duplicate(tmp_path):
    path = write_lines(tmp_path / "z.json", [request("api", span(T1, "a" * 16, kind=3)), request("auth", span(T1, "a" * 16, kind=2)),
                                             request("api", span(T1, "a" * 16, kind=2))])
    batch = read_span_file(path, DT)
    assert batch.spans.height == 3 and batch.quarantine.is_empty()


def test_truncated_gzip_keeps_what_was_read_and_reports_the_rest(tmp_path):
    lines = [request("api", span(T1, f"{i:016x}")) for i in range(1, 2001)]
    whole = gzip.compress(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    path = tmp_path / "cut.json.gz"
    path.write_bytes(whole[: len(whole) // 2])
    batch = read_span_file(path, DT)
    assert 0 < batch.spans.height < 2000
    # one span per line: every complete line ingests, the cut line is malformed, and one
    # unreadable_files row says the file ends early after it
    n = batch.spans.height
    assert batch.spans["span_id"].to_list() == [f"{i:016x}" for i in range(1, n + 1)]
    assert batch.quarantine.select("reason", "line_no").rows() == [("malformed_lines", n + 1), ("unreadable_files", None)]
    assert f"after line {n + 1};" in batch.quarantine["detail"][1]


def test_concatenated_gzip_members_are_all_read(tmp_path):
    first = gzip.compress(orjson.dumps(request("api", span(T1, "a" * 16))) + b"\n")
    second = gzip.compress(orjson.dumps(request("api", span(T1, "b" * 16))) + b"\n")
    (tmp_path / "two.json.gz").write_bytes(first + second)
    batch = read_span_file(tmp_path / "two.json.gz", DT)
    assert batch.spans["span_id"].to_list() == ["a" * 16, "b" * 16] and batch.quarantine.is_empty()


def test_unreadable_files_never_raise(tmp_path):
    cases = {
        "garbage.json.gz": b"\x1f\x8b" + b"not really gzip",
        "binary.json": bytes(range(256)) * 4,
        "broken_pretty.json": b'{\n  "resourceSpans": [\n    {\n',
        "garbage.pb": b"\xff\xff\xff\xff not protobuf",
        "garbage.parquet": b"PAR1 this is not parquet PAR1",
        "shape.json": b'{"hello": "world"}\n',
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    paths = [tmp_path / name for name in cases] + [tmp_path / "does-not-exist.json", tmp_path]
    batch = read_span_files(paths, DT)
    assert batch.spans.is_empty()
    assert dict(batch.spans.schema) == SPAN_SCHEMA and dict(batch.quarantine.schema) == QUARANTINE_SCHEMA
    by_file = dict(batch.quarantine.select("source_file", "reason").iter_rows())
    assert by_file == {
        str(tmp_path / "garbage.json.gz"): "unreadable_files",
        str(tmp_path / "binary.json"): "malformed_lines",
        str(tmp_path / "broken_pretty.json"): "unreadable_files",
        str(tmp_path / "garbage.pb"): "unreadable_files",
        str(tmp_path / "garbage.parquet"): "unreadable_files",
        str(tmp_path / "shape.json"): "malformed_lines",
        str(tmp_path / "does-not-exist.json"): "unreadable_files",
        str(tmp_path): "unreadable_files",
    }


def test_unexpected_structures_are_quarantined_and_siblings_survive(tmp_path):
    weird_attrs = span(T1, "c" * 16)
    weird_attrs["attributes"] = "not a list"
    doc = {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
         "scopeSpans": [{"spans": [span(T1, "a" * 16), "not a span", weird_attrs, span(T1, "b" * 16)]}]},
        "not a resource",
        {"resource": {"attributes": "broken"}, "scopeSpans": [{"spans": [span(T1, "e" * 16)]}]},
        {"resource": {}, "scopeSpans": [{"spans": 5}]},
        {"resource": {}, "scopeSpans": {"spans": []}},
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "db"}}]},
         "scopeSpans": [{"spans": [span(T1, "d" * 16)]}, {"spans": [span(T1, "f" * 16, kind="BOGUS")]}]},
    ]}
    batch = read_span_file(write_lines(tmp_path / "w.json", [doc, b"", b"[]", b"{}"]), DT)
    assert sorted(batch.spans["span_id"].to_list()) == ["a" * 16, "b" * 16, "d" * 16]
    assert batch.quarantine.select("reason", "line_no").rows() == [("bad_kinds", 1)] + [("malformed_lines", 1)] * 6 + [("malformed_lines", 4)]
    # the raw text of a rejected span is that span, found again in its line
    assert orjson.loads(batch.quarantine["raw"][0]) == span(T1, "f" * 16, kind="BOGUS")


def test_pretty_printed_document_and_blank_lines(tmp_path):
    pretty = orjson.dumps(request("api", span(T1, "a" * 16), span(T1, "b" * 16)), option=orjson.OPT_INDENT_2)
    path = tmp_path / "pretty.json"
    path.write_bytes(b"\n\n" + pretty + b"\n\n")
    batch = read_span_file(path, DT)
    assert batch.spans.height == 2 and batch.quarantine.is_empty()
    (tmp_path / "empty.json").write_bytes(b"")
    empty = read_span_file(tmp_path / "empty.json", DT)
    assert empty.spans.is_empty() and empty.quarantine.is_empty()


def test_first_line_truncated_still_reads_as_json_lines(tmp_path):
    good = orjson.dumps(request("api", span(T1, "a" * 16)))
    path = write_lines(tmp_path / "t.json", [good[:40], good[:55], request("api", span(T1, "b" * 16)), good])
    batch = read_span_file(path, DT)
    assert sorted(batch.spans["span_id"].to_list()) == ["a" * 16, "b" * 16]
    assert batch.quarantine.select("reason", "line_no").rows() == [("malformed_lines", 1), ("malformed_lines", 2)]


def test_raw_text_is_capped(tmp_path):
    huge = span(T1, "a" * 16, attributes={f"k{i}": "v" * 50 for i in range(100)}, kind="NOPE")
    batch = read_span_file(write_lines(tmp_path / "h.json", [request("api", huge), b"{" + b"x" * 5000]), DT)
    assert batch.quarantine["raw"].str.len_chars().to_list() == [2000, 2000]


def _mutations(document, rng, count):
    """Copies of document with one value somewhere replaced by a value of another type."""
    replacements = [None, 0, -1, 2**70, 1.5, "", "x", True, [], [1, "a"], {}, {"k": []}]

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for key, value in node.items():
                yield from paths(value, prefix + (key,))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from paths(value, prefix + (index,))

    all_paths = [p for p in paths(document) if p]
    for _ in range(count):
        copy = orjson.loads(orjson.dumps(document))
        path = all_paths[rng.randrange(len(all_paths))]
        node = copy
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = rng.choice(replacements)
        yield copy


def test_randomly_mutated_requests_never_raise(tmp_path):
    import random

    rng = random.Random(11)
    base = request("api", span(T1, "a" * 16, attributes={"enduser.id": "m1", "sampling.probability": 0.5}, tracestate="ot=th:8"),
                   span(T1, "b" * 16, kind=3, parent="a" * 16, attributes={"peer.service": "auth"}))
    lines = list(_mutations(base, rng, 400))
    encoded = []
    for line in lines:
        try:
            encoded.append(orjson.dumps(line))
        except TypeError:  # 2**70 is not encodable by orjson; write it by hand
            encoded.append(repr(line).encode())  # python repr: invalid JSON -> malformed line
    batch = read_span_file(write_lines(tmp_path / "fuzz.json", encoded), DT)
    assert dict(batch.spans.schema) == SPAN_SCHEMA and dict(batch.quarantine.schema) == QUARANTINE_SCHEMA
    assert set(batch.quarantine["reason"]) <= set(QUARANTINE_REASONS)
    assert batch.spans.height > 0 and batch.quarantine.height > 0
    assert batch.spans["trace_id"].str.contains("^[0-9a-f]{32}$").all()
    assert batch.spans["kind"].is_in(["SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER", "UNSPECIFIED"]).all()
    assert ((batch.spans["sampling_probability"] > 0) & (batch.spans["sampling_probability"] <= 1)).all()
    assert (batch.spans["end_unix_nano"] >= batch.spans["start_unix_nano"]).all()
