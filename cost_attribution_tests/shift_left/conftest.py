"""Fixtures of the shift-left and latency tests (see synthetic_world.py)."""

from pathlib import Path

import pytest

from cost_attribution_tests.shift_left.synthetic_world import build_warehouse


@pytest.fixture(scope="package")
def synthetic_warehouse(tmp_path_factory) -> Path:
    return build_warehouse(tmp_path_factory.mktemp("shift_left"))
