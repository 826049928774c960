"""What a `cost-attribution run` costs before it reads a span: the stack's fixed costs on this machine.

    python bench/bench_fixed_costs.py [--spans 20000] [--members 1500] [--repeats 3]
                                      [--workdir /tmp/bench-fixed-costs]
                                      [--floor-world /tmp/bench-pipeline/world-parquet-10250000-683333]

Issue 13 asks for the whole run of a 10M-span Parquet day within 20 s. This measures, each in a
fresh process and `--repeats` times (the median, and every run), what no day size changes:

* the interpreter starting (`python -c pass`);
* the run process's imports (`cost_attribution.cli` and `definitions`: Dagster, dagster-dbt, which
  imports dbt-core, DuckDB, polars, scipy, scikit-learn, matplotlib);
* Great Expectations' import, which the first input contract pays in the same process;
* one dbt invocation that builds nothing (`dbt build` selecting no node, on the tiny world's
  warehouse, its saved parse valid): dbt's import, project and profile validation, the manifest
  read and written, the on-run-start hooks; the span_models step pays it once a run;
* a whole `cost-attribution run` of a tiny day (`--spans` spans, `--members` members, the
  project's simulator) into a new warehouse: every step of the real run, with almost no data;
* the same run again on that warehouse, where nothing is new (it redoes nothing).

With `--floor-world` (a world of bench_pipeline.py) the bare DuckDB attribution query of issue 13
(bench_pipeline.FLOOR_SQL) runs over its Parquet day in the same session, as the yardstick.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import ROOT, _run_child, generate  # this script's folder is first on sys.path

GE_IMPORT = ("import time, cost_attribution.cli, cost_attribution.definitions; t = time.perf_counter(); "
             "import great_expectations; print(time.perf_counter() - t)")


def _timed(args: list[str], env: dict | None = None) -> float:
    """Wall seconds of one child process (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def _printed_seconds(args: list[str]) -> float:
    """The seconds a child process prints (a cost measured inside it)."""
    return float(subprocess.run(args, check=True, cwd=ROOT, capture_output=True, text=True).stdout.split()[-1])


def _cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from cost_attribution.cli import main; sys.exit(main())"]


def _dbt_nothing(warehouse: Path, target: Path) -> list[str]:
    """dbt build selecting no node, with its own target directory: the project's saved parse (the
    runs') is not touched, and this one's is valid from its second call on."""
    from cost_attribution.attribution.dbt_assets import DBT_PROJECT_DIR, dbt_executable, dbt_vars

    return [dbt_executable(), "build", "--select", "tag:selects_no_node", "--quiet", "--project-dir",
            str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--target-path", str(target),
            "--vars", json.dumps(dbt_vars(str(warehouse)))]


def measure(landing: Path, work: Path, repeats: int) -> dict[str, list[float]]:
    from cost_attribution.attribution.dbt_assets import dbt_build_env

    warehouse = work / "warehouse" / "w.duckdb"
    run = [*_cli(), "run", "--landing", str(landing), "--warehouse", str(warehouse), "--quiet"]
    truth = json.loads((landing / "truth.json").read_text())
    first = dt.date.fromisoformat(min(truth["n_spans_by_day"]).removeprefix("dt="))
    dbt_env = dbt_build_env(first, first + dt.timedelta(days=1))
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        runs.setdefault("interpreter", []).append(_timed([sys.executable, "-c", "pass"]))
        runs.setdefault("imports", []).append(
            _timed([sys.executable, "-c", "import cost_attribution.cli, cost_attribution.definitions"]))
        runs.setdefault("great_expectations", []).append(_printed_seconds([sys.executable, "-c", GE_IMPORT]))
        shutil.rmtree(warehouse.parent, ignore_errors=True)
        warehouse.parent.mkdir(parents=True)
        runs.setdefault("first_run", []).append(_timed(run))
        runs.setdefault("nothing_new", []).append(_timed(run))
        shutil.rmtree(work / "dbt-target", ignore_errors=True)
        dbt_nothing = _dbt_nothing(warehouse, work / "dbt-target")
        runs.setdefault("dbt_parse", []).append(_timed(dbt_nothing, env=dbt_env))  # no saved parse: a full one
        runs.setdefault("dbt_nothing", []).append(_timed(dbt_nothing, env=dbt_env))
    return runs


def floor(world: Path) -> dict:
    """bench_pipeline's floor query (its own child, FLOOR_RUNS times) over the world's Parquet day."""
    out = world.parent / "fixed-costs-floor.json"
    _run_child(["--child", "floor", str(world / "traces" / "*" / "*.parquet"), str(world / "allocations" / "*.csv"),
                str(out)])
    return json.loads(out.read_text())


ROWS = [
    ("interpreter", "the interpreter starts (`python -c pass`)"),
    ("imports", "the run process's imports (cli, definitions)"),
    ("great_expectations", "Great Expectations' import, after those (the first input contract)"),
    ("dbt_nothing", "one dbt invocation that builds nothing, its saved parse valid (span_models: once a run)"),
    ("dbt_parse", "the same with no saved parse (dbt parses the project: a new warehouse path)"),
    ("nothing_new", "`cost-attribution run` with nothing new (redoes nothing)"),
    ("first_run", "`cost-attribution run` of the tiny day into a new warehouse (the same path each time)"),
]


def markdown(runs: dict[str, list[float]], spans: int, floor_result: dict | None) -> str:
    lines = ["| fixed cost | median s | runs s |", "|---|---:|---|"]
    for key, label in ROWS:
        values = runs[key]
        lines.append(f"| {label} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    if floor_result:
        lines.append(f"| floor: the bare DuckDB attribution query over the 10M day (not fixed: the yardstick) | "
                     f"{floor_result['seconds']:.2f} | {', '.join(f'{v:.2f}' for v in floor_result['runs'])} |")
    bound = sum(statistics.median(runs[k]) for k in ("nothing_new", "dbt_nothing", "great_expectations"))
    lines.append("")
    lines.append(f"The tiny day has {spans:,} spans. A run that does a day pays at least the run with nothing new, "
                 f"plus one dbt invocation and Great Expectations' import: {bound:.1f} s here before any span "
                 f"is read; its first run of a tiny day took {statistics.median(runs['first_run']):.1f} s.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000, help="target spans of the tiny day")
    parser.add_argument("--members", type=int, default=1_500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/bench-fixed-costs")
    parser.add_argument("--floor-world", type=Path, help="a bench_pipeline.py Parquet world: time its floor query")
    args = parser.parse_args()
    work = Path(args.workdir)
    landing = work / "world"
    _, truth = generate(landing, args.spans, args.members, "parquet", reuse=True, dirty=True)  # bench_pipeline's worlds
    spans = truth["n_spans"]
    load_before = os.getloadavg()
    runs = measure(landing, work, args.repeats)
    floor_result = floor(args.floor_world) if args.floor_world else None
    measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (work / "results.json").write_text(json.dumps({"runs": runs, "floor": floor_result, "spans": spans,
                                                   "measured_at": measured_at, "load_before": load_before}, indent=1))
    print(f"Measured {measured_at} on {os.cpu_count()} CPUs.\n")
    print(markdown(runs, spans, floor_result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
