"""Time shape of traffic: diurnal hour shares, weekly pattern, growth; plus seeded RNGs."""

from __future__ import annotations

import datetime
import zlib

import numpy as np

from cost_attribution.simulator.config import WorldConfig

NS_PER_HOUR = 3_600 * 10**9


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """Independent stream per purpose, so changing one feature does not reshuffle others."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def hour_shares(config: WorldConfig) -> np.ndarray:
    """Share of a day's requests falling in each UTC hour (sums to 1)."""
    hours = np.arange(24)
    phase = 2 * np.pi * (hours - config.diurnal_peak_hour_utc) / 24
    weights = 1.0 + config.diurnal_amplitude * np.cos(phase)
    return weights / weights.sum()


def day_factor(config: WorldConfig, day: datetime.date) -> float:
    """Traffic level of a day relative to a weekday at end_date (growth x weekend)."""
    days_from_end = (day - config.end_date).days
    growth = (1.0 + config.growth_per_day) ** days_from_end
    weekend = config.weekend_factor if day.weekday() >= 5 else 1.0
    return growth * weekend


def day_start_ns(day: datetime.date) -> int:
    midnight = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)
    return int(midnight.timestamp()) * 10**9


def experiments_active(config: WorldConfig, day: datetime.date) -> bool:
    return config.experiment_start <= day <= config.end_date
