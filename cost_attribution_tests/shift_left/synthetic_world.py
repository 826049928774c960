"""A small synthetic world in a DuckDB warehouse, run through the real dbt models.

Experiment `search-rank`: every treatment request of search-svc calls profile-svc (an
edge control never uses) and search-svc's SERVER spans take 30% longer in treatment.
Experiment `aa`: nothing differs. Spans are sampled at p = 0.5 (adjusted count 2).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from cost_attribution.attribution.dbt_assets import DBT_PROJECT_DIR, dbt_executable

DAY = dt.date(2026, 3, 2)
START_NS = int(dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp() * 1e9)
MEMBERS = 240
SEARCHES_PER_MEMBER = 6
SLOWDOWN = 1.30


def _world(seed: int = 11) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    members = [f"m{i:04d}" for i in range(MEMBERS)]
    search_cell = {m: ("treatment" if i % 2 else "control") for i, m in enumerate(members)}
    aa_cell = {m: ("treatment" if (i // 2) % 2 else "control") for i, m in enumerate(members)}
    allocated_at = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    allocations = pl.DataFrame(
        [
            {"experiment_id": exp, "member_id": m, "cell": cells[m], "allocated_at": allocated_at,
             "allocated_at_unix_nano": int(allocated_at.timestamp() * 1e9), "allocated_date": allocated_at.date()}
            for exp, cells in (("search-rank", search_cell), ("aa", aa_cell))
            for m in members
        ]
    )
    experiments = pl.DataFrame(
        {"experiment_id": ["search-rank", "aa"], "name": ["Search ranking", "A/A"], "control_cell": ["control"] * 2,
         "cells": ["control,treatment"] * 2, "start_date": [DAY, DAY], "owner": ["search"] * 2}
    )
    services = pl.DataFrame(
        {"service": ["api-gateway", "search-svc", "profile-svc"], "owner": ["a", "b", "c"],
         "deprecated": [False, False, True], "tier": [1, 2, 2]}
    )
    rows = []
    span = 0

    def add(trace, parent, service, kind, start, duration, peer=None, member=None):
        nonlocal span
        span += 1
        rows.append({"dt": DAY, "trace_id": trace, "span_id": f"s{span}", "parent_span_id": parent, "service": service,
                     "kind": kind, "name": "op", "start_unix_nano": start, "end_unix_nano": start + duration,
                     "peer_service": peer, "member_id": member, "sampling_probability": 0.5})
        return f"s{span}"

    for i, m in enumerate(members):
        member_speed = rng.lognormal(0.0, 0.2)  # members differ: latency is clustered by member
        for k in range(SEARCHES_PER_MEMBER):
            trace = f"t{i}-{k}"
            start = START_NS + int(rng.integers(0, 80_000)) * 1_000_000_000
            root = add(trace, None, "api-gateway", "SERVER", start, 40_000_000, member=m)
            call = add(trace, root, "api-gateway", "CLIENT", start + 1_000, 30_000_000, peer="search-svc")
            slow = SLOWDOWN if search_cell[m] == "treatment" else 1.0
            duration = int(20_000_000 * member_speed * slow * rng.lognormal(0.0, 0.1))
            server = add(trace, call, "search-svc", "SERVER", start + 2_000, duration)
            if search_cell[m] == "treatment":
                out = add(trace, server, "search-svc", "CLIENT", start + 3_000, 5_000_000, peer="profile-svc")
                add(trace, out, "profile-svc", "SERVER", start + 4_000, 4_000_000)
    spans = pl.DataFrame(rows)
    return spans, allocations, experiments, services


def run_dbt(warehouse: Path, work: Path, select: str, **dbt_vars) -> None:
    """`dbt build --select select` over the day 2026-03-02 (and `dbt_vars`, e.g. busy_time=True)."""
    env = {**os.environ, "COST_ATTRIBUTION_WAREHOUSE": str(warehouse), "DBT_TARGET": "duckdb"}
    build_vars = {"min_date": "2026-03-02", "max_date": "2026-03-03", **dbt_vars}
    result = subprocess.run(
        [dbt_executable(), "build", "--select", select, "--project-dir", str(DBT_PROJECT_DIR),
         "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(work / "target"),
         "--log-path", str(work / "logs"), "--vars", json.dumps(build_vars)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def build_warehouse(work: Path) -> Path:
    warehouse = work / "w.duckdb"
    spans, allocations, experiments, services = _world()
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("CREATE SCHEMA raw")
        for name, frame in (("spans", spans), ("allocations", allocations), ("experiments", experiments),
                            ("services", services)):
            conn.register("_f", frame.to_arrow())
            conn.execute(f'CREATE TABLE raw."{name}" AS SELECT * FROM _f')
            conn.unregister("_f")
    run_dbt(warehouse, work, "+edge_usage_by_cell +member_service_latency")
    return warehouse
