"""Trace readers: every supported trace format -> one span table + one quarantine table.

    read_span_files(paths, dt) -> SpanBatch   # many files, duplicates removed across them
    read_span_file(path, dt) -> SpanBatch     # one file, duplicates removed within it
    stream_partition_file(path, dt, sink, chunk_size)  # one file in bounded chunks, not deduplicated

Each takes `sampling_floor` (AnalysisSettings.sampling_probability_floor): a span sampled
with a lower probability is quarantined as sampling_probability_below_floor. A format
reader is `read(path, collector) -> (spans, quarantine)`; its SpanCollector carries the
day, the file's name, the chunk size, the sink and the floor.

Formats come from the one registry, ``cost_attribution.formats`` (Parquet by its magic
bytes, OTLP protobuf by its suffix, case-insensitive; gzip by magic bytes); JSON files are
told apart by content (OTLP lines, Zipkin, Jaeger). Dirty records never
raise: each becomes a quarantine row whose reason is in QUARANTINE_REASONS.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from cost_attribution.formats import trace_format
from cost_attribution.ingest.readers.collector import DEFAULT_CHUNK_SIZE, ChunkSink, SpanCollector
from cost_attribution.ingest.readers.flat_parquet import read_flat_parquet_file
from cost_attribution.ingest.readers.json_files import read_json_file
from cost_attribution.ingest.readers.otlp_proto import read_otlp_proto_file
from cost_attribution.ingest.readers.raw_spans import INTERNAL_COLUMNS, split_duplicates, split_outside_partition
from cost_attribution.ingest.spans import DEFAULT_SAMPLING_PROBABILITY_FLOOR, QUARANTINE_SCHEMA, SPAN_SCHEMA, SpanBatch

__all__ = ["read_span_file", "read_span_files", "stream_partition_file"]

_READERS = {"json": read_json_file, "otlp_proto": read_otlp_proto_file, "parquet": read_flat_parquet_file}


def _read_one(
    path: Path,
    dt: datetime.date,
    sink: ChunkSink | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(spans with INTERNAL_COLUMNS, quarantine) for one file, not yet deduplicated; with a
    sink, they go to it chunk by chunk and the frames returned are empty."""
    collector = SpanCollector(dt, str(path), chunk_size, sink, sampling_floor)
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        collector.reject("unreadable_files", f"cannot open file: {error}", None, "")
        return collector.finish()
    fmt = trace_format(path)
    # Files no reader takes are listed by the landing zone; one handed over anyway is JSON.
    return _READERS[fmt.name if fmt else "json"](path, collector)


def _deduplicated(spans: pl.DataFrame, quarantines: list[pl.DataFrame]) -> SpanBatch:
    kept, duplicates = split_duplicates(spans)
    quarantine = pl.concat([*quarantines, duplicates]) if quarantines else duplicates
    return SpanBatch(kept.drop(INTERNAL_COLUMNS).cast(SPAN_SCHEMA), quarantine.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA))


def read_span_file(path: Path, dt: datetime.date, sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR) -> SpanBatch:
    """Read one trace file of any supported format; duplicates removed within the file."""
    spans, quarantine = _read_one(Path(path), dt, sampling_floor=sampling_floor)
    return _deduplicated(spans, [quarantine])


def read_partition_file(
    path: Path, dt: datetime.date, sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One file of the dt= partition: its spans (INTERNAL_COLUMNS kept) and quarantine,
    spans starting outside the partition's day quarantined as timestamp_outside_partition."""
    spans, quarantine = _read_one(Path(path), dt, sampling_floor=sampling_floor)
    spans, outside = split_outside_partition(spans, dt)
    return spans, pl.concat([quarantine, outside])


def stream_partition_file(
    path: Path,
    dt: datetime.date,
    sink: ChunkSink,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> None:
    """read_partition_file in chunks of at most about chunk_size spans: sink(spans, quarantine)
    per chunk, in file order; memory is bounded by chunk_size, not by the file (a Parquet
    file's chunk is the file). Cross-file dedupe is the caller's (ingest.span_stream)."""

    def partition_sink(spans: pl.DataFrame, quarantine: pl.DataFrame) -> None:
        inside, outside = split_outside_partition(spans, dt)
        sink(inside, pl.concat([quarantine, outside]) if outside.height else quarantine)

    _read_one(Path(path), dt, partition_sink, chunk_size, sampling_floor)


def read_span_files(
    paths: Sequence[Path],
    dt: datetime.date,
    partition: bool = False,
    sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
) -> SpanBatch:
    """Read trace files; a span seen again with the same (trace_id, span_id, service,
    kind), in the same or another file, is quarantined as duplicate_spans and the first
    one kept (files in the order given). partition=True: the files are the landing zone's
    dt= folder, so spans must start within its day (see read_partition_file)."""
    span_frames: list[pl.DataFrame] = []
    quarantine_frames: list[pl.DataFrame] = []
    for path in paths:
        spans, quarantine = (
            read_partition_file(path, dt, sampling_floor)
            if partition
            else _read_one(Path(path), dt, sampling_floor=sampling_floor)
        )
        span_frames.append(spans)
        quarantine_frames.append(quarantine)
    if not span_frames:
        return SpanBatch(pl.DataFrame(schema=SPAN_SCHEMA), pl.DataFrame(schema=QUARANTINE_SCHEMA))
    return _deduplicated(pl.concat(span_frames), quarantine_frames)
