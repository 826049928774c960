"""One trace-format registry: formats.py alone knows the suffixes; ingest, the
landing-zone listing and the unread-files report all ask it."""

from __future__ import annotations

import ast
from pathlib import Path

import cost_attribution
from cost_attribution import formats

PACKAGE_DIR = Path(cost_attribution.__file__).parent
# The simulator writes landing zones: it names the files it writes, it does not read them.
WRITERS = ("simulator/",)


def test_suffixes_are_case_insensitive_and_include_the_protobuf_names(tmp_path):
    for name, fmt in [("a.binpb", "otlp_proto"), ("b.PROTOBUF", "otlp_proto"), ("c.Pb.GZ", "otlp_proto"),
                      ("d.JSON.GZ", "json"), ("e.NDJSON", "json"), ("f.Parquet", "parquet")]:
        path = tmp_path / name
        path.write_bytes(b"")
        assert formats.trace_format(path).name == fmt, name
        assert formats.trace_reader_refusal(path) is None
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    assert formats.trace_format(stray) is None and ".binpb" in formats.trace_reader_refusal(stray)


def test_no_other_module_decides_a_trace_suffix():
    suffixes = set(formats.known_trace_suffixes()) | set(formats.COMPRESSION_SUFFIXES)
    deciders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative == "formats.py" or relative.startswith(WRITERS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Parts of f-strings name files the code writes itself (staging files), not inputs.
        written = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in written
                    and node.value.lower() in suffixes):
                deciders.append(f"{relative}:{node.lineno} {node.value!r}")
    assert deciders == []
