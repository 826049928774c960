"""Encoding conventions: ids, kinds, int64 spellings, OTEP 235 sampling and precedence."""

from __future__ import annotations

import base64
import datetime

import numpy as np
import pytest

from cost_attribution.ingest.readers import read_span_file
from cost_attribution.ingest.spans import parse_tracestate_threshold, sampling_probability_from_tracestate
from ingest_span_builders import START, request, span, write_lines

DT = datetime.date(2026, 5, 28)
TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
PARENT_HEX = "0102030405060708"


def _b64(hex_id: str, *, urlsafe: bool = False, pad: bool = True) -> str:
    raw = bytes.fromhex(hex_id)
    text = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return text if pad else text.rstrip("=")


def test_hex_and_base64_ids_give_identical_rows(tmp_path):
    # 0xfb/0xff bytes make the standard and URL-safe base64 alphabets actually differ.
    trace, span_hex, parent = "fbff" + TRACE_HEX[4:], "fbff" + SPAN_HEX[4:], PARENT_HEX
    spellings = [
        (trace, span_hex, parent),
        (trace.upper(), span_hex.upper(), parent.upper()),
        (_b64(trace), _b64(span_hex), _b64(parent)),
        (_b64(trace, pad=False), _b64(span_hex, pad=False), _b64(parent, pad=False)),
        (_b64(trace, urlsafe=True), _b64(span_hex, urlsafe=True), _b64(parent, urlsafe=True)),
    ]
    assert len({s[0] for s in spellings}) == len(spellings)  # genuinely different texts
    rows = []
    for i, (t, s, p) in enumerate(spellings):
        path = write_lines(tmp_path / f"ids{i}.json", [request("svc", span(t, s, parent=p))])
        batch = read_span_file(path, DT)
        assert batch.quarantine.is_empty()
        rows.append(batch.spans.row(0, named=True))
    assert all(row == rows[0] for row in rows)
    assert (rows[0]["trace_id"], rows[0]["span_id"], rows[0]["parent_span_id"]) == (trace, span_hex, parent)


@pytest.mark.parametrize(
    "spelling, expected",
    [(0, "UNSPECIFIED"), (1, "INTERNAL"), (2, "SERVER"), (3, "CLIENT"), (4, "PRODUCER"), (5, "CONSUMER"),
     ("SPAN_KIND_SERVER", "SERVER"), ("SERVER", "SERVER"), ("SPAN_KIND_CONSUMER", "CONSUMER"), ("client", "CLIENT")],
)
def test_int_and_string_kinds(tmp_path, spelling, expected):
    path = write_lines(tmp_path / "k.json", [request("svc", span(TRACE_HEX, SPAN_HEX, kind=spelling))])
    assert read_span_file(path, DT).spans["kind"].to_list() == [expected]


@pytest.mark.parametrize("bad_kind", [6, -1, "SPAN_KIND_INVALID_TYPE", "", True])
def test_unknown_kinds_are_quarantined(tmp_path, bad_kind):
    path = write_lines(tmp_path / "k.json", [request("svc", span(TRACE_HEX, SPAN_HEX, kind=bad_kind), span(TRACE_HEX, PARENT_HEX))])
    batch = read_span_file(path, DT)
    assert batch.quarantine["reason"].to_list() == ["bad_kinds"]
    assert batch.spans["span_id"].to_list() == [PARENT_HEX]  # the sibling span still ingests


def test_bools_are_not_taken_for_ints(tmp_path):
    # True == 1 in Python; column building must not turn it into INTERNAL or a time of 1.
    spans = [span(TRACE_HEX, "0000000000000001", kind=2, start=START), span(TRACE_HEX, "0000000000000002", kind=True),
             span(TRACE_HEX, "0000000000000003", start=START, end=True)]
    batch = read_span_file(write_lines(tmp_path / "b.json", [request("svc", *spans)]), DT)
    assert batch.spans["span_id"].to_list() == ["0000000000000001"]
    assert batch.quarantine.select("span_id", "reason").rows() == [("0000000000000002", "bad_kinds"), ("0000000000000003", "bad_timestamps")]


def test_missing_kind_defaults_per_format(tmp_path):
    record = span(TRACE_HEX, SPAN_HEX)
    del record["kind"]
    path = write_lines(tmp_path / "k.json", [request("svc", record)])
    assert read_span_file(path, DT).spans["kind"].to_list() == ["UNSPECIFIED"]  # OTLP proto3 default


