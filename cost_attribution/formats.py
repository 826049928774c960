"""The one registry of landing-zone file formats, and the inventory of a landing zone.

A trace file is recognised by its suffix, case-insensitively (`*.JSON.GZ` is OTLP JSON);
compression is recognised by magic bytes, not by name (a gzip stream named `.json` is
read as gzip, a `.json.gz` that is not gzip as plain text). Ingest, completeness and the
unread-files listing all ask this module, so a format is never known in one place and
unknown in another. Files no reader takes are listed as unread with the reason, and
paths never leave the landing zone (a symlink pointing outside it is not followed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
# Compression suffixes stripped before the format suffix is looked up; the bytes decide
# whether the content is really compressed.
COMPRESSION_SUFFIXES = (".gz", ".gzip")


@dataclass(frozen=True)
class TraceFormat:
    name: str  # the reader that takes it (ingest.readers)
    suffixes: tuple[str, ...]  # lower case, without a compression suffix
    magic: bytes | None = None  # content signature that wins over the suffix


TRACE_FORMATS = (
    TraceFormat("json", (".json", ".jsonl", ".ndjson")),  # OTLP JSON lines, OTLP/Zipkin/Jaeger documents
    TraceFormat("otlp_proto", (".pb", ".binpb", ".protobuf")),  # serialized ExportTraceServiceRequest
    TraceFormat("parquet", (".parquet",), PARQUET_MAGIC),  # flat spans
)
TABLE_SUFFIXES = (".csv", ".parquet")  # allocations, costs, usage_metrics, business_metrics
TABLE_FOLDERS = ("allocations", "costs", "usage_metrics", "business_metrics")
CATALOG_FILES = ("experiments.yaml", "services.yaml")
# Not inputs, never listed as unread: the simulator's ground truth and notes for people.
NOT_INPUTS = re.compile(r"^(truth\.json|readme(\..*)?)$", re.IGNORECASE)

DAY_DIR = re.compile(r"^dt=(.*)$")


def _format_suffix(name: str) -> str:
    lowered = name.lower()
    for compression in COMPRESSION_SUFFIXES:
        if lowered.endswith(compression):
            lowered = lowered[: -len(compression)]
            break
    return os.path.splitext(lowered)[1]


def read_magic(path: Path, n: int = 4) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(n)
    except OSError:
        return b""


def trace_format(path: Path) -> TraceFormat | None:
    """The format of a trace file, or None when no reader takes it."""
    magic = read_magic(path)
    for fmt in TRACE_FORMATS:
        if fmt.magic and magic.startswith(fmt.magic):
            return fmt
    suffix = _format_suffix(path.name)
    return next((fmt for fmt in TRACE_FORMATS if suffix in fmt.suffixes), None)


def is_table_file(path: Path) -> bool:
    return _format_suffix(path.name) in TABLE_SUFFIXES


def is_gzip(path: Path) -> bool:
    return read_magic(path, 2) == GZIP_MAGIC


def known_trace_suffixes() -> list[str]:
    return [s for fmt in TRACE_FORMATS for s in fmt.suffixes]


def parse_day_dir(name: str) -> dt.date | None:
    """`dt=YYYY-MM-DD` -> the date; None for any other name (also a non-date like dt=2026-13-45)."""
    match = DAY_DIR.match(name)
    if not match or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", match.group(1)):
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


@dataclass(frozen=True)
class Unread:
    path: Path
    why: str


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, stays inside `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def list_folder(root: Path, folder: Path, accepts, what: str) -> tuple[list[Path], list[Unread]]:
    """(files a reader takes, unread entries) of one landing-zone folder, sorted by name.

    accepts(path) -> None when a reader takes the file, else why not. Subfolders, symlinks
    out of the landing zone and files no reader takes are unread, with the reason."""
    if not folder.is_dir():
        return [], []
    if not inside(root, folder):
        return [], [Unread(folder, "symlink pointing outside the landing zone: not followed")]
    files, unread = [], []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or NOT_INPUTS.match(child.name):
            continue
        if not inside(root, child):
            unread.append(Unread(child, "symlink pointing outside the landing zone: not followed"))
        elif child.is_dir():
            unread.append(Unread(child, f"a folder inside {what}: not read (files belong directly in {what})"))
        elif not child.is_file():
            unread.append(Unread(child, "not a regular file"))
        elif (why := accepts(child)) is None:
            files.append(child)
        else:
            unread.append(Unread(child, why))
    return files, unread


def trace_reader_refusal(path: Path) -> str | None:
    if trace_format(path) is not None:
        return None
    return ("no trace reader takes this file name (known suffixes, any case, optionally .gz: "
            f"{', '.join(known_trace_suffixes())})")


def table_reader_refusal(path: Path) -> str | None:
    if is_table_file(path):
        return None
    return f"no table reader takes this file name (known suffixes, any case, optionally .gz: {', '.join(TABLE_SUFFIXES)})"


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def split_duplicate_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(first copy of each distinct content, [(later copy, the first copy)]) in the given
    order. The same bytes delivered twice under two names would double every row in them;
    only non-empty files of equal size are hashed."""
    by_size: dict[int, list[Path]] = {}
    for path in paths:
        size = path.stat().st_size
        if size:  # empty files hold no rows to count twice
            by_size.setdefault(size, []).append(path)
    first_by_digest: dict[str, Path] = {}
    duplicates: dict[Path, Path] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        for path in group:
            digest = file_digest(path)
            if digest in first_by_digest:
                duplicates[path] = first_by_digest[digest]
            else:
                first_by_digest[digest] = path
    unique = [p for p in paths if p not in duplicates]
    return unique, [(p, duplicates[p]) for p in paths if p in duplicates]
