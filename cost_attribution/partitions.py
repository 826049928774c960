"""The one partitions definition every daily asset shares.

A partition is a UTC day. Span-level assets hold that day's data; analysis assets
(deltas, models, projections, report) hold the snapshot *as of* that day, so the
history of estimates is itself a partitioned asset and a backfill replays it.
"""

import datetime as dt
import os

import dagster as dg

# The first day the deployment cares about. Read once at import because partitions
# must be static; `cost-attribution run` sets it to the landing zone's first day.
PARTITION_START_ENV = "COST_ATTRIBUTION_START_DATE"
DEFAULT_PARTITION_START = "2026-01-01"

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=os.getenv(PARTITION_START_ENV, DEFAULT_PARTITION_START),
    timezone="UTC",
)


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days a run materializes: one for a scheduled run, several for a
    single-run backfill over a range."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def trailing_window(as_of: dt.date, days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC: the `days` whole days ending with the as-of day. The one
    definition of "the last N days" that models, projections and capacity share."""
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return end - dt.timedelta(days=days), end
