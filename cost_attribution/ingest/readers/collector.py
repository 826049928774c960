"""Accumulates raw spans of one file, per source format, in bounded chunks.

Holding a large file's raw values (and source text for quarantine printing) would cost
gigabytes, so raw tuples are validated into polars frames every ``chunk_size`` spans
and released. With a ``sink``, each validated chunk (spans, quarantine) is handed to it
at once instead of being kept, so memory is bounded by ``chunk_size``, not by the file.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import polars as pl

from cost_attribution.ingest.readers.raw_spans import IdEncoding, QuarantineRow, finalize_spans, quarantine_frame
from cost_attribution.ingest.spans import DEFAULT_SAMPLING_PROBABILITY_FLOOR, QUARANTINE_SCHEMA, SPAN_SCHEMA

DEFAULT_CHUNK_SIZE = 200_000

# (spans with the internal location columns, quarantine) of one validated chunk.
ChunkSink = Callable[[pl.DataFrame, pl.DataFrame], None]


def json_record_text(record: Any) -> str:
    try:
        return orjson.dumps(record).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(record)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Parsing allocates millions of small acyclic objects, many alive until the chunk is
    flushed; the cyclic collector would rescan them again and again (measured on the
    44k-span sample-world file: 1.0 s -> 0.66 s with it paused), so pause it meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _record_itself(row: tuple, collector: SpanCollector) -> str:
    return json_record_text(row[-1])


class SourceFormat:
    """How ids are encoded in a format and how to print the record behind a raw row.

    record_text(row, collector): by default the row's last field is the record itself;
    formats that only keep a locator (OTLP JSON lines) look the record up instead.
    """

    def __init__(self, name: str, id_encoding: IdEncoding, record_text: Callable[[tuple, SpanCollector], str] = _record_itself):
        self.name = name
        self.id_encoding = id_encoding
        self.record_text = record_text


ZIPKIN_JSON = SourceFormat("zipkin_json", IdEncoding.SHORT_HEX)
JAEGER_JSON = SourceFormat("jaeger_json", IdEncoding.SHORT_HEX)


class SpanCollector:
    def __init__(
        self,
        dt: datetime.date,
        source_file: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        sink: ChunkSink | None = None,
        sampling_floor: float = DEFAULT_SAMPLING_PROBABILITY_FLOOR,
    ):
        self.dt = dt
        self.source_file = source_file
        self.chunk_size = chunk_size
        self.sink = sink
        self.sampling_floor = sampling_floor
        self.rejects: list[QuarantineRow] = []
        self._rows: dict[str, tuple[SourceFormat, list[tuple]]] = {}
        self._span_frames: list[pl.DataFrame] = []
        self._quarantine_frames: list[pl.DataFrame] = []
        # Source text of the documents (lines) of the current chunk, by line number (None
        # for a whole-file document), so raw rows can point into it instead of keeping
        # millions of parsed objects alive.
        self.documents: dict[int | None, bytes] = {}

    def rows_for(self, source_format: SourceFormat) -> list[tuple]:
        entry = self._rows.get(source_format.name)
        if entry is None:
            entry = self._rows[source_format.name] = (source_format, [])
        return entry[1]

    def reject(self, reason: str, detail: str, line_no: int | None, raw: str, trace_id: str | None = None, span_id: str | None = None) -> None:
        self.rejects.append(QuarantineRow(reason, detail, line_no, trace_id, span_id, raw))

    def flush_if_full(self) -> None:
        """Call between documents only: a flush also forgets the chunk's document texts."""
        pending = sum(len(rows) for _, rows in self._rows.values()) + (len(self.rejects) if self.sink else 0)
        if pending >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Validate everything collected so far (between documents only, as flush_if_full)."""
        for source_format, rows in self._rows.values():
            self._flush(source_format, rows)
        self.documents.clear()
        if self.rejects and self.sink is not None:
            self._emit(None, quarantine_frame(self.rejects, self.dt, self.source_file))
            self.rejects = []

    def _emit(self, spans: pl.DataFrame | None, quarantine: pl.DataFrame | None) -> None:
        if self.sink is not None:
            internal = SPAN_SCHEMA | {"_source_file": pl.Utf8, "_line_no": pl.Int64}
            self.sink(
                pl.DataFrame(schema=internal) if spans is None else spans,
                pl.DataFrame(schema=QUARANTINE_SCHEMA) if quarantine is None else quarantine,
            )
            return
        if spans is not None:
            self._span_frames.append(spans)
        if quarantine is not None and quarantine.height:
            self._quarantine_frames.append(quarantine)

    def _flush(self, source_format: SourceFormat, rows: list[tuple]) -> None:
        if not rows:
            return
        spans, quarantine = finalize_spans(
            rows, self.dt, self.source_file, source_format.id_encoding, lambda row: source_format.record_text(row, self),
            self.sampling_floor,
        )
        self._emit(spans, quarantine)
        rows.clear()

    def finish(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(spans with internal location columns, quarantine) for the whole file; with a
        sink, everything has gone to it and both frames are empty."""
        self.flush()
        if self.rejects:
            self._emit(None, quarantine_frame(self.rejects, self.dt, self.source_file))
            self.rejects = []
        internal = SPAN_SCHEMA | {"_source_file": pl.Utf8, "_line_no": pl.Int64}
        spans = pl.concat(self._span_frames) if self._span_frames else pl.DataFrame(schema=internal)
        quarantine = pl.concat(self._quarantine_frames) if self._quarantine_frames else pl.DataFrame(schema=QUARANTINE_SCHEMA)
        return spans, quarantine
