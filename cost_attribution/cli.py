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
from cost_attribution.reporting.text import safe_text
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


def _failure_reasons(result, label: str) -> list[str]:
    """What stopped a run, one line each: failed steps (with their error) and failed
    blocking checks (with their description), never a traceback."""
    import dagster as dg

    reasons = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.event_specific_data.error
            while error.cause is not None and "Error occurred while executing" in error.message:
                error = error.cause  # the user-code error inside Dagster's wrapper
            message = error.message.strip()
            qualified = message.split(":", 1)[0]
            if "." in qualified and " " not in qualified:  # "package.module.SomeError: text" -> "SomeError: text"
                message = qualified.rsplit(".", 1)[1] + message[len(qualified):]
            lines = [line.strip() for line in message.splitlines()]
            reasons.append(f"{label}: {event.step_key} failed: {' / '.join(lines[:12])}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.blocking and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                reasons.append(f"{label}: check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} "
                               f"failed: {evaluation.description}")
    return reasons or [f"{label}: the run failed (see the Dagster logs)"]


def run_pipeline(landing: Path, warehouse: Path, quiet: bool = False, latest_only: bool = False,
                 lock_wait_seconds: float = 10.0) -> dict:
    """Materialize everything for every trace day in the landing zone (with latest_only,
    the as-of analyses only for the last day: what a benchmark needs). Returns a summary.
    Holds the warehouse's writer lock throughout (a second run waits, then refuses)."""
    from cost_attribution.warehouse import writer_lock

    landing, warehouse = landing.resolve(), warehouse.resolve()
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(warehouse, landing, lock_wait_seconds):
        summary = _run_locked(landing, warehouse, quiet, latest_only)
    report = warehouse.parent / "report.json"
    summary["report_as_of"] = json.loads(report.read_text()).get("as_of") if report.exists() else None
    return summary


def _run_locked(landing: Path, warehouse: Path, quiet: bool, latest_only: bool) -> dict:
    import dagster as dg

    days = _configure_environment(landing, warehouse)
    unread = [{"path": str(u.path), "why": u.why} for u in LandingZone(root=str(landing)).unread_files()]
    if unread and not quiet:
        for item in unread:
            print(safe_text(f"  warning: not read: {item['path']}: {item['why']}"), file=sys.stderr)

    from cost_attribution.definitions import defs

    job = defs.resolve_job_def("daily_cost_attribution")
    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    # Span-level work (ingest + dbt) runs once over the whole range: single-run backfill.
    # The as-of analyses run day by day, so a day failing its coverage gate blocks only itself.
    bulk = [k for k in keys if not graph.get(k).is_partitioned or graph.get(k).backfill_policy == dg.BackfillPolicy.single_run()]
    daily = [k for k in keys if k not in bulk]
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    summary = {"days": [], "failed": [], "reasons": [], "unread_files": unread}
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
            summary["reasons"] += _failure_reasons(result, "ingest")
            return summary
        for day in days[-1:] if latest_only else days:
            t0 = time.perf_counter()
            result = job.execute_in_process(
                partition_key=day.isoformat(), asset_selection=daily, instance=instance, raise_on_error=False
            )
            summary["days"].append({"day": day.isoformat(), "success": result.success, "seconds": round(time.perf_counter() - t0, 1)})
            if not result.success:
                summary["failed"].append(day.isoformat())
                summary["reasons"] += _failure_reasons(result, day.isoformat())
            if not quiet:
                state = "ok" if result.success else "FAILED: " + "; ".join(_failure_reasons(result, "day"))
                print(safe_text(f"  as of {day}: {state} in {time.perf_counter() - t0:.1f}s"), file=sys.stderr)
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
    summary = run_pipeline(Path(args.landing), Path(args.warehouse), lock_wait_seconds=args.wait)
    print(json.dumps(summary, indent=2))
    if summary["failed"]:
        kept = f" (report.json stays as of {summary['report_as_of']})" if summary.get("report_as_of") else ""
        _say(f"run failed: {summary['reasons'][0]}{kept}")
        return 1
    return 0


def _say(message: str) -> None:
    """The one line a user reads last: control characters stripped, no traceback."""
    print(safe_text(f"cost-attribution: {message}".replace("\n", " ")), file=sys.stderr)


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
    run.add_argument("--wait", type=float, default=10.0,
                     help="seconds to wait for another run holding the warehouse (default 10), then refuse")
    run.set_defaults(func=_cmd_run)
    report = sub.add_parser("report", help="print the newest report")
    report.add_argument("--warehouse", required=True)
    report.add_argument("--json", action="store_true", help="the contract's JSON instead of the readable summary")
    report.set_defaults(func=_cmd_report)
    args = parser.parse_args(argv)
    import duckdb

    try:
        return args.func(args)
    except BrokenPipeError:  # `report | head` closed the pipe: not an error of ours
        sys.stderr.close()
        return 0
    except (ValueError, OSError, RuntimeError, duckdb.Error) as error:  # bad input, busy warehouse or file, disk
        _say(f"error: {error}")
        return 2
    except Exception as error:  # a bug of ours: the traceback for the report, the reason last
        import traceback

        traceback.print_exc()
        _say(f"unexpected error ({type(error).__name__}): {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
