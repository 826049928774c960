"""JSON trace files: OTLP JSON lines (collector file exporter), a single pretty-printed
OTLP/Zipkin/Jaeger document, gzip or plain, recognised by content rather than name.

Line-oriented files are streamed so a large day file is never held in memory; a line that
is not JSON becomes a malformed_lines row and the rest of the file still ingests. One OTLP
document bigger than WHOLE_DOCUMENT_LIMIT (a single huge line, or a big pretty-printed
file) is parsed incrementally (ijson, yajl2_c backend) one resourceSpans entry at a time
instead of whole (a 442 MB line took 7.2 GB parsed whole): memory is then bounded by the
chunk size and the largest resourceSpans entry, not by the file.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import ijson
import orjson
import polars as pl

from cost_attribution.formats import is_gzip
from cost_attribution.ingest.readers.collector import (
    SpanCollector,
    cyclic_gc_paused,
    json_record_text,
)
from cost_attribution.ingest.readers.jaeger import collect_jaeger_traces, jaeger_traces
from cost_attribution.ingest.readers.otlp_json import collect_otlp_request, is_otlp_request
from cost_attribution.ingest.readers.zipkin import collect_zipkin_spans, looks_like_zipkin_spans

# A file at most this big (decompressed) is parsed whole or line by line as before; a
# bigger one-document OTLP file is streamed (parsed whole, JSON takes ~16x its size).
WHOLE_DOCUMENT_LIMIT = 32 << 20
_OTLP_DOCUMENT_START = re.compile(rb'\s*\{\s*"(resourceSpans|resource_spans)"\s*:\s*\[')
_UNKNOWN_SHAPE = "JSON is neither an OTLP ExportTraceServiceRequest, a Zipkin v2 span array nor Jaeger traces"
_NOT_PARSED = object()


class GzipLines:
    """Lines of a gzip file (all members), decompressed in 1 MB blocks.

    Unlike iterating gzip.open(), a file cut short (a collector killed mid-write) yields
    every complete line and then the partial last one before raising EOFError, so only
    the cut line is lost; block-wise decompression also costs less CPU per line.
    """

    BLOCK = 1 << 20

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._lines = self._iter_lines()

    def _blocks(self) -> Iterator[bytes]:
        decompressor = None
        while True:
            compressed = self._file.read(self.BLOCK)
            if not compressed:
                if decompressor is not None and not decompressor.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                return
            while compressed:
                if decompressor is None or decompressor.eof:
                    decompressor = zlib.decompressobj(wbits=31)  # next gzip member
                block = decompressor.decompress(compressed)
                if block:
                    yield block
                compressed = decompressor.unused_data if decompressor.eof else b""

    def _iter_lines(self) -> Iterator[bytes]:
        pending = b""
        try:
            for block in self._blocks():
                data = pending + block if pending else block
                start = 0
                while (end := data.find(b"\n", start)) >= 0:
                    yield data[start : end + 1]
                    start = end + 1
                pending = data[start:]
        except EOFError:
            if pending:
                yield pending
            raise
        if pending:
            yield pending

    def __iter__(self) -> Iterator[bytes]:
        return self._lines

    def read(self) -> bytes:
        return b"".join(self._lines)

    def __enter__(self) -> GzipLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()


def open_decompressed(path: Path) -> IO[bytes] | GzipLines:
    if is_gzip(path):
        return GzipLines(path)
    return open(path, "rb", buffering=1 << 20)


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _NOT_PARSED


def _collect_document(document: Any, line_no: int | None, collector: SpanCollector) -> bool:
    """Route one parsed document to its format; False if the shape is not recognised."""
    if is_otlp_request(document):
        collect_otlp_request(document, line_no, collector)
        return True
    traces = jaeger_traces(document)
    if traces is not None:
        collect_jaeger_traces(traces, line_no, collector)
        return True
    if looks_like_zipkin_spans(document):
        collect_zipkin_spans(document, line_no, collector)
        return True
    return isinstance(document, list) and not document  # an empty span array is valid


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


class _LineReader:
    def __init__(self, collector: SpanCollector):
        self.collector = collector
        self.last_line = 0
        self.parsed_lines = 0

    def take(self, line_no: int, line: bytes, document: Any = _NOT_PARSED) -> None:
        self.last_line = line_no
        if document is _NOT_PARSED:
            if not line.strip():
                return
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                self.collector.reject("malformed_lines", f"invalid JSON: {error}", line_no, _text(line))
                return
        self.parsed_lines += 1
        self.collector.documents[line_no] = line
        if not _collect_document(document, line_no, self.collector):
            self.collector.reject("malformed_lines", _UNKNOWN_SHAPE, line_no, _text(line))
        self.collector.flush_if_full()


def _read_stream(stream: IO[bytes] | GzipLines, collector: SpanCollector, reader: _LineReader) -> None:
    lines = enumerate(stream, 1)
    # Decide between JSON lines and one pretty-printed document from the first two
    # non-empty lines: if either parses alone, the file is line-oriented.
    head: list[tuple[int, bytes, Any]] = []
    consumed: list[bytes] = []  # every line read so far, blank ones included
    for line_no, line in lines:
        consumed.append(line)
        if not line.strip():
            continue
        head.append((line_no, line, _parse(line)))
        if head[-1][2] is not _NOT_PARSED or len(head) == 2:
            break
    if any(document is not _NOT_PARSED for _, _, document in head):
        for line_no, line, document in head:
            reader.take(line_no, line, document)
        for line_no, line in lines:
            reader.take(line_no, line)
        return
    if not head:
        return  # empty file: nothing to ingest, nothing lost
    rest = stream.read()
    whole = b"".join(consumed) + rest
    document = _parse(whole)
    if document is not _NOT_PARSED:
        collector.documents[None] = whole
        if not _collect_document(document, None, collector):
            collector.reject("unreadable_files", _UNKNOWN_SHAPE, None, _text(whole))
        collector.flush_if_full()
        return
    all_lines = whole.splitlines(keepends=True)
    standalone = any(_parse(line) is not _NOT_PARSED for line in all_lines[len(consumed):] if line.strip())
    if head[0][1].strip() in (b"{", b"[") and not standalone:
        # A pretty-printed document that does not parse (e.g. cut off): its lines mean
        # nothing on their own, so report the file once instead of every line. (When
        # later lines parse on their own, it is a JSON-lines file with broken lines
        # such as a lone `{`: only those lines are lost.)
        try:
            orjson.loads(whole)
        except orjson.JSONDecodeError as error:
            collector.reject("unreadable_files", f"JSON document does not parse: {error}", None, _text(whole))
        return
    for line_no, line in enumerate(whole.splitlines(keepends=True), 1):
        reader.take(line_no, line)


def _open_raw_decompressed(path: Path) -> IO[bytes]:
    if is_gzip(path):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def _streamed_otlp_key(path: Path) -> tuple[str, int | None] | None:
    """(top-level key "resourceSpans"/"resource_spans", line number) when the file is one OTLP
    document bigger than WHOLE_DOCUMENT_LIMIT bytes decompressed (its first line longer,
    or a pretty-printed document opening with a lone `{`); the line number is the one
    line's (as the line reader numbers it), None for a pretty-printed document, as when
    parsed whole. None otherwise (JSON lines,
    small or other files), and on any read error (the line reader then reports it)."""
    limit = WHOLE_DOCUMENT_LIMIT
    try:
        with _open_raw_decompressed(path) as stream:
            head = stream.read(1 << 16)
            match = _OTLP_DOCUMENT_START.match(head)
            if match is None:
                return None
            brace = head.index(b"{")
            newline = head.find(b"\n", brace)  # the end of the document's first line
            read = len(head)
            while read <= limit:
                block = stream.read(1 << 20)
                if not block:
                    return None  # small enough to parse whole
                if newline < 0 and (found := block.find(b"\n")) >= 0:
                    newline = read + found
                read += len(block)
    except (OSError, EOFError, zlib.error):
        return None
    key = match.group(1).decode()
    if newline < 0 or newline - brace > limit:
        return key, 1 + head.count(b"\n", 0, brace)  # one huge line
    if head[brace:newline].strip() == b"{":
        return key, None
    return None


class _UntilNewline:
    """The stream up to and including its next newline (what ijson reads for one huge
    line); the bytes read past it are kept in `rest` for the line reader."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.rest = b""
        self.done = False

    def read(self, size: int = -1) -> bytes:
        if self.done or size == 0:  # ijson probes the type with read(0)
            return b""
        data = self.stream.read(size if size > 0 else 1 << 20)
        end = data.find(b"\n")
        if not data or end >= 0:
            self.done = True
            self.rest = data[end + 1 :] if end >= 0 else b""
            return data[: end + 1] if end >= 0 else data
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _lines_after(rest: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    pending = rest
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        data = pending + block
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield data[start : end + 1]
            start = end + 1
        pending = data[start:]
    while (end := pending.find(b"\n")) >= 0:
        yield pending[: end + 1]
        pending = pending[end + 1 :]
    if pending:
        yield pending


def _stream_otlp_document(path: Path, key: str, line_no: int | None, collector: SpanCollector, reader: _LineReader) -> None:
    """Collect one big OTLP document entry by entry; the entries of the current chunk are
    kept as JSON text (collector.documents) to print rejected spans. A huge line (line_no
    given) is followed by the file's other lines, read as JSON lines."""
    texts: list[bytes] = []
    offset = entries = 0
    with _open_raw_decompressed(path) as stream:
        source = _UntilNewline(stream) if line_no is not None else stream
        try:
            for resource_span in ijson.items(source, f"{key}.item", use_float=True, buf_size=1 << 20):
                if line_no not in collector.documents:  # a new chunk
                    texts, offset = [], 0
                    collector.documents[line_no] = texts
                texts.append(json_record_text(resource_span).encode())
                offset = collect_otlp_request({key: [resource_span]}, line_no, collector, offset)
                entries += 1
                collector.flush_if_full()
        except ijson.JSONError as error:
            where = f" after {entries} resourceSpans entries; later content is lost" if entries else ""
            if line_no is None:
                collector.reject("unreadable_files", f"JSON document does not parse{where}: {error}", None, "")
            else:
                collector.reject("malformed_lines", f"invalid JSON{where}: {error}", line_no, "")
                source.drain()
        if line_no is None:
            return
        reader.last_line = line_no
        collector.flush()  # the line's document texts are no longer needed
        for number, line in enumerate(_lines_after(source.rest, stream), line_no + 1):
            reader.take(number, line)


def read_json_file(path: Path, collector: SpanCollector) -> tuple[pl.DataFrame, pl.DataFrame]:
    reader = _LineReader(collector)
    with cyclic_gc_paused():
        try:
            streamed = _streamed_otlp_key(path)
            if streamed is not None:
                _stream_otlp_document(path, *streamed, collector, reader)
            else:
                with open_decompressed(path) as stream:
                    _read_stream(stream, collector, reader)
        except (OSError, EOFError, zlib.error) as error:
            where = f" after line {reader.last_line}; later content is lost" if reader.last_line else ""
            collector.reject("unreadable_files", f"cannot read or decompress file{where}: {error}", None, "")
        return collector.finish()
