"""`cost-attribution`: demo | run | report | export.

`run` materializes what the landing zone holds and the warehouse does not yet (every
partition the first time, then the new or changed days: run_state.py), in-process,
through the same Dagster job the daily schedule launches; `report` reads a report out of the
warehouse; `export` writes the marts for a BI tool.

Output: the result on stdout, one progress line per step on stderr, and everything
Dagster and dbt say in a log file beside the warehouse (`--verbose` shows it instead).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import io
import json
import os
import sys
import time
from pathlib import Path

from cost_attribution.reporting.files import report_html_paths, report_json_path
from cost_attribution.reporting.text import safe_text
from cost_attribution import environment
from cost_attribution.resources import LandingZone

LOG_FILE = "cost-attribution.log"
# The marts a BI tool reads: file name -> warehouse table.
EXPORT_TABLES = {
    "experiment_costs": "experiment_costs",
    "service_deltas": "usage_deltas",
    "service_costs": "cost_projections",
    "cost_models": "cost_model_registry",
    "completeness": "service_coverage",
    "capacity_plan": "capacity_plan",
    "latency_impact": "latency_impact",
}


class Progress:
    """One line per step on the terminal's stderr; a redrawn bar for long steps when that
    is a terminal. Silent when quiet."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def step(self, label: str, ok: bool, seconds: float, detail: str = "") -> None:
        mark = "ok" if ok else "FAILED"
        self.line(f"{label:<44} {mark:<6} {seconds:6.1f}s  {detail}".rstrip())

    @contextlib.contextmanager
    def running(self, label: str):
        """On a terminal, a ticking elapsed time while one long step runs; cleared after."""
        if self.quiet or not self.stream.isatty():
            yield
            return
        import threading

        stop, started = threading.Event(), time.perf_counter()

        def tick():
            while not stop.wait(1.0):
                print(f"\r{label:<44} ...    {time.perf_counter() - started:6.0f}s", end="", file=self.stream, flush=True)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            print("\r\033[2K", end="", file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int, seconds: float) -> None:
        if self.quiet or not self.stream.isatty():
            return
        filled = int(24 * done / max(total, 1))
        end = "\n" if done == total else ""
        print(f"\r{label:<44} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total} {seconds:5.0f}s",
              end=end, file=self.stream, flush=True)
        if done == total:  # the step line that follows replaces the bar
            print("\033[1A\r\033[2K", end="", file=self.stream, flush=True)


@contextlib.contextmanager
def output_to_log(log_path: Path, enabled: bool = True):
    """Sends everything written to file descriptors 1 and 2 (Dagster's console logger, dbt's
    subprocess, warnings) to log_path; yields a stream on the real stderr for progress."""
    if not enabled:
        yield sys.stderr
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with open(log_path, "a", buffering=1) as log:
        print(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}", file=log, flush=True)
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


def warehouse_error(path: Path, error: Exception) -> str:
    """The operator's reading of a DuckDB open error, with the fix."""
    text = str(error)
    if "lock" in text.lower():
        holder = text.split("(PID", 1)[1].split(")", 1)[0].strip() if "(PID" in text else None
        who = f"process {holder}" if holder else "another process"
        return (f"{path}: the warehouse is in use by {who} (a run or the Dagster daemon writing to it). "
                "Wait for it to finish, or stop it, and try again.")
    if "not a valid DuckDB database" in text or "Invalid Input Error" in text or "not a DuckDB" in text.lower():
        return (f"{path}: not a cost_attribution warehouse (DuckDB could not read it: {text.splitlines()[0]}). "
                "Point --warehouse at the file `cost-attribution run` wrote (e.g. demo/warehouse.duckdb).")
    return f"{path}: cannot open the warehouse: {type(error).__name__}: {text.splitlines()[0] if text else ''}"


@contextlib.contextmanager
def open_warehouse(path: Path, read_only: bool = True):
    import duckdb

    if not path.exists():
        raise SystemExit(f"{path}: no such warehouse; run `cost-attribution run --landing ... --warehouse {path}` first")
    try:
        conn = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as error:
        raise SystemExit(warehouse_error(path, error)) from None
    try:
        yield conn
    finally:
        conn.close()


