"""What a `cost-attribution run` must redo, so a daily run costs the new day, not the history.

The landing zone keeps accumulating days, and `run` used to ingest and model every one of
them again each time: a landing zone holding 28 days of 10M spans cost 28 days of span
work and 28 as-of analyses every day, for one new day. The warehouse now records what
each part was built from (`main.run_inputs`), and a run redoes only what changed:

- the span-level work (ingest and dbt) from the first trace day that is new or whose
  files changed, through the last day. A day is known by its files' names, sizes and
  modification times (a re-delivered file counts as changed, never the reverse);
- from an earlier day when the allocations of an already built day changed: the span
  models join a day's spans with the allocations up to that day (member_roots,
  same_day_usage, usage_by_cell: stored rows), so a late or corrected allocation makes
  those days stale. Allocations are compared per allocation day, by a digest of the
  allocated members of known experiments (what member_exposure holds);
- everything when the code changed: the package's and the dbt project's source files,
  and the settings that change what a day's rows hold (`OUTPUT_SETTINGS`);
- the as-of analyses from the first day whose span work was redone or whose analyses
  never finished, through the last day; only the last day when just the other inputs
  (costs, usage metrics, catalogs) changed: an earlier report stays what it said then.

Nothing is recorded until the part it covers succeeded, so a failed or killed run is
redone by the next one. `run --rebuild` ignores the record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

import duckdb

from cost_attribution import environment, formats
from cost_attribution.warehouse import ensure_schema, qualified, table_exists, transaction

STATE_TABLE = "main.run_inputs"
PACKAGE_DIR = Path(__file__).resolve().parent
# Code that shapes the warehouse's rows. The simulator only writes landing zones.
CODE_GLOBS = ("cost_attribution/**/*.py", "cost_attribution/**/*.j2", "cost_attribution/**/*.html",
              "dbt_project/models/**/*", "dbt_project/macros/**/*", "dbt_project/dbt_project.yml")
CODE_EXCLUDED = ("cost_attribution/simulator/",)
# Settings that change what the rows hold (not how fast or where they are written).
OUTPUT_SETTINGS = (environment.DBT_TARGET_ENV, environment.DBT_BUSY_TIME_ENV, environment.START_DATE_ENV,
                   environment.COST_THRESHOLD_ENV)

# Scopes of main.run_inputs: one row per scope (day null) or per scope and day.
CODE, TABLES, TRACES, EXPOSURE, AS_OF = "code", "tables", "traces", "exposure", "as_of"


def files_fingerprint(root: Path, paths: Iterable[Path]) -> str:
    """A digest of the files' names (relative to root), sizes and modification times:
    a file rewritten, added or removed changes it; reading the bytes is not needed."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def code_fingerprint(repo: Path = PACKAGE_DIR.parent) -> str:
    """A digest of the code's source files (their bytes) and the output settings."""
    digest = hashlib.sha256()
    files = {p for pattern in CODE_GLOBS for p in repo.glob(pattern)
             if p.is_file() and "__pycache__" not in p.parts}
    for path in sorted(files):
        name = path.relative_to(repo).as_posix()
        if not name.startswith(CODE_EXCLUDED):
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for setting in OUTPUT_SETTINGS:
        digest.update(f"{setting}={environment.get(setting)}\n".encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the landing zone holds now: per trace day, and everything else together."""

    code: str
    tables: str  # allocations, costs, usage and business metrics, the catalogs
    days: dict[dt.date, str]  # trace files per day

    @classmethod
    def of(cls, landing) -> "Inputs":
        """`landing`: a resources.LandingZone."""
        root = landing.path
        tables = [p for folder in formats.TABLE_FOLDERS for p in landing.table_files(folder)]
        tables += [root / name for name in formats.CATALOG_FILES if (root / name).is_file()]
        return cls(code=code_fingerprint(), tables=files_fingerprint(root, tables),
                   days={day: files_fingerprint(root, landing.trace_files(day)) for day in landing.trace_days()})


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What the warehouse was last built from."""

    code: str | None = None
    tables: str | None = None
    days: dict[dt.date, str] = dataclasses.field(default_factory=dict)
    exposure: dict[dt.date, str] = dataclasses.field(default_factory=dict)
    as_of: frozenset[dt.date] = frozenset()


def exposure_digests(conn: duckdb.DuckDBPyConnection) -> dict[dt.date, str]:
    """Per allocation day, a digest of the allocated members of known experiments (the
    rows member_exposure holds): order-free, and a duplicated row changes it."""
    if not (table_exists(conn, "raw.allocations") and table_exists(conn, "raw.experiments")):
        return {}
    rows = conn.execute("""
        SELECT a.allocated_date,
               count(*) || ':' || sum(hash(a.experiment_id, a.member_id, a.cell, a.allocated_at_unix_nano)::HUGEINT)
        FROM raw.allocations a JOIN raw.experiments e USING (experiment_id)
        WHERE a.allocated_date IS NOT NULL
        GROUP BY ALL
    """).fetchall()
    return {day: digest for day, digest in rows}


def read(conn: duckdb.DuckDBPyConnection) -> Recorded | None:
    """The record, or None for a warehouse that has none (new, or built before it existed)."""
    if not table_exists(conn, STATE_TABLE):
        return None
    rows = conn.execute(f"SELECT scope, day, fingerprint FROM {qualified(STATE_TABLE)}").fetchall()
    single = {scope: value for scope, day, value in rows if day is None}
    by_day = {scope: {day: value for s, day, value in rows if s == scope and day is not None}
              for scope in (TRACES, EXPOSURE, AS_OF)}
    if CODE not in single:
        return None
    return Recorded(code=single[CODE], tables=single.get(TABLES), days=by_day[TRACES],
                    exposure=by_day[EXPOSURE], as_of=frozenset(by_day[AS_OF]))


def _write(conn: duckdb.DuckDBPyConnection, scopes: Iterable[str], rows: list[tuple]) -> None:
    """Replace the rows of `scopes` by `rows` (scope, day, fingerprint), in one transaction."""
    ensure_schema(conn, STATE_TABLE)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {qualified(STATE_TABLE)} "
                 "(scope VARCHAR NOT NULL, day DATE, fingerprint VARCHAR NOT NULL, recorded_at TIMESTAMP)")
    scopes = list(scopes)
    with transaction(conn):
        conn.execute(f"DELETE FROM {qualified(STATE_TABLE)} WHERE list_contains(?, scope)", [scopes])
        if rows:
            conn.executemany(f"INSERT INTO {qualified(STATE_TABLE)} VALUES (?, ?, ?, now()::TIMESTAMP)", rows)


