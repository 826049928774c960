"""Benchmark: one day's span-level dbt models on DuckDB vs Spark (local pyspark).

    .venv/bin/python bench/bench_spark.py [--spans 1000000] [--spark-runs 2] [--dir DIR]

1. The simulator writes one trace day of N spans as flat Parquet (the landing-zone
   contract), and the ingest code (readers + catalogs, the same functions the Dagster
   assets call) loads raw.spans / raw.allocations / raw.experiments into DuckDB.
   Timed, but the same for both targets.
2. `dbt build --target duckdb` on a copy of that warehouse.
3. `dbt build --target spark` (DBT_SPARK_MASTER, default local[2]): first the raw
   sources are exported to Parquet, then dbt runs, then the aggregates are copied back
   into DuckDB (spark_target.py: what the Dagster asset does). The first Spark run
   creates the metastore and every table; later runs (--spark-runs) take the
   incremental insert_overwrite path over the same day, the steady state of a daily
   partition.

Wall time is of the whole dbt process (start-up included); "models" is the sum of
dbt's own per-model execution times (run_results.json). Peak memory is the largest
RSS summed over the dbt process tree (for Spark: dbt's Python + the JVM), sampled
every 50 ms. Both engines get the same 2 cores. Prints a markdown table and checks
that usage_by_cell is equal on both targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cost_attribution.attribution import spark_target  # noqa: E402
from cost_attribution.attribution.dbt_assets import DBT_PROJECT_DIR, dbt_executable  # noqa: E402
from cost_attribution.ingest import catalogs  # noqa: E402
from cost_attribution.ingest.readers import read_span_files  # noqa: E402
from cost_attribution.resources import LandingZone  # noqa: E402
from cost_attribution.simulator import WorldConfig, generate_world  # noqa: E402
from cost_attribution.warehouse import replace_rows  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and all its descendants (/proc, no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except OSError:
            pass
        stack += children.get(p, [])
    return total


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, peak tree RSS MiB) of a command; raises if it fails."""
    peak = 0
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log}")
    return wall, peak / 2**20


def model_seconds(target_path: Path) -> float:
    results = json.loads((target_path / "run_results.json").read_text())["results"]
    return sum(r["execution_time"] for r in results if r["unique_id"].startswith("model."))


def ingest(landing: Path, warehouse: Path, day: dt.date) -> int:
    zone = LandingZone(root=str(landing))
    batch = read_span_files(zone.trace_files(day), day)
    with duckdb.connect(str(warehouse)) as conn:
        replace_rows(conn, "raw.spans", batch.spans)
        experiments = catalogs.parse_experiments(zone.catalog_text("experiments.yaml"))
        replace_rows(conn, "raw.experiments", experiments)
        allocations, _ = catalogs.load_allocations(conn, zone.table_files("allocations"), experiments)
        replace_rows(conn, "raw.allocations", allocations)
    return batch.spans.height


