"""`cost-attribution`: demo | run | report.

`run` materializes every partition the landing zone holds, in-process, through the
same Dagster job the daily schedule launches; `report` reads the newest report out
of the warehouse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cost_attribution.partitions import PARTITION_START_ENV
from cost_attribution.resources import LANDING_ENV, WAREHOUSE_ENV, LandingZone


def _configure_environment(landing: Path, warehouse: Path) -> list:
    """Point the resources at these paths and start the partitions at the first trace
    day. Must run before `cost_attribution.definitions` is imported."""
    days = LandingZone(root=str(landing)).trace_days()
    if not days:
        raise SystemExit(f"{landing}: no traces/dt=YYYY-MM-DD folders: nothing to attribute")
    os.environ[LANDING_ENV] = str(landing)
    os.environ[WAREHOUSE_ENV] = str(warehouse)
    if "cost_attribution.definitions" in sys.modules:
        # Already loaded (a test, a notebook): the partitions are fixed; they must cover the days.
        from cost_attribution.partitions import daily_partitions

        first = daily_partitions.start.date()
        if days[0] < first:
            raise SystemExit(f"trace day {days[0]} precedes the partitions' start {first}: set {PARTITION_START_ENV}")
        return days
    configured = os.environ.get(PARTITION_START_ENV)
    if not configured or configured > days[0].isoformat():
        os.environ[PARTITION_START_ENV] = days[0].isoformat()
    return days


def run_pipeline(landing: Path, warehouse: Path, quiet: bool = False, latest_only: bool = False) -> dict:
    """Materialize everything for every trace day in the landing zone (with latest_only,
    the as-of analyses only for the last day: what a benchmark needs). Returns a summary."""
    import dagster as dg

    landing, warehouse = landing.resolve(), warehouse.resolve()
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    days = _configure_environment(landing, warehouse)

    from cost_attribution.definitions import defs

    job = defs.resolve_job_def("daily_cost_attribution")
    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    # Span-level work (ingest + dbt) runs once over the whole range: single-run backfill.
    # The as-of analyses run day by day, so a day failing its coverage gate blocks only itself.
    bulk = [k for k in keys if not graph.get(k).is_partitioned or graph.get(k).backfill_policy == dg.BackfillPolicy.single_run()]
    daily = [k for k in keys if k not in bulk]
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    summary = {"days": [], "failed": []}
    started = time.perf_counter()
    with instance:
        t0 = time.perf_counter()
        result = job.execute_in_process(
            asset_selection=bulk,
            instance=instance,
            raise_on_error=False,
            tags={
                "dagster/asset_partition_range_start": days[0].isoformat(),
                "dagster/asset_partition_range_end": days[-1].isoformat(),
            },
        )
        summary["ingest_seconds"] = round(time.perf_counter() - t0, 1)
        if not quiet:
            print(f"  ingest + span models {days[0]}..{days[-1]}: {'ok' if result.success else 'FAILED'} "
                  f"in {summary['ingest_seconds']}s", file=sys.stderr)
        if not result.success:
            summary["failed"].append("ingest")
            return summary
        for day in days[-1:] if latest_only else days:
            t0 = time.perf_counter()
            result = job.execute_in_process(
                partition_key=day.isoformat(), asset_selection=daily, instance=instance, raise_on_error=False
            )
            summary["days"].append({"day": day.isoformat(), "success": result.success, "seconds": round(time.perf_counter() - t0, 1)})
            if not result.success:
                summary["failed"].append(day.isoformat())
            if not quiet:
                state = "ok" if result.success else "FAILED (see the run's logs; a failed coverage gate skips projections)"
                print(f"  as of {day}: {state} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["report_path"] = str(warehouse.parent / "report.json")
    return summary


def load_report(warehouse: Path) -> dict | None:
    import duckdb

    from cost_attribution.reporting.report import latest_report

    if not warehouse.exists():
        raise SystemExit(f"{warehouse}: no such warehouse; run `cost-attribution run` first")
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return latest_report(conn)


def _cmd_run(args) -> int:
    summary = run_pipeline(Path(args.landing), Path(args.warehouse))
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0


def _cmd_report(args) -> int:
    from cost_attribution.reporting.text import render_text

    report = load_report(Path(args.warehouse))
    if report is None:
        print("no report in the warehouse yet", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def _cmd_demo(args) -> int:
    from cost_attribution.reporting.text import render_text
    from cost_attribution.simulator import generate_world, live_world_config

    root = Path(args.dir).resolve()
    landing, warehouse = root / "landing", root / "warehouse.duckdb"
    print(f"generating the demo world (seed {args.seed}) in {landing} ...", file=sys.stderr)
    # Production as it really is: experiments already running on uneven ramps, three
    # cells, heavier requests, a savings test, pre-period traces (simulator.world).
    truth = generate_world(landing, live_world_config(args.seed))
    print("materializing every partition through Dagster ...", file=sys.stderr)
    summary = run_pipeline(landing, warehouse)
    report = load_report(warehouse)
    if report is None:
        print("the pipeline produced no report", file=sys.stderr)
        return 1
    print(render_text(report, truth=truth))
    print(f"\nreport: {summary['report_path']}")
    html_report = Path(summary["report_path"]).with_name("report.html")
    if html_report.exists():
        print(f"html report: {html_report}")
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cost-attribution", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate the embedded demo world, run everything, print the report")
    demo.add_argument("--dir", default="demo", help="where the demo landing zone and warehouse go (default ./demo)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_cmd_demo)
    run = sub.add_parser("run", help="materialize every partition found in a landing zone")
    run.add_argument("--landing", required=True)
    run.add_argument("--warehouse", required=True)
    run.set_defaults(func=_cmd_run)
    report = sub.add_parser("report", help="print the newest report")
    report.add_argument("--warehouse", required=True)
    report.add_argument("--json", action="store_true", help="the contract's JSON instead of the readable summary")
    report.set_defaults(func=_cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `report | head` closed the pipe: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
