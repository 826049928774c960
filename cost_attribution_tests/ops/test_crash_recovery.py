"""kill -9 in the middle of a materialization, then rerun: the warehouse must hold
exactly what a clean run produces - no duplicated spans, no half-written day.

The writes are delete-window + insert inside one DuckDB transaction (warehouse.py) and
the dbt models replace their window's days (delete + insert), so a killed writer leaves either the old
window or the new one, and the rerun replaces it. Killed at two points: inside the dbt
build (span-level SQL) and inside a per-day Python asset.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from cost_attribution_tests.ops.warehouse_snapshot import assert_same_warehouse, warehouse_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CLI = str(Path(sys.executable).parent / "cost-attribution")
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "COST_ATTRIBUTION_"))}
    return env


def _run(landing: Path, warehouse: Path) -> None:
    subprocess.run([CLI, "run", "--landing", str(landing), "--warehouse", str(warehouse)], cwd=REPO, env=_env(),
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cost_attribution.simulator import generate_world, small_world_config

    base = tmp_path_factory.mktemp("crash")
    landing = base / "landing"
    generate_world(landing, dataclasses.replace(small_world_config(seed=5), trace_days=2, pre_period_days=0,
                                                n_members=300, target_spans_per_day=1500))
    clean = base / "clean" / "warehouse.duckdb"
    _run(landing, clean)
    return landing, warehouse_snapshot(clean)


def _kill_during(landing: Path, warehouse: Path, marker: str, delay: float) -> str:
    """Start a run (--verbose: Dagster's log on stderr), SIGKILL its whole process group `delay` seconds
    after `marker` appears in its log."""
    proc = subprocess.Popen([CLI, "run", "--landing", str(landing), "--warehouse", str(warehouse), "--verbose"], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = threading.Event()

    def watch():
        for line in proc.stderr:
            if marker in line:
                seen.set()
        proc.stderr.close()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert seen.wait(600), f"the run never reached {marker!r} (exit {proc.poll()})"
        time.sleep(delay)
        assert proc.poll() is None, "the run finished before it could be killed: nothing was tested"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return marker


@pytest.mark.parametrize(
    "marker,delay",
    [
        ('Started execution of step "span_models"', 4.0),  # inside dbt's incremental delete + insert
        ('Started execution of step "usage_deltas"', 0.5),  # inside a per-day replace_rows
    ],
    ids=["in_dbt_build", "in_python_asset"],
)
def test_kill9_then_rerun_equals_clean_run(world, tmp_path, marker, delay):
    landing, clean = world
    warehouse = tmp_path / "warehouse.duckdb"
    _kill_during(landing, warehouse, marker, delay)
    # The killed file opens (WAL replayed or discarded) and holds no duplicated span.
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables").fetchall()}
        if "raw.spans" in tables:
            dup = conn.execute("SELECT count(*) - count(DISTINCT (dt, trace_id, span_id, service, kind)) FROM raw.spans").fetchone()[0]
            assert dup == 0
    _run(landing, warehouse)
    assert_same_warehouse(warehouse_snapshot(warehouse), clean)
