"""Where the report files live: beside the warehouse file. One rule for the assets that
write them and the CLI that reads them (kept free of Dagster so the CLI starts fast)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

REPORT_FILE = "report.json"
HTML_FILE = "report.html"


def report_json_path(warehouse_path: str | Path) -> Path:
    return Path(warehouse_path).resolve().parent / REPORT_FILE


def report_html_paths(warehouse_path: str | Path, as_of: dt.date) -> tuple[Path, Path]:
    """(newest report.html, report-<as_of>.html)."""
    folder = Path(warehouse_path).resolve().parent
    return folder / HTML_FILE, folder / f"report-{as_of.isoformat()}.html"