def test_int64_as_string_or_number(tmp_path):
    as_text = span(TRACE_HEX, SPAN_HEX, start=str(START), end=str(START + 7))
    as_number = span(TRACE_HEX, SPAN_HEX, start=START, end=START + 7)
    rows = [read_span_file(write_lines(tmp_path / f"t{i}.json", [request("svc", s)]), DT).spans.row(0) for i, s in enumerate([as_text, as_number])]
    assert rows[0] == rows[1]
    assert rows[0][7:9] == (START, START + 7)


@pytest.mark.parametrize("start", [1.78e18, "1.78e18", "abc", None, 0, 2**63, "18446744073709551616", "-5", True])
def test_non_integer_or_missing_times_are_bad_timestamps(tmp_path, start):
    record = span(TRACE_HEX, SPAN_HEX, start=START, end=START + 10)
    record["startTimeUnixNano"] = start
    batch = read_span_file(write_lines(tmp_path / "t.json", [request("svc", record)]), DT)
    assert batch.quarantine["reason"].to_list() == ["bad_timestamps"] and batch.spans.is_empty()


@pytest.mark.parametrize(
    "tracestate, expected",
    [
        ("ot=th:0", 1.0),
        ("ot=th:8", 0.5),
        ("ot=th:c", 0.25),
        ("ot=th:fd70a3d70a3d7", 0.01),
        ("ot=rv:0123456789abcd;th:8", 0.5),
        ("rojo=00f067aa0ba902b7,ot=th:c", 0.25),
        ("ot=th:ffffffffffffff", 2.0**-56),
    ],
)
def test_otep235_threshold_math(tracestate, expected):
    assert sampling_probability_from_tracestate(tracestate) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("tracestate", ["ot=th:", "ot=th:xyz", "ot=th:8G", "ot=th:123456789abcdef", "ot=th:C"])
def test_malformed_thresholds(tracestate):
    assert parse_tracestate_threshold(tracestate).status == "malformed"
    assert sampling_probability_from_tracestate(tracestate) is None


@pytest.mark.parametrize("tracestate", [None, "", "rojo=00f067aa0ba902b7", "ot=rv:0123456789abcd"])
def test_absent_thresholds(tracestate):
    assert parse_tracestate_threshold(tracestate).status == "absent"


def test_threshold_probability_matches_the_sampling_decision_by_simulation():
    # OTEP 235 keeps a span when its 56-bit randomness R >= T. Simulate that decision and
    # check the kept fraction agrees with the formula within 4 standard errors.
    rng = np.random.default_rng(235)
    randomness = rng.integers(0, 2**56, size=400_000, dtype=np.uint64)
    for th in ["8", "c", "fd70a3d70a3d7", "e", "1"]:
        threshold = np.uint64(int(th.ljust(14, "0"), 16))
        kept = float(np.mean(randomness >= threshold))
        p = sampling_probability_from_tracestate(f"ot=th:{th}")
        assert abs(kept - p) < 4 * np.sqrt(p * (1 - p) / randomness.size), (th, kept, p)


def test_sampling_precedence_attribute_then_tracestate_then_one(tmp_path):
    spans = [
        span(TRACE_HEX, "0000000000000001", attributes={"sampling.probability": 0.25}, tracestate="ot=th:8"),
        span(TRACE_HEX, "0000000000000002", tracestate="ot=th:8"),
        span(TRACE_HEX, "0000000000000003", tracestate="rojo=00f067aa0ba902b7"),
        span(TRACE_HEX, "0000000000000004"),
        span(TRACE_HEX, "0000000000000005", attributes={"sampling.probability": 1}),  # intValue
        span(TRACE_HEX, "0000000000000006", attributes={"sampling.probability": "0.125"}),  # stringValue
        # present but invalid attribute wins over a valid tracestate: quarantined
        span(TRACE_HEX, "0000000000000007", attributes={"sampling.probability": 0.0}, tracestate="ot=th:8"),
        span(TRACE_HEX, "0000000000000008", attributes={"sampling.probability": 1.5}),
        span(TRACE_HEX, "0000000000000009", attributes={"sampling.probability": "often"}),
        span(TRACE_HEX, "000000000000000a", tracestate="ot=th:zz"),
    ]
    batch = read_span_file(write_lines(tmp_path / "s.json", [request("svc", *spans)]), DT)
    got = dict(batch.spans.select("span_id", "sampling_probability").iter_rows())
    assert got == {"0000000000000001": 0.25, "0000000000000002": 0.5, "0000000000000003": 1.0,
                   "0000000000000004": 1.0, "0000000000000005": 1.0, "0000000000000006": 0.125}
    assert batch.quarantine.sort("span_id").select("span_id", "reason").rows() == [
        (f"000000000000000{c}", "bad_sampling_probability") for c in "789a"
    ]


