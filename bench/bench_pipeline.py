"""Benchmark the daily pipeline at scale: wall time and peak RSS per stage.

    python bench/bench_pipeline.py [--spans 10000000] [--members 680000] [--formats parquet otlp_json]
                                   [--workdir /tmp/bench-pipeline] [--reuse] [--readme bench/README.md]
    python bench/bench_pipeline.py --curve /tmp/bench-pipeline/results-*.json   # the scaling table

For each span format, generates (or reuses) one simulated world with `--spans` spans in
a single trace day and `--members` members (the project's simulator, `target_spans_per_day`,
`n_members`; by default one member per 15 spans, the population of a real 10M-span day:
680K members, ~1.7M allocation rows), then runs the
daily pipeline exactly as `cost-attribution run` does (`cli.run_pipeline`) in a child
process, and measures:

* per stage (Dagster steps grouped: ingest, dbt span models, deltas, models,
  projections, report, plus latency / capacity / html): wall time from the run's event
  log, and the peak RSS of the process tree (the Dagster process plus the dbt child)
  sampled every 100 ms while the stage's steps ran;
* the whole run: wall time and peak RSS (getrusage of the child, max of self and dbt);
* the floor: the same attribution as one bare DuckDB query over the same files (each
  trace's member from its spans, per (member, service) adjusted SERVER requests, joined
  with the allocations, grouped per experiment x cell x service; `FLOOR_SQL`), in its
  own child process right after the run, FLOOR_RUNS times: the median run is the floor.

With `--days N --daily` the world has N trace days and the last one is measured as the
daily run meets it: a landing zone holding the days before is run first into the same
warehouse (not measured), then the last day's traces land and the other inputs are
delivered again as new files, and `run` does that day (cli.py, run_state.py). Without
it the run is the first one on a new warehouse, over every day of the world.

Results are printed as markdown and, with --readme, written into the README under the
heading "Daily pipeline at scale" (other sections of the file are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = "## Daily pipeline at scale"
TARGET_SECONDS, TARGET_RSS_GB, TARGET_FLOOR_RATIO = 20.0, 2.0, 3.0  # issue 13's acceptance

# The floor: what the span models do at their core, as one bare DuckDB query over the
# landing zone's own files (no validation, no dedupe, no busy time, no pre period).
FLOOR_SQL = """
WITH spans AS (
    SELECT trace_id, service, kind, member_id, 1.0 / coalesce(sampling_probability, 1.0) AS adjusted
    FROM read_parquet($spans)
),
trace_member AS (
    SELECT trace_id, min(member_id) AS member_id FROM spans WHERE member_id IS NOT NULL
    GROUP BY trace_id HAVING count(DISTINCT member_id) = 1
),
member_service AS (
    SELECT t.member_id, s.service, sum(s.adjusted) AS requests, count(*) AS sampled
    FROM spans AS s JOIN trace_member AS t USING (trace_id)
    WHERE s.kind = 'SERVER'
    GROUP BY t.member_id, s.service
)
SELECT a.experiment_id, a.cell, m.service, count(*) AS members, sum(m.requests) AS requests, sum(m.sampled) AS sampled
FROM member_service AS m JOIN read_csv($allocations, header = true, all_varchar = true) AS a USING (member_id)
GROUP BY ALL
"""

# The dbt models the floor query does the work of (each trace's member, spans per member
# and service, the allocations join, per cell); the others add latency, completeness and
# call edges, which the floor does not compute. enriched_spans also computes busy time
# (which the floor does not) and member_service_usage is a view on DuckDB (the allocations
# join is paid by usage_by_cell and the statistics that read it): counted all the same.
ATTRIBUTION_MODELS = ("trace_members", "enriched_spans", "member_day_usage", "same_day_usage",
                      "member_service_usage", "usage_by_cell")

# Dagster steps -> the stages the targets talk about.
STAGES = {
    "ingest": {"raw_spans", "span_quarantine", "allocations", "experiments", "services", "focus_costs",
               "usage_metrics", "business_metrics"},
    "dbt span models": {"span_models"},
    "deltas": {"trace_completeness", "usage_deltas"},
    "models": {"service_hourly_history", "cost_models"},
    "projections": {"cost_projections"},
    "report": {"cost_report"},
    "latency": {"latency_impact"},
    "capacity": {"capacity_plan"},
    "html report": {"cost_report_html"},
}


# ----------------------------------------------------------------------------- child side


def _descendants(root: int) -> list[int]:
    """`root` and all its descendants, from /proc (no psutil; ~15 ms, so done rarely)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