def record_span_work(conn: duckdb.DuckDBPyConnection, inputs: Inputs) -> None:
    """After the span-level work succeeded: every trace day, the other inputs and the
    allocations as the warehouse now holds them, and the code. (The analyses are recorded
    apart, by record_as_of, as their days finish.)"""
    rows = [(CODE, None, inputs.code), (TABLES, None, inputs.tables)]
    rows += [(TRACES, day, value) for day, value in inputs.days.items()]
    rows += [(EXPOSURE, day, value) for day, value in exposure_digests(conn).items()]
    _write(conn, (CODE, TABLES, TRACES, EXPOSURE), rows)


def record_as_of(conn: duckdb.DuckDBPyConnection, days: Iterable[dt.date], done: Iterable[dt.date]) -> None:
    """After the as-of analyses of `days` ran: `done` (those that succeeded) are kept,
    every other day of `days` is forgotten (redone by the next run)."""
    days, done = set(days), set(done)
    kept = (read(conn) or Recorded()).as_of - days | done
    _write(conn, (AS_OF,), [(AS_OF, day, "done") for day in sorted(kept)])


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this run does: span-level work over `span_days` (a contiguous range; all
    days with `whole`: one run with the other inputs), the other inputs' ingest alone
    first (`tables_first`), then the as-of analyses of `as_of_days`."""

    span_days: list[dt.date]
    as_of_days: list[dt.date]
    whole: bool
    tables_first: bool
    why: str

    @property
    def up_to_date(self) -> bool:
        return not self.span_days and not self.as_of_days and not self.tables_first


def plan(days: list[dt.date], inputs: Inputs, recorded: Recorded | None, rebuild: bool = False) -> Plan:
    """The first plan of a run: everything when there is no record, the code changed or
    `rebuild`; else the new or changed trace days (and the other inputs first, when they
    changed, so that changed allocations can be found: then `after_tables` decides)."""
    if rebuild or recorded is None or recorded.code != inputs.code:
        why = ("--rebuild" if rebuild else "no record of an earlier run" if recorded is None
               else "the code or an output setting changed since the last run")
        return Plan(span_days=list(days), as_of_days=list(days), whole=True, tables_first=False, why=why)
    changed = [day for day in days if recorded.days.get(day) != inputs.days[day]]
    tables_changed = recorded.tables != inputs.tables
    return _finish(days, changed[0] if changed else None, recorded, tables_changed, tables_first=tables_changed,
                   why=_days_why(changed))


def after_tables(first: Plan, days: list[dt.date], recorded: Recorded, exposure_now: dict[dt.date, str]) -> Plan:
    """The plan once the other inputs are ingested: from the first built day whose
    allocations changed, if that is earlier than the first changed trace day."""
    built = [day for day in days if day in recorded.days]
    stale = sorted(day for day in set(recorded.exposure) | set(exposure_now)
                   if recorded.exposure.get(day) != exposure_now.get(day))
    start = first.span_days[0] if first.span_days else None
    why = first.why
    if stale and built and stale[0] <= built[-1]:
        from_day = max(stale[0], days[0])
        if start is None or from_day < start:
            start = from_day
            why = f"allocations of {stale[0]} changed" + (f"; {why}" if why else "")
    return _finish(days, start, recorded, tables_changed=True, tables_first=False, why=why)


def _finish(days: list[dt.date], start: dt.date | None, recorded: Recorded, tables_changed: bool,
            tables_first: bool, why: str) -> Plan:
    span_days = [day for day in days if start is not None and day >= start]
    unfinished = [day for day in days if day not in recorded.as_of]
    as_of_from = min([d for d in (start, unfinished[0] if unfinished else None) if d is not None], default=None)
    if as_of_from is None and tables_changed:
        as_of_from = days[-1]  # new costs or metrics: today's report, not the history's
        why = why or "the allocations, costs, metrics or catalogs changed"
    if unfinished and (start is None or unfinished[0] < start):
        why = f"{why}; " if why else ""
        why += f"the analyses of {unfinished[0]} did not finish"
    as_of_days = [day for day in days if as_of_from is not None and day >= as_of_from]
    return Plan(span_days=span_days, as_of_days=as_of_days, whole=False, tables_first=tables_first, why=why)


def _days_why(changed: list[dt.date]) -> str:
    if not changed:
        return ""
    return f"{len(changed)} trace day{'s' if len(changed) > 1 else ''} new or changed ({changed[0]}" + (
        f"..{changed[-1]})" if len(changed) > 1 else ")")
