"""Accuracy of the headline numbers over many noise draws of the embedded simulator.

    .venv/bin/python bench/accuracy.py --seeds 20            # demo-sized live worlds, ~2-3 min per seed here
    .venv/bin/python bench/accuracy.py --seeds 3 --first 100 # a quick look
    .venv/bin/python bench/accuracy.py --table results.jsonl # re-print a finished run
    .venv/bin/python bench/accuracy.py --seeds 20 --keep /data/acc   # keep each seed's world and warehouse
    .venv/bin/python bench/accuracy.py --rerun /data/acc      # re-run only the as-of analyses (deltas,
                                                              # models, projections) on kept worlds: ~4x faster,
                                                              # what measuring a statistics change needs
    .venv/bin/python bench/accuracy.py --world tidy --seeds 12 --keep /data/tidy   # the original world
    .venv/bin/python bench/accuracy.py --score /data/tidy old/report.json --out old.jsonl  # another version's reports

Each seed generates `live_world_config(seed)` (same truth structure, different members,
samples and noise), runs the whole pipeline (`cost-attribution run`, in-process) and
compares every cell of the last day's report with truth.json, on both baselines (incremental cost
vs not shipping, and bill change). One JSON line per cell is appended to --out as soon
as its seed finishes, so an interrupted run keeps what it measured.

Per kind of experiment it prints: cells, median and worst |error| (cells whose true cost
is over $500), mean signed error (bias), 95% interval coverage, median interval width /
|truth|, and for calibration (A/A) and zero-cost cells the share whose interval excludes
$0 or that show a significant service (false positives).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# What each experiment of the live world stands for (simulator/config.py live_experiments).
KINDS = {
    "smarter-prefetch": "production-share ramp",
    "ratings-badge": "three cells, new calls to a tiny service",
    "hd-images": "heavier requests",
    "lean-recs": "savings",
    "search-personalization": "new dependency",
    "login-refresh": "static",
    "aa-calibration": "A/A",
}
COSTED_USD = 500.0


def world_config(world: str, seed: int):
    """live: production as it really is (the demo's world); tidy: the original world, every
    experiment started with the traces, production metrics that do not carry them (like
    ../shared/sample-world: no running-test share)."""
    import dataclasses

    from cost_attribution.simulator import WorldConfig, live_world_config

    if world == "live":
        return live_world_config(seed)
    return dataclasses.replace(WorldConfig(), seed=seed, tests_in_production=False)


def run_seed(seed: int, workdir: Path, keep: bool = False, rerun: bool = False, world: str = "live") -> list[dict]:
    from cost_attribution.simulator import generate_world
    from cost_attribution_tests.worlds import run_world

    root = workdir / f"seed-{seed}"
    if rerun:
        truth = json.loads((root / "landing" / "truth.json").read_text())
    else:
        truth = generate_world(root / "landing", world_config(world, seed))
    started = time.perf_counter()
    summary, report = run_world(root / "landing", root / "warehouse.duckdb", latest_only=True, analyses_only=rerun)
    rows = score(seed, truth, report, summary["failed"], time.perf_counter() - started, world)
    if not keep and not rerun:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def score(seed: int, truth: dict, report: dict, failed_steps: list, seconds: float, world: str = "live") -> list[dict]:
    """One row per cell of truth.json: the report's estimate, interval and services against it."""
    rows = []
    for key, expected in truth["experiments"].items():
        experiment_id, cell = key.split(":")
        got = next((e for e in report["experiments"] if e["experiment_id"] == experiment_id and e["cell"] == cell), None)
        row = {"seed": seed, "cell": key, "kind": KINDS.get(experiment_id, experiment_id) if world == "live" else experiment_id, "seconds": seconds,
               "failed_steps": failed_steps, "found": got is not None}
        if got is not None:
            for name, point, low, high in (("incremental", "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d"),
                                           ("bill", "bill_change_usd_30d", "bill_ci_low_usd_30d", "bill_ci_high_usd_30d")):
                row[name] = {"truth": expected.get(point, expected["incremental_cost_usd_30d"]),
                             "estimate": got.get(point), "low": got.get(low), "high": got.get(high)}
            for name in ("incremental", "bill"):  # reports from before the bill baseline had only one
                row[name] = row[name] if row[name]["estimate"] is not None else row["incremental"]
            row["significant_services"] = [s["service"] for s in got["services"] if s["significant"]]
            row["services"] = {s["service"]: {
                "truth_delta": expected["services"].get(s["service"], {}).get("delta"),
                "truth_usd": expected["services"].get(s["service"], {}).get("incremental_cost_usd_30d"),
                **{k: s.get(k) for k in ("delta_pct", "ci_low_pct", "ci_high_pct", "significant", "work_delta_pct",
                                         "priced_on", "incremental_cost_usd_30d", "ci_low_usd_30d", "ci_high_usd_30d")},
            } for s in got["services"]}
        rows.append(row)
    return rows


def _pct(values: list[float]) -> str:
    return "-" if not values else f"{100 * np.median(values):.1f}%"


def table(rows: list[dict], baseline: str = "incremental") -> str:
    lines = [f"### {baseline} ({len({r['seed'] for r in rows})} seeds)", "",
             "| kind | cells | median abs error | worst abs error | mean signed error | coverage | median width / truth | false positives |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: list(KINDS.values()).index(k) if k in KINDS.values() else 99)
    totals = {"abs": [], "cover": [], "width": []}
    for kind in kinds:
        found = [r for r in rows if r["kind"] == kind and r["found"]]
        costed = [r[baseline] for r in found if abs(r[baseline]["truth"]) > COSTED_USD]
        errors = [(c["estimate"] - c["truth"]) / abs(c["truth"]) for c in costed]
        cover = [c["low"] <= c["truth"] <= c["high"] for c in (r[baseline] for r in found)]
        widths = [(c["high"] - c["low"]) / abs(c["truth"]) for c in costed]
        zero = [r for r in found if abs(r[baseline]["truth"]) <= COSTED_USD and r[baseline]["truth"] == 0]
        false_pos = [not (r[baseline]["low"] <= 0 <= r[baseline]["high"]) for r in zero]
        if kind == "A/A":
            false_pos = [bool(r["significant_services"]) or fp for r, fp in zip(zero, false_pos)]
        totals["abs"] += [abs(e) for e in errors]
        totals["cover"] += [c["low"] <= c["truth"] <= c["high"] for c in costed]
        totals["width"] += widths
        lines.append(
            f"| {kind} | {len(found)} | {_pct([abs(e) for e in errors])} | "
            f"{'-' if not errors else f'{100 * max(abs(e) for e in errors):.1f}%'} | "
            f"{'-' if not errors else f'{100 * np.mean(errors):+.1f}%'} | "
            f"{'-' if not cover else f'{100 * np.mean(cover):.0f}%'} | "
            f"{'-' if not widths else f'{np.median(widths):.2f}'} | "
            f"{'-' if not zero else f'{sum(false_pos)}/{len(zero)}'} |"
        )
    errors, cover, widths = totals["abs"], totals["cover"], totals["width"]
    lines.append(
        f"| **all costed cells** | {len(errors)} | {_pct(errors)} | "
        f"{'-' if not errors else f'{100 * max(errors):.1f}%'} | | "
        f"{'-' if not cover else f'{100 * np.mean(cover):.0f}%'} | "
        f"{'-' if not widths else f'{np.median(widths):.2f}'} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--out", default="accuracy_results.jsonl", help="JSON lines, appended per seed")
    parser.add_argument("--table", help="only print the tables of an existing results file")
    parser.add_argument("--seeds-of", help="with --table: only the seeds present in this other results file")
    parser.add_argument("--keep", help="keep each seed's world and warehouse under this folder")
    parser.add_argument("--rerun", help="re-run only the as-of analyses on the worlds kept under this folder")
    parser.add_argument("--world", choices=("live", "tidy"), default="live", help="which simulator world (default live)")
    parser.add_argument("--score", nargs=2, metavar=("FOLDER", "REPORT_NAME"),
                        help="only score reports already written: FOLDER/seed-*/REPORT_NAME against each seed's "
                             "landing/truth.json (e.g. another version's `cost-attribution run` output)")
    args = parser.parse_args(argv)
    if args.rerun:
        seeds = sorted(int(p.name.split("-")[1]) for p in Path(args.rerun).glob("seed-*"))
        args.first, args.seeds = (seeds[0], seeds[-1] - seeds[0] + 1) if seeds else (1, 0)
    if args.score:
        folder, name = Path(args.score[0]), args.score[1]
        rows = []
        for seed_dir in sorted(folder.glob("seed-*"), key=lambda p: int(p.name.split("-")[1])):
            if (seed_dir / name).exists():
                truth = json.loads((seed_dir / "landing" / "truth.json").read_text())
                rows += score(int(seed_dir.name.split("-")[1]), truth, json.loads((seed_dir / name).read_text()), [], 0.0, args.world)
        with open(args.out, "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    elif args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        if args.seeds_of:
            other = {json.loads(line)["seed"] for line in Path(args.seeds_of).read_text().splitlines() if line.strip()}
            rows = [r for r in rows if r["seed"] in other]
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        rows = []
        kept = args.keep or args.rerun
        workdir = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="accuracy-"))
        workdir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("DAGSTER_HOME", str(workdir / "dagster_home"))
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        try:
            for seed in range(args.first, args.first + args.seeds):
                if args.rerun and not (workdir / f"seed-{seed}" / "warehouse.duckdb").exists():
                    continue
                seed_rows = run_seed(seed, workdir, keep=bool(args.keep), rerun=bool(args.rerun), world=args.world)
                rows += seed_rows
                with open(args.out, "a") as out:
                    for row in seed_rows:
                        out.write(json.dumps(row) + "\n")
                print(f"seed {seed}: {seed_rows[0]['seconds']:.0f} s", file=sys.stderr, flush=True)
        finally:
            if not kept:
                shutil.rmtree(workdir, ignore_errors=True)
    for baseline in ("incremental", "bill"):
        print(table(rows, baseline))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
