"""Benchmark the trace readers against DuckDB's bare readers on the same files.

    python bench/bench_ingest.py [--spans N] [--out results.md]

Builds, in a temporary directory, an OTLP JSON lines file (plain and .gz) and a flat span
Parquet file of N synthetic spans shaped like collector output (several services per
request, HTTP/RPC attributes, three sampling conventions mixed in one file), then times
`read_span_files` on each and DuckDB reading + unnesting the same bytes. DuckDB only
parses; ours also validates, normalises ids/kinds/sampling and deduplicates, so the
ratio is the price of that work.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import orjson
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cost_attribution.ingest.readers import read_span_files  # noqa: E402

DT = datetime.date(2026, 5, 28)
CALL_GRAPH = {  # caller -> callees; each trace walks it from the gateway
    "api-gateway": ["auth-svc", "profile-svc", "catalog-svc"],
    "catalog-svc": ["metadata-svc", "pricing-svc"],
    "profile-svc": [],
    "auth-svc": [],
    "metadata-svc": [],
    "pricing-svc": [],
}
DOMAINS = [("tv", {"attr": 0.015}), ("mobile", {"tracestate": "ot=th:fd70a3d70a3d7"}), ("web", {})]  # 3 conventions
TRACES_PER_REQUEST = 50


def _attr(key: str, value) -> dict:
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def _trace_spans(rng: random.Random, t0: int) -> dict[str, list[dict]]:
    """One trace: SERVER span per service visited, CLIENT span per call; by service."""
    trace_id = f"{rng.getrandbits(128):032x}"
    domain, sampling = rng.choice(DOMAINS)
    member = f"m{rng.getrandbits(44):011x}"
    by_service: dict[str, list[dict]] = {}

    def common(extra: list[dict]) -> list[dict]:
        return extra + ([_attr("sampling.probability", sampling["attr"])] if "attr" in sampling else [])

    def visit(service: str, parent: str, start: int, is_root: bool) -> None:
        server_id = f"{rng.getrandbits(64):016x}"
        attributes = [_attr("http.request.method", "GET"), _attr("http.route", f"/{service}/v1"), _attr("http.response.status_code", 200)]
        if is_root:
            attributes += [_attr("enduser.id", member), _attr("client.domain", domain)]
        server = {"traceId": trace_id, "spanId": server_id, "parentSpanId": parent, "name": f"GET /{service}/v1", "kind": 2,
                  "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + rng.randint(1_000_000, 30_000_000)),
                  "attributes": common(attributes), "status": {"code": 0}}
        if "tracestate" in sampling:
            server["traceState"] = sampling["tracestate"]
        by_service.setdefault(service, []).append(server)
        for callee in CALL_GRAPH[service]:
            client_id = f"{rng.getrandbits(64):016x}"
            client = {"traceId": trace_id, "spanId": client_id, "parentSpanId": server_id, "name": f"call {callee}", "kind": 3,
                      "startTimeUnixNano": str(start + 1_000_000), "endTimeUnixNano": str(start + 9_000_000),
                      "attributes": common([_attr("peer.service", callee), _attr("server.address", f"{callee}.internal")]),
                      "status": {"code": 0}}
            if "tracestate" in sampling:
                client["traceState"] = sampling["tracestate"]
            by_service[service].append(client)
            visit(callee, client_id, start + 2_000_000, False)

    visit("api-gateway", "", t0, True)
    return by_service


def build_otlp_json(path: Path, n_spans: int, seed: int = 7) -> int:
    """Write collector-style OTLP JSON lines with about n_spans spans; returns the count."""
    rng = random.Random(seed)
    t0 = 1_779_926_400_000_000_000
    written = 0
    with open(path, "wb") as out:
        while written < n_spans:
            by_service: dict[str, list[dict]] = {}
            for _ in range(TRACES_PER_REQUEST):
                for service, spans in _trace_spans(rng, t0 + rng.randint(0, 86_399_000_000_000)).items():
                    by_service.setdefault(service, []).extend(spans)
            request = {"resourceSpans": [
                {"resource": {"attributes": [_attr("service.name", s), _attr("deployment.environment", "prod")]},
                 "scopeSpans": [{"scope": {"name": "io.opentelemetry.server", "version": "1.0"}, "spans": spans}]}
                for s, spans in by_service.items()]}
            out.write(orjson.dumps(request) + b"\n")
            written += sum(len(s) for s in by_service.values())
    return written


def build_flat_parquet(path: Path, n_spans: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    services = np.array(list(CALL_GRAPH))
    trace_ids = [f"{x:016x}{y:016x}" for x, y in rng.integers(0, 2**63, size=(n_spans // 8 + 1, 2))]
    starts = 1_779_926_400_000_000_000 + rng.integers(0, 86_399_000_000_000, size=n_spans)
    kinds = np.where(rng.random(n_spans) < 0.5, "SERVER", "CLIENT")
    pl.DataFrame({
        "trace_id": np.repeat(np.array(trace_ids), 8)[:n_spans],
        "span_id": [f"{x:016x}" for x in rng.integers(1, 2**63, size=n_spans)],
        "parent_span_id": [f"{x:016x}" for x in rng.integers(1, 2**63, size=n_spans)],
        "service": services[rng.integers(0, len(services), size=n_spans)],
        "kind": kinds,
        "start_unix_nano": starts,
        "end_unix_nano": starts + rng.integers(1_000_000, 30_000_000, size=n_spans),
        "peer_service": pl.Series(services[rng.integers(0, len(services), size=n_spans)].tolist()).zip_with(
            pl.Series(kinds == "CLIENT"), pl.Series([None] * n_spans, dtype=pl.Utf8)),
        "member_id": [f"m{x:011x}" for x in rng.integers(0, 2**44, size=n_spans)],
        "sampling_probability": rng.choice([0.015, 0.01, 1.0], size=n_spans),
    }).write_parquet(path)


def _timed(fn) -> tuple[float, float, object]:
    """(wall s, process CPU s over all threads, result): CPU time stays meaningful when
    other jobs share the machine; wall time is what a user waits."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def _duckdb_json(path: Path) -> int:
    # Parse + unnest to one row per span with the fields we extract (DuckDB uses all cores).
    con = duckdb.connect()
    query = f"""
        SELECT count(*), count(DISTINCT sp.kind) FROM (
          SELECT unnest(ss.spans) AS sp, rs.resource AS resource FROM (
            SELECT unnest(rs.scopeSpans) AS ss, rs FROM (
              SELECT unnest(resourceSpans) AS rs
              FROM read_json('{path}', format='newline_delimited', maximum_object_size=1073741824))))
    """
    return con.sql(query).fetchall()[0][0]