def _trace_days(landing: Path) -> list:
    """The landing zone's trace days; none is an error with the fix."""
    days = LandingZone(root=str(landing)).trace_days()
    if not days:
        raise SystemExit(f"{landing}: no traces/dt=YYYY-MM-DD folders: nothing to attribute")
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


def _check_warehouse_writable(warehouse: Path) -> None:
    """Fail before any run starts, with the fix, when the warehouse cannot be opened for writing."""
    import duckdb

    try:
        duckdb.connect(str(warehouse)).close()
    except duckdb.Error as error:
        raise SystemExit(warehouse_error(warehouse, error)) from None


@dataclasses.dataclass(frozen=True)
class JobParts:
    """The daily job's parts, each with the job's own checks on its assets (not the
    freshness checks, which the job leaves to their sensor)."""

    inputs: object  # the unpartitioned ingest: allocations, costs, metrics, catalogs
    span_level: object  # the partitioned assets built in one run over a range: raw spans, dbt models
    bulk: object  # both, in one run
    daily: object  # the as-of analyses, run day by day
    span_level_keys: frozenset  # the asset keys of span_level


def _split_job(job) -> JobParts:
    import dagster as dg

    graph = job.asset_layer.asset_graph
    keys = [k for k in graph.get_all_asset_keys() if graph.get(k).is_executable]
    inputs = {k for k in keys if not graph.get(k).is_partitioned}
    span_level = {k for k in keys if graph.get(k).is_partitioned
                  and graph.get(k).backfill_policy == dg.BackfillPolicy.single_run()}
    daily = set(keys) - inputs - span_level

    def subset(assets: set):
        return job.get_subset(asset_selection=assets,
                              asset_check_selection={c for c in graph.asset_check_keys if c.asset_key in assets})

    return JobParts(inputs=subset(inputs), span_level=subset(span_level), bulk=subset(inputs | span_level),
                    daily=subset(daily), span_level_keys=frozenset(span_level))


def ui_link(run_id: str) -> str:
    return f"{environment.dagster_url().rstrip('/')}/runs/{run_id}"


def _execute(days: list, paths: tuple[Path, Path], instance, progress: Progress, summary: dict,
             latest_only: bool = False, analyses_only: bool = False, rebuild: bool = False) -> None:
    """What changed since the last run (run_state.py), and only that: the span-level work
    (ingest + dbt) once over its range as a single-run backfill, then the as-of analyses
    day by day (with latest_only for the last day only: what a benchmark needs), so a day
    failing its coverage gate blocks only itself. A new warehouse gets every day."""
    from cost_attribution.definitions import build_defs

    landing, warehouse = paths  # the partitions start at the first trace day
    defs = build_defs(start_date=days[0], landing=landing, warehouse=warehouse)
    parts = _split_job(defs.resolve_job_def("daily_cost_attribution"))
    if analyses_only:
        _execute_as_of(days, parts.daily, instance, progress, summary, latest_only)
    else:
        _execute_changes(days, paths, parts, instance, progress, summary, latest_only, rebuild)
    _report_held_partitions(instance, warehouse, parts.span_level_keys)
    _evaluate_freshness(defs, instance, progress, summary)


def _report_held_partitions(instance, warehouse: Path, span_level_keys: frozenset) -> None:
    """The daily partitions the warehouse holds from earlier runs (run_state's record: the
    trace days for span-level assets, the days whose analyses finished for the others),
    recorded as runless materializations where the instance has none: on the CLI's
    ephemeral instance a run that redoes one day, or nothing, would otherwise leave the
    freshness checks judging this run alone ("never materialized"), not the warehouse."""
    import dagster as dg
    import duckdb

    from cost_attribution import run_state
    from cost_attribution.freshness import DAILY_ASSETS

    with duckdb.connect(str(warehouse), read_only=True) as conn:
        recorded = run_state.read(conn)
    if recorded is None:
        return
    for asset in DAILY_ASSETS:
        key = dg.AssetKey(asset)
        held = recorded.days.keys() if key in span_level_keys else recorded.as_of
        for day in sorted({d.isoformat() for d in held} - instance.get_materialized_partitions(key)):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=key, partition=day,
                description="held by the warehouse: built by an earlier cost-attribution run (main.run_inputs)"))