TICK = os.sysconf("SC_CLK_TCK")


def _own_high_water_mark() -> int:
    """This process's peak RSS so far (VmHWM): it catches a spike between two samples."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of the live processes in `pids` plus what the first one's
    reaped children used (cutime/cstime): a dbt child's time stays counted after it exits."""
    total = 0
    for i, pid in enumerate(pids):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if i == 0 else 0)
        except (OSError, IndexError, ValueError):
            continue
    return total / TICK


def _child_pipeline(landing: Path, warehouse: Path, out: Path, dagster_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)  # a persistent instance keeps the step events to read back
    # (time, RSS of the tree, RSS of this process, CPU s of the tree, this process's peak RSS so far)
    samples: list[tuple[float, int, int, float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        # RSS of the known process tree every 100 ms (~0.1 ms); the tree itself (the dbt
        # child comes and goes) is rescanned every 2 s, so the sampler costs < 1% of a core.
        pid, pids, scanned = os.getpid(), [os.getpid()], 0.0
        while not stop.is_set():
            now = time.time()
            if now - scanned > 2.0:
                pids, scanned = _descendants(pid), now
            samples.append((now, _rss_bytes(pids), _rss_bytes(pids[:1]), _cpu_seconds(pids), _own_high_water_mark()))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # The whole run starts before the CLI's import, as `cost-attribution run` does (until the
    # twelfth stop the import, ~4-5 s here, was left out of the run's wall time).
    started = time.time()
    from cost_attribution.cli import run_pipeline

    cli_imported = time.time()
    summary = run_pipeline(landing, warehouse, quiet=True)
    finished = time.time()
    run_high_water_mark = _own_high_water_mark()  # before the step events are read back below
    stop.set()
    sampler.join()

    import dagster as dg

    steps: list[dict] = []
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            opened: dict[str, float] = {}
            records = instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                                                             dg.DagsterEventType.STEP_FAILURE})
            for record in records:
                key = record.step_key
                if record.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                    opened[key] = record.timestamp
                elif key in opened:
                    start, end = opened.pop(key), record.timestamp
                    inside = [(tree, own) for t, tree, own, _, _ in samples if start <= t <= end]
                    cpu = [c for t, _, _, c, _ in samples if start <= t <= end]
                    marks = [h for t, _, _, _, h in samples if t <= end]
                    before = [h for t, _, _, _, h in samples if t < start]
                    steps.append({"step": key, "start": start, "end": end, "seconds": end - start,
                                  "cpu_seconds": max(cpu) - min(cpu) if cpu else 0.0,
                                  "peak_rss": max((tree for tree, _ in inside), default=0),
                                  "peak_rss_dagster_process": max((own for _, own in inside), default=0),
                                  # how far the Dagster process's high-water mark rose in the step:
                                  # a spike shorter than the sampling interval shows here
                                  "high_water_mark_rise": (max(marks, default=0) - max(before, default=0)),
                                  "high_water_mark": max(marks, default=0),
                                  "success": record.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS})
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out.write_text(json.dumps({
        "summary": summary,
        "wall_seconds": finished - started,
        "cli_import_seconds": cli_imported - started,
        # ru_maxrss of a forked child starts at the parent's RSS at fork time, so the
        # children's figure overstates dbt; the sampled tree peak is the honest one.
        "peak_rss": max(run_high_water_mark, max((r for _, r, _, _, _ in samples), default=0)),
        "cpu_seconds": sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                           for f in ("ru_utime", "ru_stime")),
        # The Dagster process's peak while the pipeline ran; getrusage at the end also
        # counts this bench reading every step event back afterwards.
        "peak_rss_self": run_high_water_mark,
        "peak_rss_self_with_event_readback": self_rss,
        "peak_rss_children_getrusage": children_rss,
        "steps": steps,
        "dbt_nodes": _dbt_node_seconds(summary.get("run_ids", [])),
    }, indent=1, default=str))