def _duckdb_parquet(path: Path) -> int:
    con = duckdb.connect()
    return con.sql(f"SELECT * FROM read_parquet('{path}')").pl().height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp_dir = Path(tmp)
        plain = tmp_dir / "traces.json"
        n_json = build_otlp_json(plain, args.spans)
        gz = tmp_dir / "traces.json.gz"
        gz.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
        parquet = tmp_dir / "traces.parquet"
        build_flat_parquet(parquet, args.spans)
        plain_mb = plain.stat().st_size / 1e6
        rows = []
        for label, path, n_expected, duck in [
            ("OTLP JSON", plain, n_json, _duckdb_json),
            ("OTLP JSON .gz", gz, n_json, _duckdb_json),
            ("flat Parquet", parquet, args.spans, _duckdb_parquet),
        ]:
            ours_s, ours_cpu, batch = _timed(lambda: read_span_files([path], DT))
            assert batch.spans.height == n_expected, (label, batch.spans.height, n_expected, batch.quarantine["reason"].value_counts())
            del batch
            duck_s, duck_cpu, duck_n = _timed(lambda: duck(path))
            assert duck_n == n_expected, (label, duck_n)
            size_mb = path.stat().st_size / 1e6
            rows.append((label, n_expected, size_mb, ours_s, ours_cpu, duck_s, duck_cpu))
    lines = [
        f"Trace ingest benchmark: {args.spans:,} spans requested, OTLP JSON {plain_mb:.0f} MB uncompressed, "
        f"{os.cpu_count()} CPUs, load average before the run {load_before:.1f}.",
        "MB/s is over the file as stored (gzip: compressed bytes). CPU s sums all threads (DuckDB is multi-threaded, ours is not).",
        "",
        "| file | spans | file MB | ours wall s | ours CPU s | ours spans/s (wall) | ours MB/s | duckdb wall s | duckdb CPU s "
        "| duckdb spans/s (wall) | ours/duckdb wall | ours/duckdb CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, n, size_mb, ours_s, ours_cpu, duck_s, duck_cpu in rows:
        lines.append(f"| {label} | {n:,} | {size_mb:.1f} | {ours_s:.2f} | {ours_cpu:.2f} | {n / ours_s:,.0f} | {size_mb / ours_s:.1f} | "
                     f"{duck_s:.2f} | {duck_cpu:.2f} | {n / duck_s:,.0f} | {ours_s / duck_s:.2f}x | {ours_cpu / duck_cpu:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
