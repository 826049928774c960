"""Writes one trace day into traces/dt=YYYY-MM-DD/: OTLP JSON lines and/or flat Parquet.

With both formats the day's traces are split between them by line batch (odd batches
go to Parquet), so a mixed landing zone holds every span exactly once.

Dirty records (per day, in part 0): duplicated spans are real spans delivered twice,
so after de-duplication the valid data is intact; negative-duration, missing
service.name and truncated records are extra synthetic spans outside the valid data.
"""

from __future__ import annotations

import datetime
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.seasonality import day_start_ns, rng_for
from cost_attribution.simulator.span_frames import FLAT_COLUMNS, flat_span_frame, hex_bytes, otlp_lines
from cost_attribution.simulator.spans import DaySpans


@dataclass
class DayFileStats:
    valid_spans: int
    malformed_lines: int = 0
    duplicate_spans: int = 0
    negative_duration_spans: int = 0
    missing_service_name_spans: int = 0


def write_trace_day(out_dir: Path, day: datetime.date, spans: DaySpans, config: WorldConfig,
                    services: tuple[str, ...], samplers: Samplers, population: Population) -> DayFileStats:
    rng = rng_for(config.seed, f"trace-files-{day.isoformat()}")
    day_dir = out_dir / "traces" / f"dt={day.isoformat()}"
    day_dir.mkdir(parents=True, exist_ok=True)
    stats = DayFileStats(valid_spans=spans.n_spans)
    counts = config.dirty_counts
    n_dup = min(counts.duplicate_spans, spans.n_spans) if config.dirty_records else 0
    duplicated = rng.choice(spans.n_spans, size=n_dup, replace=False) if n_dup else np.empty(0, np.int64)

    rows, batch = _ordered_rows(spans, config, exclude=duplicated)
    write_json = "otlp_json" in config.span_formats
    write_parquet = "parquet" in config.span_formats
    if not (write_json or write_parquet):
        raise ValueError(f"span_formats must include otlp_json or parquet, got {config.span_formats}")
    to_parquet = (batch % 2 == 1) if (write_json and write_parquet) else np.full(len(rows), write_parquet)

    def frame(selected: np.ndarray) -> pl.DataFrame:
        return flat_span_frame(spans, selected, services, samplers, population)

    dirty = _DirtyRecords(rng, day, frame(duplicated)) if config.dirty_records else None
    if write_json:
        json_rows, json_batch = rows[~to_parquet], batch[~to_parquet]
        for part, (lo, hi) in enumerate(_parts(len(json_rows), config.spans_per_part_file)):
            lines = otlp_lines(frame(json_rows[lo:hi]), json_batch[lo:hi])
            if part == 0 and dirty is not None:
                lines = dirty.insert_into_lines(lines, counts, stats)
            _write_json_part(day_dir, part, lines, config.otlp_compression)
    if write_parquet:
        pq_rows = rows[to_parquet]
        for part, (lo, hi) in enumerate(_parts(len(pq_rows), config.spans_per_part_file)):
            flat = frame(pq_rows[lo:hi]).select(FLAT_COLUMNS)
            if part == 0 and dirty is not None and not write_json:
                flat = dirty.append_to_flat(flat, counts, stats)
            flat.write_parquet(day_dir / f"part-{part:04d}.parquet", compression="zstd")
    return stats