def _execute_changes(days: list, paths: tuple[Path, Path], parts: JobParts, instance, progress: Progress,
                     summary: dict, latest_only: bool, rebuild: bool) -> None:
    import duckdb

    from cost_attribution import run_state

    landing, warehouse = paths
    inputs = run_state.Inputs.of(LandingZone(root=str(landing)))
    with duckdb.connect(str(warehouse)) as conn:
        recorded = run_state.read(conn)
    plan = run_state.plan(days, inputs, recorded, rebuild)
    if plan.tables_first:
        if not _execute_span_level(None, parts.inputs, instance, progress, summary):
            return
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            plan = run_state.after_tables(plan, days, recorded, run_state.exposure_digests(conn))
    summary["plan"] = {"span_days": [d.isoformat() for d in plan.span_days],
                       "as_of_days": [d.isoformat() for d in plan.as_of_days], "why": plan.why}
    if plan.up_to_date:
        progress.line(f"  up to date: the warehouse holds all {len(days)} trace days as they are now "
                      "(`run --rebuild` redoes them)")
    elif not plan.whole:
        progress.line(safe_text(f"  redoing {_days_text(plan.span_days) or 'no trace day'}, analyses "
                                f"{_days_text(plan.as_of_days) or 'none'}: {plan.why}"))
    if plan.span_days:
        job = parts.bulk if plan.whole else parts.span_level
        if not _execute_span_level(plan.span_days, job, instance, progress, summary):
            return
    if plan.span_days or plan.tables_first:
        with duckdb.connect(str(warehouse)) as conn:
            run_state.record_span_work(conn, inputs)
    if plan.as_of_days:
        done = _execute_as_of(plan.as_of_days, parts.daily, instance, progress, summary, latest_only)
        with duckdb.connect(str(warehouse)) as conn:
            run_state.record_as_of(conn, plan.as_of_days, done)


def _days_text(days: list) -> str:
    return "" if not days else f"{days[0]}" if len(days) == 1 else f"{days[0]}..{days[-1]} ({len(days)} days)"


def _execute_span_level(days: list | None, job, instance, progress: Progress, summary: dict) -> bool:
    """One run of `job`: over the range of `days`, or (None) the unpartitioned inputs alone."""
    t0 = time.perf_counter()
    label = f"ingest + span models {days[0]}..{days[-1]}" if days else "ingest: allocations, costs, metrics, catalogs"
    tags = ({"dagster/asset_partition_range_start": days[0].isoformat(),
             "dagster/asset_partition_range_end": days[-1].isoformat()} if days else {})
    with progress.running(label):
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)
    seconds = round(time.perf_counter() - t0, 1)
    summary["ingest_seconds"] = round(summary.get("ingest_seconds", 0.0) + seconds, 1)
    summary["run_ids"].append(result.run_id)
    progress.step(label, result.success, seconds, f"run {result.run_id[:8]}")
    if not result.success:
        summary["failed"].append("ingest")
        summary["reasons"] += _failure_reasons(result, "ingest")
    return result.success


def _execute_as_of(days: list, daily, instance, progress: Progress, summary: dict, latest_only: bool) -> list:
    """The as-of analyses day by day; returns the days that succeeded."""
    t_days, as_of_days = time.perf_counter(), days[-1:] if latest_only else days
    for i, day in enumerate(as_of_days, start=1):
        t0 = time.perf_counter()
        result = daily.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)
        summary["run_ids"].append(result.run_id)
        summary["days"].append({"day": day.isoformat(), "success": result.success,
                                "seconds": round(time.perf_counter() - t0, 1), "run_id": result.run_id})
        if not result.success:
            summary["failed"].append(day.isoformat())
            reasons = _failure_reasons(result, day.isoformat())
            summary["reasons"] += reasons
            progress.line(safe_text(f"  as of {day}: FAILED: {'; '.join(reasons)} (run {result.run_id[:8]})"))
        progress.bar("as-of analyses (deltas, models, report)", i, len(as_of_days), time.perf_counter() - t_days)
    ok_days = sum(d["success"] for d in summary["days"])
    progress.step(f"as-of analyses {as_of_days[0]}..{as_of_days[-1]}", ok_days == len(as_of_days),
                  time.perf_counter() - t_days, f"{ok_days}/{len(as_of_days)} days")
    return [dt.date.fromisoformat(d["day"]) for d in summary["days"] if d["success"]]