def test_peer_service_and_member_fallbacks(tmp_path):
    spans = [
        span(TRACE_HEX, "0000000000000001", kind=3, attributes={"peer.service": "auth", "server.address": "auth.internal"}),
        span(TRACE_HEX, "0000000000000002", kind=3, attributes={"server.address": "profile.internal"}),
        span(TRACE_HEX, "0000000000000003", kind=3, attributes={"net.peer.name": "db.internal"}),
        span(TRACE_HEX, "0000000000000004", kind=2, attributes={"enduser.id": "m1", "user.id": "u1"}),
        span(TRACE_HEX, "0000000000000005", kind=2, attributes={"user.id": 42}),
        span(TRACE_HEX, "0000000000000006", kind=2, attributes={"peer.service": "caller"}),  # not a callee
    ]
    got = read_span_file(write_lines(tmp_path / "p.json", [request("svc", *spans)]), DT).spans
    assert got.select("span_id", "peer_service", "member_id").rows() == [
        ("0000000000000001", "auth", None),
        ("0000000000000002", "profile.internal", None),
        ("0000000000000003", "db.internal", None),
        ("0000000000000004", None, "m1"),
        ("0000000000000005", None, "42"),
        ("0000000000000006", None, None),
    ]


@pytest.mark.parametrize(
    "trace_id, span_id",
    [("zzz", SPAN_HEX), (TRACE_HEX[:30], SPAN_HEX), (TRACE_HEX, SPAN_HEX + "00"), ("0" * 32, SPAN_HEX),
     (TRACE_HEX, "0" * 16), (_b64(SPAN_HEX), SPAN_HEX), (None, SPAN_HEX), (TRACE_HEX, "")],
)
def test_bad_ids(tmp_path, trace_id, span_id):
    batch = read_span_file(write_lines(tmp_path / "i.json", [request("svc", span(trace_id, span_id))]), DT)
    assert batch.quarantine["reason"].to_list() == ["bad_ids"] and batch.spans.is_empty()


def test_root_parent_spellings_are_null_and_bad_parent_is_quarantined(tmp_path):
    spans = [span(TRACE_HEX, "0000000000000001", parent=""), span(TRACE_HEX, "0000000000000002", parent="0" * 16),
             span(TRACE_HEX, "0000000000000006", parent=_b64("0" * 16)),
             span(TRACE_HEX, "0000000000000003", parent=PARENT_HEX), span(TRACE_HEX, "0000000000000004", parent="nothex")]
    record = span(TRACE_HEX, "0000000000000005")
    del record["parentSpanId"]
    batch = read_span_file(write_lines(tmp_path / "r.json", [request("svc", *spans, record)]), DT)
    assert dict(batch.spans.select("span_id", "parent_span_id").iter_rows()) == {
        "0000000000000001": None, "0000000000000002": None, "0000000000000003": PARENT_HEX, "0000000000000005": None,
        "0000000000000006": None}
    assert batch.quarantine.select("span_id", "reason").rows() == [("0000000000000004", "bad_ids")]


def test_snake_case_field_names_give_identical_rows(tmp_path):
    # Some exporters write the proto field names (trace_id, start_time_unix_nano, ...).
    camel = span(TRACE_HEX, SPAN_HEX, parent=PARENT_HEX)
    renames = {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id",
               "startTimeUnixNano": "start_time_unix_nano", "endTimeUnixNano": "end_time_unix_nano"}
    snake = {renames.get(key, key): value for key, value in camel.items()}
    rows = [read_span_file(write_lines(tmp_path / f"{i}.json", [request("svc", s)]), DT).spans.row(0, named=True)
            for i, s in enumerate([camel, snake])]
    assert set(renames).isdisjoint(snake) and rows[0] == rows[1]
