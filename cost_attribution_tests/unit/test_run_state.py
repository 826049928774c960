"""What a run redoes (run_state.plan): new or changed trace days, stale allocations, code
changes and unfinished analyses, each from its first day through the last."""

from __future__ import annotations

import datetime as dt
import os

import duckdb

from cost_attribution import run_state
from cost_attribution.run_state import Inputs, Recorded

DAYS = [dt.date(2026, 10, d) for d in (28, 29, 30, 31)]


def _inputs(days=DAYS, code="c1", tables="t1", changed=()) -> Inputs:
    return Inputs(code=code, tables=tables, days={d: ("x" if d in changed else f"f{d.day}") for d in days})


def _recorded(days=DAYS, as_of=DAYS, exposure=None) -> Recorded:
    return Recorded(code="c1", tables="t1", days={d: f"f{d.day}" for d in days},
                    exposure=exposure if exposure is not None else {dt.date(2026, 10, 20): "e"}, as_of=frozenset(as_of))


def test_a_new_warehouse_a_code_change_or_rebuild_redoes_everything():
    for plan in (run_state.plan(DAYS, _inputs(), None),
                 run_state.plan(DAYS, _inputs(code="c2"), _recorded()),
                 run_state.plan(DAYS, _inputs(), _recorded(), rebuild=True)):
        assert plan.whole and plan.span_days == DAYS and plan.as_of_days == DAYS and not plan.tables_first


def test_nothing_changed_is_up_to_date():
    plan = run_state.plan(DAYS, _inputs(), _recorded())
    assert plan.up_to_date and not plan.whole


def test_a_new_day_is_the_only_day_redone():
    plan = run_state.plan(DAYS, _inputs(), _recorded(days=DAYS[:3], as_of=DAYS[:3]))
    assert plan.span_days == plan.as_of_days == DAYS[3:] and not plan.tables_first
    assert "2026-10-31" in plan.why


def test_a_changed_earlier_day_is_redone_with_every_day_after_it():
    plan = run_state.plan(DAYS, _inputs(changed={DAYS[1]}), _recorded())
    assert plan.span_days == plan.as_of_days == DAYS[1:]


def test_unfinished_analyses_are_redone_from_their_day_without_the_span_work():
    plan = run_state.plan(DAYS, _inputs(), _recorded(as_of=[DAYS[0], DAYS[1]]))
    assert plan.span_days == [] and plan.as_of_days == DAYS[2:]
    assert "did not finish" in plan.why


def test_other_inputs_changed_ingest_them_first_then_redo_the_last_days_report():
    recorded = _recorded()
    first = run_state.plan(DAYS, _inputs(tables="t2"), recorded)
    assert first.tables_first and first.span_days == []
    same = run_state.after_tables(first, DAYS, recorded, dict(recorded.exposure))
    assert same.span_days == [] and same.as_of_days == DAYS[-1:] and not same.tables_first


def test_allocations_changed_on_a_built_day_redo_from_that_day():
    recorded = _recorded()
    first = run_state.plan(DAYS, _inputs(tables="t2"), recorded)
    late = run_state.after_tables(first, DAYS, recorded, {**recorded.exposure, DAYS[1]: "new"})
    assert late.span_days == late.as_of_days == DAYS[1:] and "allocations of 2026-10-29" in late.why
    # Before the first trace day: every day; after the last built day: no built day is stale.
    early = run_state.after_tables(first, DAYS, recorded, {dt.date(2026, 10, 20): "other"})
    assert early.span_days == DAYS
    ahead = run_state.after_tables(first, DAYS, recorded, {**recorded.exposure, dt.date(2026, 11, 1): "new"})
    assert ahead.span_days == [] and ahead.as_of_days == DAYS[-1:]


def test_files_fingerprint_sees_a_rewrite_an_added_and_a_removed_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("1")
    before = run_state.files_fingerprint(tmp_path, [a])
    assert run_state.files_fingerprint(tmp_path, [a]) == before
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000))  # the same bytes delivered again
    again = run_state.files_fingerprint(tmp_path, [a])
    assert again != before
    b.write_text("2")
    assert run_state.files_fingerprint(tmp_path, [a, b]) not in (before, again)


def test_the_record_round_trips_and_forgets_analyses_that_failed(tmp_path):
    inputs = _inputs()
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        assert run_state.read(conn) is None
        conn.execute("CREATE SCHEMA raw")
        conn.execute("CREATE TABLE raw.experiments AS SELECT 'e1' AS experiment_id")
        conn.execute("CREATE TABLE raw.allocations AS SELECT 'e1' AS experiment_id, 'm1' AS member_id, 'b' AS cell, "
                     "0::BIGINT AS allocated_at_unix_nano, DATE '2026-10-29' AS allocated_date")
        run_state.record_span_work(conn, inputs)
        run_state.record_as_of(conn, DAYS, DAYS[:3])
        run_state.record_as_of(conn, DAYS[2:], DAYS[3:])  # a later run: the 30th failed this time
        recorded = run_state.read(conn)
        exposure = recorded.exposure
        conn.execute("INSERT INTO raw.allocations SELECT * FROM raw.allocations")  # a duplicated delivery
        assert run_state.exposure_digests(conn) != exposure
    assert recorded.code == "c1" and recorded.tables == "t1" and recorded.days == inputs.days
    assert recorded.as_of == {DAYS[0], DAYS[1], DAYS[3]}
    assert list(exposure) == [dt.date(2026, 10, 29)]