def _dbt_node_seconds(run_ids: list[str]) -> dict[str, float]:
    """Seconds per dbt node of the run's build (dbt's run_results.json in the target
    directory dagster-dbt gave the invocation: span_models-<run id>-...): models by
    name, data tests summed as "data tests"."""
    from cost_attribution.dbt_project import DBT_PROJECT_DIR

    for run_id in run_ids:
        for folder in sorted((DBT_PROJECT_DIR / "target").glob(f"span_models-{run_id[:7]}-*")):
            results = folder / "run_results.json"
            if not results.exists():
                continue
            seconds: dict[str, float] = {}
            for node in json.loads(results.read_text())["results"]:
                kind, name = node["unique_id"].split(".")[0], node["unique_id"].split(".")[-1]
                key = name if kind == "model" else "data tests" if kind == "test" else kind
                seconds[key] = seconds.get(key, 0.0) + node["execution_time"]
            return seconds
    return {}


FLOOR_RUNS = 3  # this machine's speed drifts within minutes: one run of 2 s is a noisy yardstick


def _child_floor(spans_glob: str, allocations_glob: str, out: Path) -> None:
    """The floor query FLOOR_RUNS times on one connection; its seconds are the median run's."""
    import duckdb

    runs, cpu = [], []
    with duckdb.connect() as conn:
        from cost_attribution import environment

        conn.execute("SET memory_limit = ?", [environment.memory_limit()])  # the pipeline's cap
        for _ in range(FLOOR_RUNS):
            started, usage = time.time(), resource.getrusage(resource.RUSAGE_SELF)
            rows = conn.execute(FLOOR_SQL, {"spans": spans_glob, "allocations": allocations_glob}).fetchall()
            runs.append(time.time() - started)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
    middle = sorted(range(FLOOR_RUNS), key=runs.__getitem__)[FLOOR_RUNS // 2]
    out.write_text(json.dumps({"seconds": runs[middle], "cpu_seconds": cpu[middle], "runs": runs,
                               "groups": len(rows), "member_cells": sum(r[3] for r in rows),
                               "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


# ----------------------------------------------------------------------------- parent side


def generate(landing: Path, spans: int, members: int, fmt: str, reuse: bool, dirty: bool,
             days: int = 1, internal: float = 0.0) -> tuple[float, dict]:
    marker = landing / "truth.json"
    if reuse and marker.exists():
        return 0.0, json.loads(marker.read_text())
    if landing.exists():
        shutil.rmtree(landing)
    from cost_attribution.simulator import WorldConfig, generate_world

    started = time.time()
    config = WorldConfig(seed=7, trace_days=days, target_spans_per_day=spans, n_members=members, span_formats=(fmt,),
                         dirty_records=dirty, internal_spans_per_server=internal)
    truth = generate_world(landing, config)
    return time.time() - started, truth


def _deliver(world: Path, landing: Path, days: list[str]) -> None:
    """Into `landing`: the trace folders `days` of `world` (hard links: the same files),
    and every other input copied afresh (new files, as a daily export delivers them)."""
    for day in days:
        (landing / "traces" / day).mkdir(parents=True)
        for path in (world / "traces" / day).iterdir():
            os.link(path, landing / "traces" / day / path.name)
    for path in world.iterdir():
        if path.name != "traces":
            target = landing / path.name
            if target.is_dir():
                shutil.rmtree(target)
            (shutil.copytree if path.is_dir() else shutil.copy)(path, target)


def _day_spans(truth: dict, day: str) -> int:
    """Spans written on one trace day (its folder's name, `dt=YYYY-MM-DD`)."""
    return truth["n_spans_by_day"][day.removeprefix("dt=")]


def _run_child(args: list[str]) -> float:
    started = time.time()
    subprocess.run([sys.executable, __file__, *args], check=True, cwd=ROOT)
    return time.time() - started


def stage_table(result: dict) -> list[dict]:
    rows = []
    by_stage: dict[str, list[dict]] = {}
    for step in result["steps"]:
        name = step["step"].split(".")[0]
        stage = next((s for s, keys in STAGES.items() if name in keys or step["step"] in keys), None)
        if stage is None:
            checks = name.endswith("_input_contract") or name.startswith("freshness_check")
            stage = "checks (input contracts, freshness)" if checks else "other"
        by_stage.setdefault(stage, []).append(step)
    for stage in [*STAGES, "checks (input contracts, freshness)", "other"]:
        steps = by_stage.get(stage)
        if steps:
            rows.append({"stage": stage, "seconds": sum(s["seconds"] for s in steps),
                         "cpu_seconds": sum(s.get("cpu_seconds", 0.0) for s in steps),
                         "peak_rss": max(s["peak_rss"] for s in steps),
                         "peak_rss_own": max(s.get("peak_rss_dagster_process", 0) for s in steps), "steps": len(steps)})
    in_steps = sum(r["seconds"] for r in rows)
    rows.append({"stage": "outside steps (imports, Dagster run set-up, dbt manifest load)",
                 "seconds": result["wall_seconds"] - in_steps, "peak_rss": 0, "peak_rss_own": 0, "steps": 0,
                 "cpu_seconds": result.get("cpu_seconds", 0.0) - sum(r.get("cpu_seconds", 0.0) for r in rows)})
    return rows


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def _days_text(days: int, daily: bool = False) -> str:
    if daily:
        return (f"{days} trace days, the last one measured as a daily run: a landing zone holding the days before "
                "was run first into the same warehouse, then the last day's traces landed and the other inputs "
                "were delivered again (new files: allocations, costs, metrics), as every day")
    return "One trace day" if days == 1 else f"{days} trace days (the as-of analyses run for each)"


def markdown(results: dict, spans: int, command: str) -> str:
    members = results.get("members")
    lines = [
        SECTION,
        "",
        f"Measured {results.get('measured_at') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), load average before the run "
        f"{results.get('load_before', 'n/a')}. {_days_text(results.get('days', 1), results.get('daily', False))} from the project's simulator (target_spans_per_day={spans:,}"
        + (f", n_members={members:,}" if members else "")
        + (f", internal_spans_per_server={results['internal_spans_per_server']:g}: INTERNAL children of SERVER spans, "
           "counted in the day's spans" if results.get("internal_spans_per_server") else "")
        + "; the span counts actually written are in each table's title), "
        "28 days of cost history; the daily pipeline exactly as `cost-attribution run` runs it "
        "(`cli.run_pipeline`: one Dagster run for ingest + dbt over the day, one for the as-of analyses; a daily run on a "
        "kept warehouse ingests the other inputs in a run of their own first).",
        "",
        f"Targets: whole daily run on Parquet < {TARGET_SECONDS:.0f} s and < {TARGET_RSS_GB:.0f} GB peak RSS; "
        f"attribution (dbt span models) within {TARGET_FLOOR_RATIO:.0f}x of the bare DuckDB attribution query "
        "(trace -> member, per member x service, allocations join, group-by) over the same files.",
        "",
        "Rerun:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    for fmt, result in results["formats"].items():
        floor = results.get("floor", {}).get(fmt)
        population = (f", {result['members']:,} members, {result['allocation_rows']:,} allocation rows"
                      if result.get("members") else "")
        lines += [f"### {fmt}: {result['spans_on_disk']:,} spans, {result['bytes_on_disk'] / 1e9:.2f} GB on disk{population}",
                  "", "| stage | wall s | CPU s | peak RSS GB (process tree) | of which the Dagster process | steps |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in stage_table(result):
            rss = _gb(row["peak_rss"]) if row["peak_rss"] else ""
            own = _gb(row["peak_rss_own"]) if row.get("peak_rss_own") else ""
            lines.append(f"| {row['stage']} | {row['seconds']:.1f} | {row.get('cpu_seconds', 0.0):.1f} | {rss} | {own} "
                         f"| {row['steps'] or ''} |")
        total_ok = "OK" if result["wall_seconds"] < TARGET_SECONDS and result["peak_rss"] < TARGET_RSS_GB * 1e9 else "MISSED"
        lines.append(f"| **whole run** (incl. Dagster start-up) | **{result['wall_seconds']:.1f}** | "
                     f"{result.get('cpu_seconds', 0.0):.1f} | "
                     f"**{_gb(result['peak_rss'])}** | {_gb(result['peak_rss_self'])} | target {total_ok} |")
        if floor:
            dbt = sum(r["seconds"] for r in stage_table(result) if r["stage"] == "dbt span models")
            ratio = dbt / floor["seconds"] if floor["seconds"] else float("nan")
            runs = floor.get("runs") or []
            of_runs = f"; median of {len(runs)} runs: {', '.join(f'{r:.2f}' for r in runs)} s" if len(runs) > 1 else ""
            lines.append(f"| floor: bare DuckDB attribution query (same files{of_runs}) | {floor['seconds']:.2f} | "
                         f"{floor.get('cpu_seconds', 0.0):.1f} | "
                         f"{_gb(floor['peak_rss'])} | | dbt / floor = {ratio:.0f}x "
                         f"({'OK' if ratio <= TARGET_FLOOR_RATIO else 'MISSED'}) |")
        nodes = result.get("dbt_nodes") or {}
        if nodes:
            listed = ", ".join(f"{name} {sec:.1f}" for name, sec in sorted(nodes.items(), key=lambda kv: -kv[1]) if sec >= 0.05)
            lines += ["", f"dbt nodes, seconds (dbt's run_results; {sum(nodes.values()):.1f} s of the step's "
                      f"{sum(r['seconds'] for r in stage_table(result) if r['stage'] == 'dbt span models'):.1f} s): {listed}."]
            attribution = sum(nodes.get(name, 0.0) for name in ATTRIBUTION_MODELS)
            if floor and floor["seconds"]:
                lines.append(f"The attribution models alone ({', '.join(ATTRIBUTION_MODELS)}): {attribution:.1f} s, "
                             f"{attribution / floor['seconds']:.1f}x the floor.")
        made = (f"generated in {result['generate_seconds']:.0f} s" if result["generate_seconds"]
                else "reused from an earlier generation (--reuse)")
        lines += ["", f"World {made}; generation is not part of the run.", ""]
    if results.get("notes"):
        lines += results["notes"] + [""]
    return "\n".join(lines)


def _csv_rows(folder: Path) -> int:
    """Data rows of the CSV files in `folder` (header lines left out)."""
    total = 0
    for path in folder.glob("*.csv"):
        with path.open("rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def curve(saved: list[tuple[str, dict]]) -> str:
    """One line per (format, day size, population, label) of saved results: the scaling table.
    The label is what precedes "results" in the file's name (e.g. before-results-...json)."""
    lines = ["| code | format | spans | members | allocation rows | whole run s | CPU s | peak RSS GB | ingest s | dbt span models s "
             "| floor s | dbt / floor | rest s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for label, results in saved:
        for fmt, result in results["formats"].items():
            stages = {r["stage"]: r["seconds"] for r in stage_table(result)}
            floor = results.get("floor", {}).get(fmt)
            dbt = stages.get("dbt span models", 0.0)
            rest = result["wall_seconds"] - stages.get("ingest", 0.0) - dbt
            ratio = f"| {floor['seconds']:.2f} | {dbt / floor['seconds']:.1f}x " if floor else "| | "
            rows.append((fmt, result["spans_on_disk"], result.get("members", 0), label,
                         f"| {label or 'this checkout'} | {fmt} | {result['spans_on_disk']:,} | {result.get('members', 0):,} "
                         f"| {result.get('allocation_rows', 0):,} | {result['wall_seconds']:.1f} "
                         + (f"| {result['cpu_seconds']:.1f} | " if "cpu_seconds" in result else "| not sampled | ")
                         + f"{_gb(result['peak_rss'])} "
                         f"| {stages.get('ingest', 0.0):.1f} | {dbt:.1f} {ratio}| {rest:.1f} |"))
    return "\n".join(lines + [row for *_, row in sorted(rows)])


def write_readme(readme: Path, section: str) -> None:
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\nEach section is owned by the engineer who wrote the bench.\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    readme.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_250_000,
                        help="target spans in the day (the simulator lands ~1.5%% under its target)")
    parser.add_argument("--members", type=int, default=None,
                        help="members in the world (default: one per 15 target spans, at least 4,700)")
    parser.add_argument("--formats", nargs="+", default=["parquet", "otlp_json"], choices=["parquet", "otlp_json"])
    parser.add_argument("--days", type=int, default=1,
                        help="trace days (each of --spans): the as-of analyses run for every day, so their "
                             "time by day shows how a daily run grows as the experiments age")
    parser.add_argument("--daily", action="store_true",
                        help="with --days >= 2: measure the last day as the daily run does it, on a warehouse "
                             "that already holds the days before (run first, not measured)")
    parser.add_argument("--workdir", default="/tmp/bench-pipeline")
    parser.add_argument("--reuse", action="store_true", help="reuse generated worlds of a previous run")
    parser.add_argument("--internal-spans", type=float, default=0.0,
                        help="INTERNAL spans per SERVER span (real traffic has many; 0, the default, is the "
                             "series measured since issue 13 was filed: SERVER and CLIENT spans only). They "
                             "count in --spans")
    parser.add_argument("--no-dirty-records", action="store_true",
                        help="worlds without the injected dirty records (truncated lines, duplicates, ...)")
    parser.add_argument("--readme", default=None, help="write the results section into this markdown file")
    parser.add_argument("--render", default=None, help="only render the markdown of a saved results.json")
    parser.add_argument("--curve", nargs="+", default=None, help="only print the scaling table of saved results-*.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    members = args.members or max(4_700, args.spans // 15)
    command = (f"python bench/bench_pipeline.py --spans {args.spans} --members {members} --formats {' '.join(args.formats)}"
               + (f" --days {args.days}" if args.days > 1 else "") + (" --daily" if args.daily else "")
               + (f" --internal-spans {args.internal_spans:g}" if args.internal_spans else "")
               + (" --no-dirty-records" if args.no_dirty_records else "") + " --readme bench/README.md")
    # A world of several days is kept apart from the one-day world of the same size.
    world_name = (f"{args.spans}-{members}" + (f"-{args.days}d" if args.days > 1 else "")
                  + (f"-internal{args.internal_spans:g}" if args.internal_spans else ""))
    name = world_name + ("-daily" if args.daily else "")
    if args.daily and args.days < 2:
        parser.error("--daily needs --days 2 or more: the days before the measured one")
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        command = (f"python bench/bench_pipeline.py --spans {args.spans} --members {saved.get('members') or members} "
                   f"--formats {' '.join(saved['formats'])}"
                   + (f" --days {saved['days']}" if saved.get("days", 1) > 1 else "")
                   + (" --daily" if saved.get("daily") else "")
                   + (f" --internal-spans {saved['internal_spans_per_server']:g}" if saved.get("internal_spans_per_server") else "")
                   + " --readme bench/README.md")
        section = markdown(saved, args.spans, command)
        print(section)
        if args.readme:
            write_readme(Path(args.readme), section)
        return 0
    if args.curve:
        print(curve([(Path(f).name.split("results")[0].strip("-"), json.loads(Path(f).read_text())) for f in args.curve]))
        return 0
    if args.child:
        kind, *rest = args.child
        if kind == "pipeline":
            _child_pipeline(Path(rest[0]), Path(rest[1]), Path(rest[2]), Path(rest[3]))
        else:
            _child_floor(rest[0], rest[1], Path(rest[2]))
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"formats": {}, "floor": {}, "members": members, "days": args.days, "daily": args.daily,
                     "internal_spans_per_server": args.internal_spans, "load_before": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
                     "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for fmt in args.formats:
        world = work / f"world-{fmt}-{world_name}"
        gen_seconds, truth = generate(world, args.spans, members, fmt, args.reuse, not args.no_dirty_records, args.days,
                                      args.internal_spans)
        print(f"[{fmt}] world: {truth['n_spans']:,} spans, generated in {gen_seconds:.0f}s", file=sys.stderr)
        run_dir = work / f"run-{fmt}-{name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir()
        out, landing, before = run_dir / "result.json", world, None
        if args.daily:
            landing = run_dir / "landing"
            days = sorted(p.name for p in (world / "traces").iterdir())
            _deliver(world, landing, days[:-1])
            before = _run_child(["--child", "pipeline", str(landing), str(run_dir / "w.duckdb"),
                                 str(run_dir / "result-days-before.json"), str(run_dir / "dagster_home_before")])
            print(f"[{fmt}] the days before: {before:.1f}s", file=sys.stderr)
            _deliver(world, landing, days[-1:])
        files = list((landing / "traces").rglob("*.*"))
        if args.daily:
            files = [f for f in files if f.parent.name == days[-1]]
        _run_child(["--child", "pipeline", str(landing), str(run_dir / "w.duckdb"), str(out), str(run_dir / "dagster_home")])
        result = json.loads(out.read_text())
        if before is not None:
            result["days_before_seconds"] = before
            truth = {**truth, "n_spans": _day_spans(truth, days[-1])}
        result.update(generate_seconds=gen_seconds, spans_on_disk=truth["n_spans"],
                      bytes_on_disk=sum(f.stat().st_size for f in files), members=truth["n_members"],
                      allocation_rows=_csv_rows(landing / "allocations"))
        results["formats"][fmt] = result
        print(f"[{fmt}] run: {result['wall_seconds']:.1f}s, peak RSS {_gb(result['peak_rss'])} GB, "
              f"failed={result['summary']['failed']}", file=sys.stderr)
        if args.days > 1:
            print(f"[{fmt}] as-of analyses by day (s): "
                  + ", ".join(f"{d['day']} {d['seconds']}" for d in result["summary"]["days"]), file=sys.stderr)
        if fmt == "parquet":
            floor_out = run_dir / "floor.json"
            _run_child(["--child", "floor", str(landing / "traces" / (days[-1] if args.daily else "*") / "*.parquet"),
                        str(landing / "allocations" / "*.csv"), str(floor_out)])
            results["floor"][fmt] = json.loads(floor_out.read_text())
    (work / f"results-{'-'.join(args.formats)}-{name}.json").write_text(
        json.dumps(results, indent=1, default=str))
    section = markdown(results, args.spans, command)
    print(section)
    if args.readme:
        write_readme(Path(args.readme), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
