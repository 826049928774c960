"""The CLI as an operator meets it: quiet output (progress on stderr, the result on
stdout, Dagster's and dbt's logs in a file), run ids, reports by day and format, the
marts exported for a BI tool, and readable errors for a locked or foreign warehouse."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cost_attribution import cli
from cost_attribution.freshness import DAILY_ASSETS
from cost_attribution.warehouse import replace_rows

CLI = str(Path(sys.executable).parent / "cost-attribution")


def _report(as_of: str, cost: float) -> dict:
    return {
        "as_of": as_of,
        "experiments": [{
            "experiment_id": "smarter-prefetch", "cell": "treatment", "incremental_cost_usd_30d": cost,
            "ci_low_usd_30d": cost / 2, "ci_high_usd_30d": cost * 2,
            "flags": [{"kind": "cost_over_threshold", "detail": "over"}],
            "services": [{"service": "images-svc", "delta_pct": 12.5, "ci_low_pct": 8.0, "ci_high_pct": 17.0,
                          "q_value": 0.001, "significant": True, "cost_model": "ml",
                          "incremental_cost_usd_30d": cost}],
        }],
    }


@pytest.fixture
def warehouse(tmp_path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    import datetime as dt

    with duckdb.connect(str(path)) as conn:
        replace_rows(conn, "main.reports", pl.DataFrame({
            "as_of": [dt.date(2026, 10, 30), dt.date(2026, 10, 31)],
            "report_json": [json.dumps(_report("2026-10-30", 1000.0)), json.dumps(_report("2026-10-31", 2000.0))],
        }))
        replace_rows(conn, "main.experiment_costs", pl.DataFrame({
            "as_of": [dt.date(2026, 10, 31)], "experiment_id": ["smarter-prefetch"], "cell": ["treatment"],
            "incremental_cost_usd_30d": [2000.0]}))
    return path


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_report_as_of_and_formats(warehouse):
    newest = json.loads(_cli("report", "--warehouse", str(warehouse), "--json").stdout)
    assert newest["as_of"] == "2026-10-31"
    older = json.loads(_cli("report", "--warehouse", str(warehouse), "--as-of", "2026-10-30", "--format", "json").stdout)
    assert older["experiments"][0]["incremental_cost_usd_30d"] == 1000.0
    rows = list(csv.DictReader(io.StringIO(_cli("report", "--warehouse", str(warehouse), "--format", "csv").stdout)))
    assert [(r["experiment_id"], r["service"], float(r["service_cost_usd_30d"])) for r in rows] == [
        ("smarter-prefetch", "images-svc", 2000.0)]
    assert rows[0]["flags"] == "cost_over_threshold"
    missing = _cli("report", "--warehouse", str(warehouse), "--as-of", "2026-09-01", check=False)
    assert missing.returncode == 1
    assert "no report as of 2026-09-01: reports exist for 2026-10-30..2026-10-31" in missing.stderr
    bad_day = _cli("report", "--warehouse", str(warehouse), "--as-of", "31/10/2026", check=False)
    assert bad_day.returncode == 2 and "expected a day as YYYY-MM-DD" in bad_day.stderr


def test_export_writes_each_mart(tmp_path, warehouse):
    out = tmp_path / "bi"
    done = _cli("export", str(out), "--warehouse", str(warehouse), "--format", "parquet")
    assert f"{out / 'experiment_costs.parquet'}\t1 rows" in done.stdout
    assert pl.read_parquet(out / "experiment_costs.parquet")["incremental_cost_usd_30d"].to_list() == [2000.0]
    _cli("export", str(out), "--warehouse", str(warehouse), "--format", "csv")
    assert pl.read_csv(out / "experiment_costs.csv")["experiment_id"].to_list() == ["smarter-prefetch"]


def test_a_file_that_is_not_a_warehouse_gets_a_readable_error(tmp_path):
    foreign = tmp_path / "notes.duckdb"
    foreign.write_text("these are my notes, not a warehouse\n" * 200)
    done = _cli("report", "--warehouse", str(foreign), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not a cost_attribution warehouse" in done.stderr and "--warehouse" in done.stderr
    missing = _cli("report", "--warehouse", str(tmp_path / "nowhere.duckdb"), check=False)
    assert "no such warehouse; run `cost-attribution run" in missing.stderr


def test_a_locked_warehouse_names_the_process_holding_it(warehouse):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            conn = duckdb.connect({str(warehouse)!r})
            print("locked", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = _cli("export", str(warehouse.parent / "bi"), "--warehouse", str(warehouse), check=False)
    finally:
        holder.communicate("\n", timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"in use by process {holder.pid}" in done.stderr and "try again" in done.stderr


def test_output_to_log_keeps_the_terminal_for_progress(tmp_path, capfd):
    log = tmp_path / "run.log"
    with cli.output_to_log(log) as terminal:
        os.write(2, b"a dagster debug line\n")  # Dagster's console logger writes to fd 2
        subprocess.run(["echo", "dbt says hello"], check=True)
        cli.Progress(stream=terminal).step("ingest", True, 1.25, "run 1234abcd")
    out, err = capfd.readouterr()
    assert out == "" and err.splitlines() == ["ingest                                       ok        1.2s  run 1234abcd"]
    assert "a dagster debug line" in log.read_text() and "dbt says hello" in log.read_text()


@pytest.mark.slow
def test_run_is_quiet_and_prints_json_summary_with_run_ids(small_world, tmp_path):
    landing, _ = small_world
    warehouse = tmp_path / "w" / "warehouse.duckdb"
    done = subprocess.run([CLI, "run", "--landing", str(landing), "--warehouse", str(warehouse)],
                          capture_output=True, text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout is the result only: `| jq` works
    lines = done.stderr.splitlines()
    assert len(lines) <= 6, done.stderr
    assert "DEBUG" not in done.stderr and "dbt" not in done.stderr.replace("span models", "")
    assert lines[0].startswith("ingest + span models") and "run " + summary["run_ids"][0][:8] in lines[0]
    assert len(summary["run_ids"]) == 2 + len(summary["days"])  # + the freshness evaluation
    # The small world ended on 2026-10-31: stale today, and the freshness line says so.
    assert summary["stale"] == sorted(DAILY_ASSETS)
    assert any(line.startswith("freshness") and "FAILED" in line and "overdue" in line for line in lines)
    assert lines[-1].endswith(f"log: {warehouse.parent / 'cost-attribution.log'}")
    log = (warehouse.parent / "cost-attribution.log").read_text()
    assert "RUN_SUCCESS" in log and "Running with dbt" in log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_ticks_and_draws_a_bar():
    terminal = _Terminal()
    progress = cli.Progress(stream=terminal)
    with progress.running("ingest"):
        import time

        time.sleep(1.3)
    progress.bar("as-of analyses", 1, 2, 3.0)
    progress.bar("as-of analyses", 2, 2, 6.0)
    progress.step("as-of analyses", True, 6.0, "2/2 days")
    text = terminal.getvalue()
    assert "\ringest" in text and "...         1s" in text
    assert "[############............] 1/2" in text and "[########################] 2/2" in text
    assert text.endswith("as-of analyses                               ok        6.0s  2/2 days\n")
    quiet = _Terminal()
    cli.Progress(stream=quiet, quiet=True).bar("x", 1, 2, 1.0)
    assert quiet.getvalue() == ""
