"""Production metrics calibrate the trace deltas where an experiment started inside the
load history: a known jump is recovered, its error is measured by a placebo, and a
world without the jump is not given one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from cost_attribution.attribution.treated_share import hourly_grid
from cost_attribution.estimation.production_calibration import combine, production_scale

UTC = dt.timezone.utc


def _series(jump: float, start_day: int = 40, days: int = 56, seed: int = 0):
    hours = hourly_grid(dt.datetime(2026, 5, 1, tzinfo=UTC), dt.datetime(2026, 5, 1, tzinfo=UTC) + dt.timedelta(days=days))
    rng = np.random.default_rng(seed)
    hour_of_day = np.arange(len(hours)) % 24
    weekend = ((hours.astype("datetime64[D]").astype(np.int64) + 3) % 7) >= 5
    baseline = 1e5 * (1 + 0.45 * np.sin(2 * np.pi * (hour_of_day - 14) / 24)) * np.where(weekend, 1.12, 1.0)
    share = np.where(np.arange(len(hours)) >= 24 * start_day, 0.2, 0.0)
    load = baseline * (1 + share * jump) * rng.lognormal(0, 0.01, len(hours))
    return hours, load, share


def test_recovers_a_tiny_services_jump_that_traces_overestimate():
    hours, load, share = _series(jump=7.5)
    scale = production_scale(hours, load, share * 9.6)  # traces said +960%
    assert scale.scale == pytest.approx(7.5 / 9.6, rel=0.02)
    delta, half, source = combine(9.6, 3.2, scale)
    assert source == "traces+production"
    assert delta == pytest.approx(7.5, rel=0.03) and half < 0.5


def test_no_jump_in_production_is_not_invented_and_small_effects_keep_the_traces():
    hours, load, share = _series(jump=0.0)
    scale = production_scale(hours, load, share * 0.4)
    assert abs(scale.scale) < 0.15  # production shows no jump ...
    assert scale.se > 0.01  # ... and says how sure it is, from the placebo
    delta, half, _ = combine(0.4, 0.1, scale)
    assert delta < 0.4 and half < 0.1


def test_no_calibration_without_untreated_history():
    hours, load, share = _series(jump=1.0, start_day=1)
    assert production_scale(hours, load, share * 1.0) is None
    assert combine(1.0, 0.2, None) == (1.0, 0.2, "traces")