def _ordered_rows(spans: DaySpans, config: WorldConfig, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Span rows in file order (batch, service, trace, start) and each row's batch id.

    A batch holds whole traces in root-time order, about spans_per_line spans, like a
    collector flushing its queue.
    """
    n_traces = len(spans.trace_start)
    spans_per_trace = max(spans.n_spans / max(n_traces, 1), 1.0)
    traces_per_batch = max(1, round(config.spans_per_line / spans_per_trace))
    trace_rank = np.empty(n_traces, dtype=np.int64)
    trace_rank[np.argsort(spans.trace_start, kind="stable")] = np.arange(n_traces)
    keep = np.ones(spans.n_spans, dtype=bool)
    keep[exclude] = False
    rows = np.flatnonzero(keep)
    rank = trace_rank[spans.trace[rows]]
    batch = rank // traces_per_batch
    order = np.lexsort((spans.start[rows], rank, spans.service[rows], batch))
    return rows[order], batch[order]


def _parts(n_rows: int, per_part: int) -> list[tuple[int, int]]:
    if n_rows == 0:
        return [(0, 0)]
    return [(lo, min(lo + per_part, n_rows)) for lo in range(0, n_rows, per_part)]


def _write_json_part(day_dir: Path, part: int, lines: pl.Series, compression: str) -> None:
    if compression == "gzip":
        # mtime=0 keeps the bytes a pure function of the seed.
        fh = gzip.GzipFile(day_dir / f"part-{part:04d}.json.gz", "wb", compresslevel=1, mtime=0)
    elif compression == "none":
        fh = open(day_dir / f"part-{part:04d}.json", "wb")
    else:
        raise ValueError(f"otlp_compression must be 'gzip' or 'none', got {compression!r}")
    # Line by line: a benchmark part is ~0.5 GB of text, never joined into one string.
    with fh:
        for line in lines:
            fh.write(line.encode())
            fh.write(b"\n")


class _DirtyRecords:
    """Builds the day's dirty records and records their counts into DayFileStats."""

    def __init__(self, rng: np.random.Generator, day: datetime.date, duplicated: pl.DataFrame):
        self.rng = rng
        self.day_start = day_start_ns(day)
        self.duplicated = duplicated

    def _synthetic(self, n: int, negative: bool, service: str | None) -> pl.DataFrame:
        start = self.day_start + self.rng.integers(0, 86_400 * 10**9, size=n)
        dur = self.rng.integers(1_000_000, 50_000_000, size=n)
        frame = pl.DataFrame({
            "trace_id": hex_bytes(np.frombuffer(self.rng.bytes(16 * n), np.uint8).reshape(n, 16)),
            "span_id": hex_bytes(np.frombuffer(self.rng.bytes(8 * n), np.uint8).reshape(n, 8)),
            "parent_span_id": pl.Series([None] * n, dtype=pl.String),
            "service": pl.Series([service] * n, dtype=pl.String),
            "kind": ["SERVER"] * n,
            "start_unix_nano": start + (dur if negative else 0),
            "end_unix_nano": start + (0 if negative else dur),
            "peer_service": pl.Series([None] * n, dtype=pl.String),
            "member_id": pl.Series([None] * n, dtype=pl.String),
            "sampling_probability": [1.0] * n,
            "_convention": ["attribute"] * n,
            "_tracestate": [""] * n,
            "_client_domain": [""] * n,
        })
        return frame

    def _bad_frames(self, counts) -> tuple[pl.DataFrame, pl.DataFrame]:
        negative = self._synthetic(counts.negative_duration_spans, negative=True, service="api-gateway")
        unnamed = self._synthetic(counts.missing_service_name_spans, negative=False, service=None)
        return negative, unnamed

    def insert_into_lines(self, lines: pl.Series, counts, stats: DayFileStats) -> pl.Series:
        negative, unnamed = self._bad_frames(counts)
        extra: list[str] = []
        for frame in (self.duplicated, negative, unnamed):
            if frame.height:
                single = otlp_lines(frame, np.arange(frame.height)).to_list()
                extra += single + (single if frame is self.duplicated else [])
        truncated = otlp_lines(self._synthetic(counts.truncated_lines, False, "api-gateway"),
                               np.arange(counts.truncated_lines)).to_list()
        extra += [line[: len(line) // 2] for line in truncated]
        stats.duplicate_spans += self.duplicated.height
        stats.negative_duration_spans += negative.height
        stats.missing_service_name_spans += unnamed.height
        stats.malformed_lines += len(truncated)
        merged = lines.to_list()
        for line in extra:
            merged.insert(int(self.rng.integers(0, len(merged) + 1)), line)
        return pl.Series("line", merged, dtype=pl.String)

    def append_to_flat(self, flat: pl.DataFrame, counts, stats: DayFileStats) -> pl.DataFrame:
        negative, unnamed = self._bad_frames(counts)
        stats.duplicate_spans += self.duplicated.height
        stats.negative_duration_spans += negative.height
        stats.missing_service_name_spans += unnamed.height
        # Parquet has no lines to truncate: malformed_lines stays 0 for a Parquet-only day.
        extra = [f.select(FLAT_COLUMNS) for f in (self.duplicated, self.duplicated, negative, unnamed)]
        # Scatter the dirty rows among the valid ones (no full shuffle of a large part).
        extra_rows = pl.concat(extra, how="vertical_relaxed")
        cuts = np.sort(self.rng.integers(0, flat.height + 1, size=extra_rows.height))
        pieces, previous = [], 0
        for i, cut in enumerate(cuts):
            pieces += [flat.slice(previous, cut - previous), extra_rows.slice(i, 1)]
            previous = cut
        pieces.append(flat.slice(previous))
        return pl.concat(pieces, how="vertical_relaxed")
