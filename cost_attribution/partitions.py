"""The one partitions definition every daily asset shares.

A partition is a UTC day. Span-level assets hold that day's data; analysis assets
(deltas, models, projections, report) hold the snapshot *as of* that day, so the
history of estimates is itself a partitioned asset and a backfill replays it.
"""

import datetime as dt
from collections.abc import Iterable

import dagster as dg

from cost_attribution import environment

# The first day the deployment cares about: COST_ATTRIBUTION_START_DATE, else the landing
# zone's first trace day, read when the code location loads (definitions.defs), never at
# import. Assets declare `daily_partitions`; rebase_partitions moves them to that day.
PARTITION_START_ENV = environment.START_DATE_ENV
DEFAULT_PARTITION_START = "2026-01-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=DEFAULT_PARTITION_START, timezone="UTC")


def daily_asset(*, group: str, owners: list[str], kinds: Iterable[str] = ("python", "duckdb"), **kwargs):
    """dg.asset for a daily asset that writes the warehouse: the one partitions definition,
    the warehouse pool (DuckDB has one writer), its group, owners and kinds. The function's
    name is the asset key and its docstring the description people read in the UI."""
    return dg.asset(partitions_def=daily_partitions, pool="warehouse", group_name=group, owners=list(owners),
                    kinds=set(kinds), **kwargs)


def partition_day(context: dg.AssetExecutionContext) -> dt.date:
    """The day of a single-partition run: the span day, or the as-of day of an analysis."""
    return dt.date.fromisoformat(context.partition_key)


def daily_partitions_from(start: dt.date | str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=str(start), timezone="UTC")


def rebase_partitions(defs: dg.Definitions, start: dt.date | str) -> dg.Definitions:
    """The same definitions with every daily asset's partitions starting at `start`, so the
    UI lists no "missing" days before the data begins."""
    rebased = daily_partitions_from(start)
    return defs.map_resolved_asset_specs(
        func=lambda spec: spec.replace_attributes(partitions_def=rebased) if spec.partitions_def == daily_partitions else spec
    )


def deployment_start_date() -> str:
    """The configured start date, else the first trace day of the landing zone named by
    COST_ATTRIBUTION_LANDING, else the default. Called when the code location loads."""
    from cost_attribution.resources import LandingZone

    if environment.is_set(PARTITION_START_ENV):
        return environment.get(PARTITION_START_ENV)
    landing = environment.get(environment.LANDING_ENV)
    days = LandingZone(root=landing).trace_days() if landing else []
    return days[0].isoformat() if days else DEFAULT_PARTITION_START


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days a run materializes: one for a scheduled run, several for a
    single-run backfill over a range."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def trailing_window(as_of: dt.date, days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC: the `days` whole days ending with the as-of day. The one
    definition of "the last N days" that models, projections and capacity share."""
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return end - dt.timedelta(days=days), end
