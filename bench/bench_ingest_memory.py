"""Peak memory and time of a day's OTLP JSON ingest into the warehouse, side by side with DuckDB.

    python bench/bench_ingest_memory.py --spans 1000000 [--files 1] [--single-line] [--before /work/main] [--out r.md]

Builds an OTLP JSON day of about N spans in a temporary directory (bench_ingest's
collector-shaped requests; `--files K` splits it into K files; `--single-line` writes the
whole day as ONE ExportTraceServiceRequest on one line), then runs, each in its own
process under /usr/bin/time -v (wall, user+sys CPU, peak RSS of the process):

  * ours: `ingest_span_day` (what the raw_spans asset runs), into a fresh DuckDB file
    with the deployed memory_limit (environment.memory_limit()) and the default chunk size;
  * before (with --before <checkout>): that checkout's raw_spans path for a JSON day,
    `read_span_files(partition=True)` + `replace_rows`, into the same kind of file;
  * floor: DuckDB alone parsing the same files (read_json + unnest to one row per span).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
# A worker imports this module with the measured checkout first on sys.path: nothing here
# may import cost_attribution before it (bench.bench_ingest does, so it is imported late).


def _worker(mode: str, files: list[Path], db: Path) -> None:
    import duckdb

    from bench.bench_ingest import DT, _duckdb_json

    if mode == "floor":
        print(sum(_duckdb_json(path) for path in files))
        return
    from cost_attribution import environment

    conn = duckdb.connect(str(db), config={"memory_limit": environment.memory_limit()})
    if mode == "ours":
        from cost_attribution.ingest.span_stream import ingest_span_day

        print(ingest_span_day(conn, files, DT)["spans"])
    else:
        from cost_attribution.ingest.readers import read_span_files
        from cost_attribution.warehouse import replace_rows

        batch = read_span_files(files, DT, partition=True)
        replace_rows(conn, "raw.spans", batch.spans, where={"dt": DT})
        replace_rows(conn, "raw.span_quarantine", batch.quarantine, where={"dt": DT})
        print(batch.spans.height)


def _measure(mode: str, repo: Path, files: list[Path], tmp: Path) -> dict:
    db = tmp / f"{mode}.duckdb"
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); sys.path.insert(1, {str(ROOT)!r}); "
            f"from bench.bench_ingest_memory import _worker; from pathlib import Path; "
            f"_worker({mode!r}, [Path(p) for p in {[str(f) for f in files]!r}], Path({str(db)!r}))")
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.*)", done.stderr).group(1).strip()

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall)))
    db.unlink(missing_ok=True)
    run = {"mode": mode, "spans": int(done.stdout.split()[-1]), "wall": seconds,
           "cpu": float(field("User time (seconds)")) + float(field("System time (seconds)")),
           "rss_gb": int(field("Maximum resident set size (kbytes)")) / 1024**2}
    print(run, file=sys.stderr, flush=True)
    return run


def _single_line(lines_file: Path, out: Path) -> None:
    """All requests of a JSON-lines file merged into one one-line request (streamed write)."""
    with open(lines_file, "rb") as source, open(out, "wb") as sink:
        sink.write(b'{"resourceSpans":[')
        first = True
        for line in source:
            for entry in orjson.loads(line)["resourceSpans"]:
                sink.write((b"" if first else b",") + orjson.dumps(entry))
                first = False
        sink.write(b"]}\n")


def _copies(path: Path, n_spans: int, copies: int) -> tuple[list[Path], int]:
    """`copies` copies of `path`, the trace ids of copy k starting with hex digit k (so no
    span repeats), as a day of several collector files; cheaper than generating them."""
    data = path.read_bytes()
    path.unlink()
    files = []
    for k in range(copies):
        copy = path.with_name(f"part-copy-{k:02d}.json")
        copy.write_bytes(re.sub(rb'("traceId":")[0-9a-f]', rb"\g<1>" + f"{k:x}".encode(), data))
        files.append(copy)
    return files, n_spans * copies


def main() -> None:
    from bench.bench_ingest import build_otlp_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--copies", type=int, default=1, help="day = one generated file + copies with other trace ids (<= 16; fast)")
    parser.add_argument("--single-line", action="store_true")
    parser.add_argument("--before", type=Path, default=None, help="checkout whose in-memory path is measured as 'before'")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_ingest_memory_") as tmp:
        tmp_dir = Path(tmp)
        day = tmp_dir / "dt=2026-05-28"
        day.mkdir()
        per_file = -(-args.spans // args.files)
        files, n_spans = [], 0
        for index in range(args.files):
            path = day / f"part-{index:04d}.json"
            n_spans += build_otlp_json(path, per_file, seed=7 + index)
            files.append(path)
        if args.copies > 1:
            files, n_spans = _copies(files[0], n_spans, args.copies)
        if args.single_line:
            single = day / "one-request.json"
            _single_line(files[0], single)
            for path in files:
                path.unlink()
            files = [single]
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        runs = [_measure("ours", ROOT, files, tmp_dir)]
        if args.before:
            runs.append(_measure("before", args.before, files, tmp_dir))
        if not args.skip_floor:
            runs.append(_measure("floor", ROOT, files, tmp_dir))
    kind = "one single-line request" if args.single_line else f"{len(files)} JSON-lines file(s)"
    lines = [
        f"OTLP JSON day: {n_spans:,} spans, {kind}, {size_mb:,.0f} MB; {os.cpu_count()} CPUs, load average before "
        f"{load_before:.1f}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "| run | spans written | wall s | CPU s | peak RSS GB |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"ours": "streamed (`ingest_span_day`)", "before": f"before (in-memory, {args.before})", "floor": "floor: DuckDB read_json + unnest"}
    for run in runs:
        lines.append(f"| {names[run['mode']]} | {run['spans']:,} | {run['wall']:.1f} | {run['cpu']:.1f} | {run['rss_gb']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