def dbt_build(target: str, warehouse: Path, lake: Path, day: dt.date, log: Path) -> tuple[float, float, float]:
    env = {**os.environ, "DBT_TARGET": target, "COST_ATTRIBUTION_WAREHOUSE": str(warehouse),
           "COST_ATTRIBUTION_SPARK_DIR": str(lake)}
    target_path = log.with_suffix("")
    window = {"min_date": day.isoformat(), "max_date": (day + dt.timedelta(days=1)).isoformat()}
    cmd = [dbt_executable(), "build", "--profiles-dir", str(DBT_PROJECT_DIR), "--target", target,
           "--target-path", str(target_path), "--vars", json.dumps(window)]
    wall, peak = run_measured(cmd, env, DBT_PROJECT_DIR, log)
    return wall, peak, model_seconds(target_path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--spark-runs", type=int, default=2, help="Spark builds of the day (2nd+ incremental)")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_spark_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        landing = work / "landing"
        # Clean spans: the benchmark is about the SQL. (With dirty records, the flat-Parquet
        # reader's quarantine path panics inside polars 2.1 on a 1M-span part file.)
        config = WorldConfig(seed=7, trace_days=1, target_spans_per_day=args.spans, span_formats=("parquet",),
                             dirty_records=False)
        t0 = time.perf_counter()
        if not (landing / "traces").exists():
            generate_world(landing, config)
        day = LandingZone(root=str(landing)).trace_days()[-1]
        print(f"world: {time.perf_counter() - t0:.0f}s", file=sys.stderr)

        raw_only = work / "ingested.duckdb"  # not raw.duckdb: the catalog name would shadow schema raw
        raw_only.unlink(missing_ok=True)
        t0 = time.perf_counter()
        n_spans = ingest(landing, raw_only, day)
        ingest_s = time.perf_counter() - t0
        print(f"ingest of {n_spans} spans: {ingest_s:.1f}s", file=sys.stderr)

        duck = work / "duckdb" / "warehouse.duckdb"
        shutil.rmtree(duck.parent, ignore_errors=True)
        duck.parent.mkdir(parents=True)
        shutil.copy(raw_only, duck)
        wall, peak, models = dbt_build("duckdb", duck, work / "unused", day, work / "duckdb" / "dbt.log")
        rows.append(("duckdb", "dbt build (first)", wall, models, peak, None))
        print(f"duckdb: {wall:.1f}s", file=sys.stderr)

        spark_wh = work / "spark" / "warehouse.duckdb"
        lake = work / "spark" / "lake"
        shutil.rmtree(spark_wh.parent, ignore_errors=True)
        spark_wh.parent.mkdir(parents=True)
        shutil.copy(raw_only, spark_wh)
        for run in range(args.spark_runs):
            t0 = time.perf_counter()
            with duckdb.connect(str(spark_wh)) as conn:
                spark_target.export_raw_sources(conn, lake, [day])
            export_s = time.perf_counter() - t0
            wall, peak, models = dbt_build("spark", spark_wh, lake, day, work / "spark" / f"dbt{run}.log")
            t0 = time.perf_counter()
            with duckdb.connect(str(spark_wh)) as conn:
                models_built = sorted(p.name for p in (lake / "warehouse" / "main.db").iterdir())
                spark_target.import_model_tables(conn, lake, spark_target.aggregate_models(models_built),
                                                 day, day + dt.timedelta(days=1))
            import_s = time.perf_counter() - t0
            label = "dbt build (first: metastore + CTAS)" if run == 0 else "dbt build (incremental insert_overwrite)"
            rows.append((f"spark {os.environ.get('DBT_SPARK_MASTER', 'local[2]')}", label, wall, models, peak,
                         f"export {export_s:.1f}s, copy back {import_s:.1f}s"))
            print(f"spark run {run}: {wall:.1f}s", file=sys.stderr)

        with duckdb.connect(str(duck), read_only=True) as a, duckdb.connect(str(spark_wh), read_only=True) as b:
            query = "SELECT dt, experiment_id, cell, service, source, active_members, round(requests, 6) AS requests, " \
                    "CAST(sampled_spans AS BIGINT) AS sampled_spans FROM main.usage_by_cell ORDER BY ALL"
            left = pl.from_arrow(a.sql(query).to_arrow_table())
            right = pl.from_arrow(b.sql(query).to_arrow_table())
        equal = left.height > 0 and left.equals(right)

        print(f"\n### Span models, one day of {n_spans:,} spans ({os.cpu_count()} CPUs)\n")
        print(f"Ingest (Python readers into DuckDB, same for both targets): {ingest_s:.1f} s\n")
        print("| engine | step | wall s | models s (dbt) | peak RSS MiB | notes |")
        print("| --- | --- | ---: | ---: | ---: | --- |")
        for engine, step, wall, models, peak, notes in rows:
            print(f"| {engine} | {step} | {wall:.1f} | {models:.1f} | {peak:.0f} | {notes or ''} |")
        print(f"\nusage_by_cell equal on both targets: {equal} ({left.height} rows)")
        if not equal:
            raise SystemExit("usage_by_cell differs between the targets")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
