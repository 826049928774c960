"""Helpers the full-pipeline tests share."""

from __future__ import annotations

import json
import os
from pathlib import Path


def run_world(landing: Path, warehouse: Path, latest_only: bool = False,
              analyses_only: bool = False) -> tuple[dict, dict]:
    """run_pipeline without leaking its environment variables into other tests.
    Returns (summary, report)."""
    from cost_attribution.cli import run_pipeline

    saved = dict(os.environ)
    try:
        summary = run_pipeline(landing, warehouse, quiet=True, latest_only=latest_only,
                               analyses_only=analyses_only)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return summary, json.loads((warehouse.parent / "report.json").read_text())