def _evaluate_freshness(defs, instance, progress: Progress, summary: dict) -> None:
    """The freshness checks, evaluated now as their sensor would: green when yesterday's
    partition is there by the deadline, red (and listed) when the data is stale."""
    import dagster as dg

    from cost_attribution.freshness import DAILY_ASSETS

    keys = {dg.AssetCheckKey(dg.AssetKey(asset), "freshness_check") for asset in DAILY_ASSETS}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection=keys)
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    summary["run_ids"].append(result.run_id)
    evaluations = result.get_asset_check_evaluations()
    summary["stale"] = sorted(e.asset_key.to_user_string() for e in evaluations if not e.passed)
    detail = (f"{len(evaluations)}/{len(keys)} fresh" if not summary["stale"]
              else f"overdue: {', '.join(summary['stale'])} ({next(e.description for e in evaluations if not e.passed)})")
    progress.step("freshness", result.success and not summary["stale"], time.perf_counter() - t0, detail)


def run_pipeline(landing: Path, warehouse: Path, quiet: bool = False, verbose: bool = False,
                 progress: Progress | None = None, latest_only: bool = False,
                 lock_wait_seconds: float = 10.0, analyses_only: bool = False, rebuild: bool = False) -> dict:
    """Materialize what the landing zone holds and the warehouse does not yet (every trace
    day the first time, then the days that are new or changed: run_state.py; with rebuild,
    every day again). With latest_only, the as-of analyses only for the last day: what a
    benchmark needs; with analyses_only, not the span-level part either, which the
    warehouse already holds: what re-measuring a statistics change on kept worlds needs.
    Returns a summary.
    Holds the warehouse's writer lock throughout (a second run waits, then refuses)."""
    from cost_attribution.warehouse import writer_lock

    landing, warehouse = landing.resolve(), warehouse.resolve()
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(warehouse, landing, lock_wait_seconds):
        summary = _run_locked(landing, warehouse, quiet, verbose, progress, latest_only, analyses_only, rebuild)
    report = report_json_path(warehouse)
    summary["report_as_of"] = json.loads(report.read_text()).get("as_of") if report.exists() else None
    return summary


def _run_locked(landing: Path, warehouse: Path, quiet: bool, verbose: bool, progress: Progress | None,
                latest_only: bool, analyses_only: bool = False, rebuild: bool = False) -> dict:
    import dagster as dg

    days = _trace_days(landing)
    _check_warehouse_writable(warehouse)
    progress = progress or Progress(quiet=quiet)
    unread = [{"path": str(u.path), "why": u.why} for u in LandingZone(root=str(landing)).unread_files()]
    for item in unread:
        progress.line(safe_text(f"  warning: not read: {item['path']}: {item['why']}"))
    log_path = warehouse.parent / LOG_FILE
    persistent = bool(os.environ.get("DAGSTER_HOME"))
    summary = {"days": [], "failed": [], "reasons": [], "unread_files": unread, "run_ids": [],
               "log_path": str(log_path), "runs_kept": persistent}
    started, previous_stream = time.perf_counter(), progress.stream
    with output_to_log(log_path, enabled=not verbose) as terminal:
        progress.stream = terminal
        try:
            with dg.DagsterInstance.get() if persistent else dg.DagsterInstance.ephemeral() as instance:
                _execute(days, (landing, warehouse), instance, progress, summary, latest_only=latest_only,
                         analyses_only=analyses_only, rebuild=rebuild)
        finally:
            progress.stream = previous_stream
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["report_path"] = str(report_json_path(warehouse))
    newest = summary["run_ids"][-1]
    where = (f"newest {ui_link(newest)}" if persistent
             else f"on an ephemeral instance (set DAGSTER_HOME to keep them for the UI), newest {newest}")
    progress.line(f"runs: {len(summary['run_ids'])}, {where}; log: {log_path}")
    return summary


