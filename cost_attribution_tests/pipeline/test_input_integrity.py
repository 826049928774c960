"""Issue 16 acceptance: the accidents real landing zones have, one per case, on mutated
copies of the small simulated world.

Each case asserts the outcome a user sees (success or the clear error, naming file, line
and fix), the quarantine reason and count it adds, and that the numbers it should not
touch are unchanged. Most accidents act on one ingest asset, so a case materializes
just the assets that read the mutated input (seconds) and compares with the same assets
on the unmutated world; the accidents whose outcome is the published report (exit code,
last good report kept, chart labels) run the whole pipeline through the CLI and are
marked slow.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cost_attribution import cli
from cost_attribution.ingest.assets import (
    allocations,
    business_metrics,
    experiments,
    focus_costs,
    raw_spans,
    services,
    usage_metrics,
)
from cost_attribution.reporting.text import render_text
from cost_attribution.resources import AnalysisSettings, LandingZone
from cost_attribution.warehouse import WarehouseBusy, writer_lock

TABLE_ASSETS = [experiments, services, allocations, focus_costs, usage_metrics, business_metrics]


# ---------------------------------------------------------------- the world and its copies


@pytest.fixture(scope="module")
def base(small_world, tmp_path_factory):
    """The unmutated world's ingest (all table assets, the last trace day): the numbers
    every case compares with."""
    landing, truth = small_world
    day = dt.date.fromisoformat(truth["last_trace_day"])
    warehouse = tmp_path_factory.mktemp("integrity_base") / "w.duckdb"
    result = _ingest(landing, warehouse, [*TABLE_ASSETS, raw_spans], day)
    assert result.success
    return landing, day, _numbers(warehouse, day)


def _ingest(landing: Path, warehouse: Path, assets: list, day: dt.date, settings: AnalysisSettings | None = None):
    resources = {
        "landing": LandingZone(root=str(landing)),
        "warehouse": DuckDBResource(database=str(warehouse)),
        "settings": settings or AnalysisSettings(),
    }
    tables = [a for a in assets if a is not raw_spans]
    result = dg.materialize(tables, resources=resources, raise_on_error=False) if tables else None
    if raw_spans in assets and (result is None or result.success):
        result = dg.materialize([raw_spans], partition_key=day.isoformat(), resources=resources, raise_on_error=False)
    return result


def _numbers(warehouse: Path, day: dt.date) -> dict:
    """What the downstream analysis reads from the raw tables, per table."""
    queries = {
        "spans": ("SELECT count(*), round(sum(1 / sampling_probability), 3), count(DISTINCT service) FROM raw.spans WHERE dt = ?", [day]),
        "costs": ("SELECT count(*), round(sum(effective_cost), 6) FROM raw.focus_costs", []),
        "usage": ("SELECT count(*), sum(requests) FROM raw.usage_metrics", []),
        "allocations": ("SELECT count(*), count(DISTINCT member_id) FROM raw.allocations", []),
        "experiments": ("SELECT count(*), string_agg(experiment_id || ':' || cells, ';' ORDER BY experiment_id) FROM raw.experiments", []),
        "services": ("SELECT count(*), string_agg(service || ':' || deprecated, ';' ORDER BY service) FROM raw.services", []),
        "business": ("SELECT count(*), sum(delta_pct) FROM raw.business_metrics", []),
    }
    numbers = {}
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        conn.execute("SET python_enable_replacements = false")  # a missing table is None, not a Python variable
        for name, (sql, params) in queries.items():
            try:
                numbers[name] = tuple(conn.execute(sql, params).fetchall()[0])
            except duckdb.CatalogException:
                numbers[name] = None
        quarantine = {}
        for table in ("raw.span_quarantine", "raw.input_quarantine"):
            try:
                quarantine.update({r[0]: r[1] for r in conn.execute(f"SELECT reason, count(*) FROM {table} GROUP BY 1").fetchall()})
            except duckdb.CatalogException:
                pass
        numbers["quarantine"] = quarantine
    return numbers


def _copy(landing: Path, tmp_path: Path) -> Path:
    target = tmp_path / "landing"
    shutil.copytree(landing, target, symlinks=True)
    return target


# ---------------------------------------------------------------- mutations


def _day_file(landing: Path, day: dt.date) -> Path:
    return landing / "traces" / f"dt={day.isoformat()}" / "part-0000.json.gz"


def _edit_lines(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        lines = handle.read().splitlines()
    with opener(path, "wt") as handle:
        handle.write("\n".join(edit(lines)) + "\n")


def _clean_request(lines: list[str]) -> tuple[int, dict]:
    """The last OTLP line (the simulator's dirty records sit at the top of the file) and
    its spans emitted by a named service, as (line index, document)."""
    for index in reversed(range(len(lines))):
        try:
            document = json.loads(lines[index])
        except ValueError:
            continue
        if document.get("resourceSpans"):
            return index, document
    raise AssertionError("no OTLP line")


def _named_spans(document: dict) -> list[dict]:
    return [span for resource in document["resourceSpans"]
            if any(a["key"] == "service.name" for a in resource["resource"].get("attributes", []))
            for scope in resource["scopeSpans"] for span in scope["spans"]]


def _edit_first_span(edit: Callable[[dict], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        index, document = _clean_request(lines)
        edit(_named_spans(document)[0])
        lines[index] = json.dumps(document)
        return lines

    return apply


def _set_sampling(probability: float) -> Callable[[dict], None]:
    def edit(span: dict) -> None:
        span["attributes"] = [a for a in span.get("attributes", []) if a["key"] != "sampling.probability"]
        span["attributes"].append({"key": "sampling.probability", "value": {"doubleValue": probability}})

    return edit


def _set_start(year: int) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        index, document = _clean_request(lines)
        for span in _named_spans(document)[:1]:
            start = int(dt.datetime(year, 6, 1, tzinfo=dt.timezone.utc).timestamp() * 1e9)
            span["startTimeUnixNano"], span["endTimeUnixNano"] = str(start), str(start + 1000)
        lines[index] = json.dumps(document)
        return lines

    return apply


def _set_start_of_second(year: int) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        index, document = _clean_request(lines)
        span = _named_spans(document)[1]
        start = int(dt.datetime(year, 6, 1, tzinfo=dt.timezone.utc).timestamp() * 1e9)
        span["startTimeUnixNano"], span["endTimeUnixNano"] = str(start), str(start + 1000)
        lines[index] = json.dumps(document)
        return lines

    return apply


def _move_first_line_to_protobuf(landing: Path, day: dt.date, name: str) -> None:
    path = _day_file(landing, day)
    moved = []

    def take(lines: list[str]) -> list[str]:
        index, _ = _clean_request(lines)
        moved.append(json.loads(lines.pop(index)))
        return lines

    _edit_lines(path, take)
    for span in (s for r in moved[0]["resourceSpans"] for sc in r["scopeSpans"] for s in sc["spans"]):
        for key in ("traceId", "spanId", "parentSpanId"):  # OTLP JSON ids are hex; proto JSON bytes are base64
            span[key] = base64.b64encode(bytes.fromhex(span.get(key) or "")).decode()
    request = json_format.ParseDict(moved[0], ExportTraceServiceRequest())
    (path.parent / name).write_bytes(request.SerializeToString())


def _rewrite_csv(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    _edit_lines(path, edit)


def _costs(landing: Path) -> Path:
    return landing / "costs" / "focus_hourly.csv.gz"


def _usage(landing: Path) -> Path:
    return landing / "usage_metrics" / "requests_hourly.csv"


def _allocations(landing: Path) -> Path:
    return landing / "allocations" / "allocations.csv"


def _replace_in(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _focus_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    header = lines[0].split(",")
    fields = lines[row].split(",")
    fields[header.index(column)] = value
    lines[row] = ",".join(fields)
    return lines


def _currency_rows(lines: list[str], rows: range, currency: str) -> list[str]:
    for row in rows:
        lines = _focus_cell(lines, row, "BillingCurrency", currency)
    return lines


def _usage_row(lines: list[str], row: int, requests: str, cpu: str | None = None) -> list[str]:
    if cpu is not None:
        lines = [lines[0] + ",cpu_seconds"] + [line + ",1.5" for line in lines[1:]]
        lines[row] = lines[row].rsplit(",", 1)[0] + "," + cpu
    fields = lines[row].split(",")
    fields[2] = requests
    lines[row] = ",".join(fields)
    return lines


# ---------------------------------------------------------------- the ingest-level cases


@dataclass
class Case:
    name: str
    mutate: Callable[[Path, dt.date], None]
    assets: list
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows added
    error: str | None = None  # substring of the failure's message; None = the run succeeds
    changed: tuple[str, ...] = ()  # numbers the accident legitimately changes
    settings: AnalysisSettings | None = None


def _rename(landing: Path, day: dt.date) -> None:
    path = _day_file(landing, day)
    path.rename(path.with_name("PART-0000.JSON.GZ"))


def _copy_trace_file(landing: Path, day: dt.date) -> None:
    path = _day_file(landing, day)
    shutil.copy(path, path.with_name("part-0000-retry.json.gz"))


CASES = [
    Case("focus file delivered twice under another name",
         lambda z, d: shutil.copy(_costs(z), z / "costs" / "focus_hourly (1).csv.gz"),
         [focus_costs], {"duplicate_files": 1}),
    Case("trace file named *.JSON.GZ", _rename, [raw_spans]),
    Case("OTLP protobuf as .binpb", lambda z, d: _move_first_line_to_protobuf(z, d, "batch-1.binpb"), [raw_spans]),
    Case("OTLP protobuf as .protobuf", lambda z, d: _move_first_line_to_protobuf(z, d, "batch-1.PROTOBUF"), [raw_spans]),
    Case("trace file no reader takes",
         lambda z, d: (_day_file(z, d).parent / "spans.avro").write_bytes(b"Obj\x01"),
         [raw_spans], {"unread_files": 1}),
    Case("the same trace file delivered twice", _copy_trace_file, [raw_spans], {"duplicate_files": 1}),
    Case("yesterday's trace file delivered again into today's folder",
         lambda z, d: shutil.copy(_day_file(z, d - dt.timedelta(days=1)), _day_file(z, d).with_name("late.json.gz")),
         [raw_spans], {"duplicate_files": 1}),
    Case("symlink out of the landing zone",
         lambda z, d: (z / "costs" / "passwd.csv").symlink_to("/etc/passwd"),
         [focus_costs], {"unread_files": 1}),
    Case("sampling.probability 1e-300 on one span",
         lambda z, d: _edit_lines(_day_file(z, d), _edit_first_span(_set_sampling(1e-300))),
         [raw_spans], {"sampling_probability_below_floor": 1}, changed=("spans",)),
    Case("span timestamps in 1970 and 2100",
         lambda z, d: (_edit_lines(_day_file(z, d), _set_start(1970)), _edit_lines(_day_file(z, d), _set_start_of_second(2100))),
         [raw_spans], {"timestamp_outside_partition": 2}, changed=("spans",)),
    Case("a lone `{` line and a cut line at the top of a trace file (a collector crash)",
         lambda z, d: _edit_lines(_day_file(z, d), lambda lines: ["{", lines[-1][:50], *lines]),
         [raw_spans], {"malformed_lines": 2}),
    Case("NaN EffectiveCost", lambda z, d: _edit_lines(_costs(z), lambda ls: _focus_cell(ls, 2, "EffectiveCost", "NaN")),
         [focus_costs], {"non_finite_cost": 1}, changed=("costs",)),
    Case("EUR rows among USD", lambda z, d: _edit_lines(_costs(z), lambda ls: _currency_rows(ls, range(2, 5), "EUR")),
         [focus_costs], {"non_usd_currency": 3}, changed=("costs",)),
    Case("EUR rows with a configured rate table",
         lambda z, d: _edit_lines(_costs(z), lambda ls: _currency_rows(ls, range(2, 5), "EUR")),
         [focus_costs], changed=("costs",), settings=AnalysisSettings(usd_rates={"EUR": 1.0})),
    Case("an infinite usage value", lambda z, d: _edit_lines(_usage(z), lambda ls: _usage_row(ls, 3, "inf")),
         [usage_metrics], {"bad_request_count": 1}, changed=("usage",)),
    Case("usage cpu_seconds negative", lambda z, d: _edit_lines(_usage(z), lambda ls: _usage_row(ls, 3, "5", cpu="-2")),
         [usage_metrics], {"bad_cpu_seconds": 1}, changed=("usage",)),
    Case("usage_metrics CSV without its header line", lambda z, d: _edit_lines(_usage(z), lambda ls: ls[1:]),
         [usage_metrics], error="lacks the columns ['hour', 'service', 'requests']"),
    Case("one ragged allocations row",
         lambda z, d: _edit_lines(_allocations(z), lambda ls: [*ls, "m-extra,smarter-prefetch,control,2026-10-28T00:00:00Z,oops"]),
         [experiments, allocations], {"ragged_rows": 1}),
    Case("experiment with no control members",
         lambda z, d: _edit_lines(_allocations(z), lambda ls: [ls[0]] + [x for x in ls[1:] if ",ratings-badge,control," not in x]),
         [experiments, allocations], changed=("allocations",)),
    Case('deprecated: "false" (a string)',
         lambda z, d: _replace_in(z / "services.yaml", "deprecated: false", 'deprecated: "false"'), [services]),
    Case("a duplicate service entry",
         lambda z, d: _edit_lines(z / "services.yaml", lambda ls: [*ls, "- name: api-gateway", "  owner: someone"]),
         [services], error="service 'api-gateway' is listed again (first at line 2)"),
    Case("a comma in a cell name",
         lambda z, d: _replace_in(z / "experiments.yaml", "cells: [control, treatment]", 'cells: [control, "treat,ment"]'),
         [experiments], error="cell names may not contain a comma: ['treat,ment']"),
    Case("an unknown key in experiments.yaml",
         lambda z, d: _replace_in(z / "experiments.yaml", "  owner: growth-team", "  owner: growth-team\n  ownr: x"),
         [experiments], error="experiments.yaml line 8: experiment 'smarter-prefetch': ownr: unknown key"),
    Case("an impossible start date",
         lambda z, d: _replace_in(z / "experiments.yaml", "start: 2026-10-30", "start: 2026-02-30"),
         [experiments], error="experiments.yaml line 6: experiment 'smarter-prefetch': start: Input should be a valid date"),
    Case("missing services.yaml", lambda z, d: (z / "services.yaml").unlink(), [services],
         error="services.yaml: missing. Fix: add services.yaml to the landing zone"),
    Case("missing experiments.yaml", lambda z, d: (z / "experiments.yaml").unlink(), [experiments],
         error="experiments.yaml: missing. Fix: add experiments.yaml to the landing zone"),
]


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.event_specific_data.error
    return error.cause.message if error.cause else error.message


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_accident(case: Case, base, tmp_path):
    landing, day, before = base
    mutated = _copy(landing, tmp_path)
    case.mutate(mutated, day)
    warehouse = tmp_path / "w.duckdb"
    result = _ingest(mutated, warehouse, case.assets, day, case.settings)
    if case.error:
        assert not result.success
        assert case.error in _failure_message(result)
        return
    assert result.success, _failure_message(result)
    after = _numbers(warehouse, day)
    added = {r: n - before["quarantine"].get(r, 0) for r, n in after["quarantine"].items() if n != before["quarantine"].get(r, 0)}
    assert added == case.quarantined
    read = {"raw_spans": ["spans"], "focus_costs": ["costs"], "usage_metrics": ["usage"], "allocations": ["allocations"],
            "experiments": ["experiments"], "services": ["services"], "business_metrics": ["business"]}
    for asset in case.assets:
        for table in read[asset.op.name]:
            if table not in case.changed:
                assert after[table] == before[table], table


def test_sampling_floor_leaves_every_other_span(base, tmp_path):
    landing, day, before = base
    mutated = _copy(landing, tmp_path)
    _edit_lines(_day_file(mutated, day), _edit_first_span(_set_sampling(1e-300)))
    assert _ingest(mutated, tmp_path / "w.duckdb", [raw_spans], day).success
    after = _numbers(tmp_path / "w.duckdb", day)
    assert after["spans"][0] == before["spans"][0] - 1
    assert after["spans"][1] < 1e12  # no adjusted count of 1e300


def test_currency_conversion_and_cpu_seconds_columns(base, tmp_path):
    landing, day, before = base
    mutated = _copy(landing, tmp_path)
    _edit_lines(_usage(mutated), lambda ls: _usage_row(ls, 3, "5", cpu="2.5"))
    assert _ingest(mutated, tmp_path / "w.duckdb", [usage_metrics], day).success
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'usage_metrics'").fetchall())
        assert types["cpu_seconds"] == "DOUBLE"
        assert conn.execute("SELECT count(*) FROM raw.usage_metrics WHERE cpu_seconds IS NULL").fetchall()[0][0] == 0
    base_usage = tmp_path / "base.duckdb"
    assert _ingest(landing, base_usage, [usage_metrics], day).success
    with duckdb.connect(str(base_usage), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM raw.usage_metrics WHERE cpu_seconds IS NOT NULL").fetchall()[0][0] == 0


def test_no_control_members_is_said(base, tmp_path):
    landing, day, _ = base
    mutated = _copy(landing, tmp_path)
    _edit_lines(_allocations(mutated), lambda ls: [ls[0]] + [x for x in ls[1:] if ",ratings-badge,control," not in x])
    result = _ingest(mutated, tmp_path / "w.duckdb", [experiments, allocations], day)
    metadata = result.asset_materializations_for_node("allocations")[0].metadata
    assert "| ratings-badge | control |" in metadata["cells_without_members"].value


def test_symlinked_file_content_never_reaches_quarantine(base, tmp_path):
    landing, day, _ = base
    mutated = _copy(landing, tmp_path)
    (mutated / "costs" / "passwd.csv").symlink_to("/etc/passwd")
    assert _ingest(mutated, tmp_path / "w.duckdb", [focus_costs], day).success
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT reason, detail, raw FROM raw.input_quarantine WHERE source_file LIKE '%passwd%'").fetchall()
    assert rows == [("unread_files", "symlink pointing outside the landing zone: not followed", "")]


def test_unread_files_are_listed_with_the_reason(base, tmp_path):
    landing, day, _ = base
    mutated = _copy(landing, tmp_path)
    (mutated / "traces" / "dt=2026-13-45").mkdir()
    (mutated / "traces" / "dt=2026-13-45" / "part.json").write_text("{}\n")
    (mutated / "costs" / "notes.txt.bak").write_text("x")
    (mutated / "extra_folder").mkdir()
    zone = LandingZone(root=str(mutated))
    unread = {str(u.path.relative_to(mutated)): u.why for u in zone.unread_files()}
    assert unread == {
        "extra_folder": "not part of the landing-zone contract (docs/contract.md)",
        "costs/notes.txt.bak": "no table reader takes this file name (known suffixes, any case, optionally .gz: .csv, .parquet)",
        "traces/dt=2026-13-45": "not a traces/dt=YYYY-MM-DD folder with a valid date",
    }
    assert dt.date(2026, 10, 31) in zone.trace_days() and len(zone.trace_days()) == 3


def test_control_characters_never_reach_the_terminal():
    report = {"as_of": "2026-10-31", "experiments": [], "services": [
        {"service": "evil\x1b[2J\x07svc\nFAKE LINE", "scaling": "elastic", "cost_model": "ml", "model_error_pct": 1.0,
         "drift_detected": False}],
        "trace_completeness": {"overall": 1.0, "broken_edges": []},
        "data_quality": {"quarantined": {}, "unattributed_cost_usd": 0.0}}
    text = render_text(report)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil[2Jsvc FAKE LINE" in text


# ---------------------------------------------------------------- one warehouse, one writer


def test_a_second_writer_is_refused_with_who_holds_the_lock(tmp_path, capsys):
    warehouse = tmp_path / "w.duckdb"
    landing = tmp_path / "landing-a"
    with writer_lock(warehouse, landing):
        code = cli.main(["run", "--landing", str(tmp_path / "landing-b"), "--warehouse", str(warehouse), "--wait", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"cost-attribution: error: {warehouse} is being written by pid {os.getpid()} on "
                              f"{socket.gethostname()}, landing zone {landing}, since ")
    assert not (tmp_path / "w.duckdb.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    lock = tmp_path / "w.duckdb.lock"
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "landing": "x", "started_at": "t"}))
    with writer_lock(warehouse, tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_the_lock_waits_a_bounded_time(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    started = dt.datetime.now()
    with writer_lock(warehouse, tmp_path), pytest.raises(WarehouseBusy):
        with writer_lock(warehouse, tmp_path, wait_seconds=1.0, poll_seconds=0.2):
            pass
    assert 0.9 < (dt.datetime.now() - started).total_seconds() < 5


def test_a_landing_zone_without_valid_day_folders_is_one_line(tmp_path, capsys):
    landing = tmp_path / "landing"
    (landing / "traces" / "dt=yesterday").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no traces/dt=YYYY-MM-DD folders"):
        cli.main(["run", "--landing", str(landing), "--warehouse", str(tmp_path / "w.duckdb")])


# ---------------------------------------------------------------- through the CLI, end to end


def _cli_run(landing: Path, warehouse: Path, capsys) -> tuple[int, str, dict | None]:
    """`cost-attribution run` in-process: (exit code, last stderr line, report.json)."""
    code = cli.main(["run", "--landing", str(landing), "--warehouse", str(warehouse), "--wait", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    report = warehouse.parent / "report.json"
    return code, err[-1] if err else "", json.loads(report.read_text()) if report.exists() else None


def _copy_warehouse(warehouse: Path, tmp_path: Path) -> Path:
    target = tmp_path / "warehouse"
    shutil.copytree(warehouse.parent, target)
    return target / warehouse.name


def _costs_by_cell(report: dict) -> dict:
    return {f"{e['experiment_id']}:{e['cell']}": (e["incremental_cost_usd_30d"], e["ci_low_usd_30d"], e["ci_high_usd_30d"],
                                                  e.get("bill_change_usd_30d")) for e in report["experiments"]}


def _point_estimates(report: dict) -> dict:
    return {key: values[0] for key, values in _costs_by_cell(report).items()}


@pytest.mark.slow
def test_end_to_end_a_duplicated_focus_file_changes_no_number(small_world_run, tmp_path, capsys):
    landing, _, _, base_report, _ = small_world_run
    mutated = _copy(landing, tmp_path)
    shutil.copy(_costs(mutated), mutated / "costs" / "focus_hourly-copy.csv.gz")
    code, _, report = _cli_run(mutated, tmp_path / "wh" / "warehouse.duckdb", capsys)
    assert code == 0
    assert _costs_by_cell(report) == _costs_by_cell(base_report)
    assert report["data_quality"]["unattributed_cost_usd"] == base_report["data_quality"]["unattributed_cost_usd"]
    assert report["data_quality"]["quarantined"]["duplicate_files"] == 1


@pytest.mark.slow
def test_end_to_end_an_empty_day_keeps_the_last_good_report(small_world_run, tmp_path, capsys):
    landing, warehouse, truth, base_report, _ = small_world_run
    mutated = _copy(landing, tmp_path)
    empty_day = dt.date.fromisoformat(truth["last_trace_day"]) + dt.timedelta(days=1)
    (mutated / "traces" / f"dt={empty_day}").mkdir()
    (mutated / "traces" / f"dt={empty_day}" / "part-0000.json").write_text("")
    copy = _copy_warehouse(warehouse, tmp_path)
    code, last_line, report = _cli_run(mutated, copy, capsys)
    assert code == 1
    assert last_line.startswith(f"cost-attribution: run failed: {empty_day}: check trace_completeness:trace_volume "
                                f"failed: {empty_day}: the day has no SERVER spans: the day looks incompletely delivered")
    assert last_line.endswith(f"(report.json stays as of {base_report['as_of']})")
    # The good days were re-run (their intervals are re-simulated, as on any rerun); the empty one published nothing.
    assert report["as_of"] == base_report["as_of"]
    assert _point_estimates(report) == _point_estimates(base_report)
    with duckdb.connect(str(copy), read_only=True) as conn:
        assert conn.execute("SELECT max(as_of) FROM main.reports").fetchall()[0][0].isoformat() == base_report["as_of"]


@pytest.mark.slow
def test_end_to_end_a_missing_catalog_fails_loudly_and_keeps_the_report(small_world_run, tmp_path, capsys):
    landing, warehouse, _, base_report, _ = small_world_run
    mutated = _copy(landing, tmp_path)
    (mutated / "services.yaml").unlink()
    code, last_line, report = _cli_run(mutated, _copy_warehouse(warehouse, tmp_path), capsys)
    assert code == 1
    assert last_line == (f"cost-attribution: run failed: ingest: services failed: MissingInput: {mutated / 'services.yaml'}: "
                         "missing. Fix: add services.yaml to the landing zone (docs/contract.md); if there are none, "
                         f"write `services: []`. (report.json stays as of {base_report['as_of']})")
    assert report == base_report


def _rename_service(landing: Path, old: str, new: str) -> None:
    for path in landing.rglob("*"):
        if path.is_file() and path.name != "truth.json":
            raw = path.read_bytes()
            packed = raw[:2] == b"\x1f\x8b"
            text = (gzip.decompress(raw) if packed else raw).decode()
            if old in text:
                data = text.replace(old, new).encode()
                path.write_bytes(gzip.compress(data) if packed else data)


@pytest.mark.slow
def test_end_to_end_a_service_named_like_markup_and_mathtext(small_world_run, tmp_path, capsys):
    landing, _, _, base_report, _ = small_world_run
    mutated = _copy(landing, tmp_path)
    name = "$HOST_$PORT<img src=x onerror=alert(1)>"
    _rename_service(mutated, "recs-svc", name)
    code, _, report = _cli_run(mutated, tmp_path / "wh" / "warehouse.duckdb", capsys)
    assert code == 0
    assert name in {s["service"] for s in report["services"]}
    page = (tmp_path / "wh" / "report.html").read_text()
    assert "<img src=x" not in page
    assert "$HOST_$PORT&lt;img src=x onerror=alert(1)&gt;" in page
    assert _point_estimates(report) == _point_estimates(base_report)


def test_quarantine_rows_name_file_value_and_fix(base, tmp_path):
    landing, day, _ = base
    mutated = _copy(landing, tmp_path)
    _edit_lines(_costs(mutated), lambda ls: _currency_rows(ls, range(2, 3), "EUR"))
    assert _ingest(mutated, tmp_path / "w.duckdb", [focus_costs], day).success
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as conn:
        [(source_file, detail, raw)] = conn.execute(
            "SELECT source_file, detail, raw FROM raw.input_quarantine WHERE reason = 'non_usd_currency'").fetchall()
    assert source_file == str(_costs(mutated))
    assert "set AnalysisSettings.usd_rates" in detail
    assert json.loads(raw)["raw_currency"] == "EUR"