def load_report(warehouse: Path, as_of: str | None = None) -> dict | None:
    """The newest report, or the one as of a day."""
    from cost_attribution.reporting.report import latest_report

    with open_warehouse(warehouse) as conn:
        if as_of is None:
            return latest_report(conn)
        try:
            rows = conn.execute("SELECT report_json FROM main.reports WHERE as_of = CAST(? AS DATE)", [as_of]).fetchall()
        except Exception as error:
            raise SystemExit(f"{warehouse}: no reports table yet ({type(error).__name__}); run the pipeline first") from None
        return json.loads(rows[0][0]) if rows else None


def report_days(warehouse: Path) -> list[str]:
    with open_warehouse(warehouse) as conn:
        try:
            return [str(r[0]) for r in conn.execute("SELECT as_of FROM main.reports ORDER BY as_of").fetchall()]
        except Exception:
            return []


def report_csv(report: dict) -> str:
    """One row per experiment cell and service: the figures a spreadsheet sorts and sums."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["as_of", "experiment_id", "cell", "experiment_cost_usd_30d", "experiment_ci_low_usd_30d",
                     "experiment_ci_high_usd_30d", "service", "delta_pct", "ci_low_pct", "ci_high_pct", "q_value",
                     "significant", "cost_model", "service_cost_usd_30d", "flags"])
    for exp in report["experiments"]:
        flags = ";".join(f["kind"] for f in exp["flags"])
        head = [report["as_of"], exp["experiment_id"], exp["cell"], exp["incremental_cost_usd_30d"],
                exp["ci_low_usd_30d"], exp["ci_high_usd_30d"]]
        for svc in exp["services"] or [{}]:
            writer.writerow([*head, svc.get("service"), svc.get("delta_pct"), svc.get("ci_low_pct"),
                             svc.get("ci_high_pct"), svc.get("q_value"), svc.get("significant"),
                             svc.get("cost_model"), svc.get("incremental_cost_usd_30d"), flags])
    return out.getvalue()


def report_html(warehouse: Path, report: dict) -> str:
    """The HTML page the pipeline wrote for that day beside the warehouse."""
    _, page = report_html_paths(warehouse, dt.date.fromisoformat(report["as_of"]))
    if not page.exists():
        raise SystemExit(f"{page}: no HTML report for {report['as_of']}; materialize cost_report_html for that day")
    return page.read_text(encoding="utf-8")


def export_marts(warehouse: Path, out_dir: Path, fmt: str) -> list[tuple[str, int]]:
    """Each mart as <name>.parquet / <name>.csv in out_dir. Returns (file, rows)."""
    from cost_attribution.warehouse import read_frame

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with open_warehouse(warehouse) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        for name, table in EXPORT_TABLES.items():
            if table not in present:
                continue
            frame = read_frame(conn, f'SELECT * FROM main."{table}"')  # table names are ours, quoted
            target = out_dir / f"{name}.{fmt}"
            frame.write_parquet(target) if fmt == "parquet" else frame.write_csv(target)
            written.append((str(target), frame.height))
    if not written:
        raise SystemExit(f"{warehouse}: none of the marts exist yet; run the pipeline first")
    return written


def _cmd_run(args) -> int:
    summary = run_pipeline(Path(args.landing), Path(args.warehouse), quiet=args.quiet, verbose=args.verbose,
                           lock_wait_seconds=args.wait, rebuild=args.rebuild)
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

    warehouse = Path(args.warehouse)
    report = load_report(warehouse, args.as_of)
    if report is None:
        days = report_days(warehouse)
        known = f"reports exist for {days[0]}..{days[-1]}" if days else "no report in the warehouse yet"
        print(f"{warehouse}: no report{' as of ' + args.as_of if args.as_of else ''}: {known}", file=sys.stderr)
        return 1
    fmt = "json" if args.json else args.format
    render = {
        "json": lambda: json.dumps(report, indent=2),
        "text": lambda: render_text(report),
        "csv": lambda: report_csv(report).rstrip("\n"),
        "html": lambda: report_html(warehouse, report),
    }[fmt]
    print(render())
    return 0


def _cmd_export(args) -> int:
    written = export_marts(Path(args.warehouse), Path(args.dir), args.format)
    for path, rows in written:
        print(f"{path}\t{rows} rows")
    return 0


def _cmd_demo(args) -> int:
    from cost_attribution.reporting.text import render_summary
    from cost_attribution.simulator import generate_world, live_world_config

    root = Path(args.dir).resolve()
    landing, warehouse = root / "landing", root / "warehouse.duckdb"
    progress = Progress(quiet=args.quiet)
    t0 = time.perf_counter()
    # Production as it really is: experiments already running on uneven ramps, three
    # cells, heavier requests, a savings test, pre-period traces (simulator.world). The
    # world ends yesterday (UTC), as a deployment that ran its daily schedule does: the
    # freshness checks judge it fresh today and stale from the day after tomorrow on.
    config = dataclasses.replace(live_world_config(args.seed), end_date=dt.date.fromisoformat(args.end_date))
    truth = generate_world(landing, config)
    progress.step(f"demo world (seed {args.seed})", True, time.perf_counter() - t0, str(landing))
    summary = run_pipeline(landing, warehouse, verbose=args.verbose, progress=progress)
    report = load_report(warehouse)
    if report is None:
        print("the pipeline produced no report", file=sys.stderr)
        return 1
    print(render_summary(report, truth=truth))
    print(f"\nthe whole report: cost-attribution report --warehouse {warehouse}  (or --format json|html|csv)")
    print(f"the next day's run: cost-attribution run --landing {landing} --warehouse {warehouse}  "
          "(redoes only the days that are new or changed)")
    print(f"report: {summary['report_path']}")
    html_report, _ = report_html_paths(warehouse, dt.date.fromisoformat(report["as_of"]))
    if html_report.exists():
        print(f"html report: {html_report}")
    return 1 if summary["failed"] else 0


def _output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--verbose", action="store_true", help="show Dagster's and dbt's logs instead of writing them to the log file")
    group.add_argument("--quiet", action="store_true", help="no progress lines, only the result")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cost-attribution", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate the embedded demo world, run everything, print the report")
    demo.add_argument("--dir", default="demo", help="where the demo landing zone and warehouse go (default ./demo)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--end-date", default=(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat(),
                      help="the demo world's last trace day (default: yesterday, UTC)")
    _output_flags(demo)
    demo.set_defaults(func=_cmd_demo)
    run = sub.add_parser("run", help="materialize the landing zone's days that are new or changed since the last run")
    run.add_argument("--landing", required=True)
    run.add_argument("--warehouse", required=True)
    run.add_argument("--wait", type=float, default=10.0,
                     help="seconds to wait for another run holding the warehouse (default 10), then refuse")
    run.add_argument("--rebuild", action="store_true",
                     help="redo every trace day and its analyses, not only what changed since the last run")
    _output_flags(run)
    run.set_defaults(func=_cmd_run)
    report = sub.add_parser("report", help="print the newest report, or the one as of a day")
    report.add_argument("--warehouse", required=True)
    report.add_argument("--as-of", help="the report as of this day (YYYY-MM-DD) instead of the newest")
    report.add_argument("--format", choices=["text", "json", "csv", "html"], default="text")
    report.add_argument("--json", action="store_true", help="same as --format json (the contract's report.json)")
    report.set_defaults(func=_cmd_report)
    export = sub.add_parser("export", help="write the marts (experiment costs, service deltas, models, completeness) "
                            "as Parquet or CSV files for a BI tool")
    export.add_argument("dir", help="folder to write <mart>.parquet / <mart>.csv into")
    export.add_argument("--warehouse", required=True)
    export.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    export.set_defaults(func=_cmd_export)
    args = parser.parse_args(argv)
    for flag in ("as_of", "end_date"):
        try:
            if getattr(args, flag, None):
                dt.date.fromisoformat(getattr(args, flag))
        except ValueError:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)!r}: expected a day as YYYY-MM-DD")
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
