"""Every environment variable the project reads: its name, its default, and the one
function that reads it (as dagster-open-platform's environment_helpers does).

Nothing here runs at import time: the readers are called when the code location's
definitions are built (`definitions.defs`), when a run starts, or by the CLI.
docs/settings.md lists every variable beside the analysis settings it feeds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Paths: the landing zone, the DuckDB warehouse, the lake of the spark target.
LANDING_ENV = "COST_ATTRIBUTION_LANDING"
WAREHOUSE_ENV = "COST_ATTRIBUTION_WAREHOUSE"
SPARK_DIR_ENV = "COST_ATTRIBUTION_SPARK_DIR"
# The first daily partition; unset: the landing zone's first trace day.
START_DATE_ENV = "COST_ATTRIBUTION_START_DATE"
# Spans per staged chunk when ingesting trace files (LandingZone.ingest_chunk_spans).
INGEST_CHUNK_ENV = "COST_ATTRIBUTION_INGEST_CHUNK_SPANS"
# DuckDB's memory cap, shared with dbt's connection (dbt_project/profiles.yml, which repeats
# the default because dbt cannot import it). 1GB, not 2GB: while dbt builds the span models
# the Dagster process (~1.1 GB) and dbt's DuckDB are alive together, and at 10M spans the
# process tree peaked at 3.26 GB with 2GB, 2.22-2.25 GB with 1GB, for 6-10% more run time
# (bench/README.md, "Daily pipeline at scale").
MEMORY_LIMIT_ENV = "COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "1GB"
# The partition window a dbt build covers, [min, max) (macros/partition_window.sql), set by
# the span_models asset for its dbt process: environment, not --vars, because dbt re-parses
# the whole project whenever its command-line vars change (bench/README.md).
DBT_MIN_DATE_ENV = "COST_ATTRIBUTION_DBT_MIN_DATE"
DBT_MAX_DATE_ENV = "COST_ATTRIBUTION_DBT_MAX_DATE"
# Whether the span models compute busy time (macros/busy_time.sql), read when a model
# compiles like the window. The span_models asset sets it for its dbt process: true when
# AnalysisSettings.work_measure is "busy" or when it is true in the deployment's own
# environment (busy time kept for every day built, ahead of a switch to it).
DBT_BUSY_TIME_ENV = "COST_ATTRIBUTION_DBT_BUSY_TIME"
# The whole run's memory: the Dagster process and the dbt process it starts. Each DuckDB
# gets what is left of it when it starts, up to the cap above (cost_attribution/memory.py).
MEMORY_BUDGET_ENV = "COST_ATTRIBUTION_MEMORY_BUDGET"
DEFAULT_MEMORY_BUDGET = "2GB"
# The dbt target (dbt_project/profiles.yml): duckdb, or spark to run the span models on Spark.
DBT_TARGET_ENV = "DBT_TARGET"
DEFAULT_DBT_TARGET = "duckdb"
SPARK_TARGET = "spark"
# The Dagster UI, for links in alerts and in the CLI's summary.
DAGSTER_URL_ENV = "COST_ATTRIBUTION_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
# The one cost threshold: the report's cost_over_threshold flag and the cost alert.
COST_THRESHOLD_ENV = "COST_ATTRIBUTION_ALERT_COST_THRESHOLD_USD"
DEFAULT_COST_THRESHOLD_USD = 10_000.0
# Alert channels and policy (alerts/__init__.py). Secrets stay dg.EnvVar references.
ALERT_WEBHOOK_ENV = "COST_ATTRIBUTION_ALERT_WEBHOOK_URL"
SMTP_PASSWORD_ENV = "COST_ATTRIBUTION_SMTP_PASSWORD"
SMTP_HOST_ENV = "COST_ATTRIBUTION_SMTP_HOST"
SMTP_PORT_ENV = "COST_ATTRIBUTION_SMTP_PORT"
SMTP_USER_ENV = "COST_ATTRIBUTION_SMTP_USER"
SMTP_STARTTLS_ENV = "COST_ATTRIBUTION_SMTP_STARTTLS"
ALERT_EMAIL_TO_ENV = "COST_ATTRIBUTION_ALERT_EMAIL_TO"
ALERT_EMAIL_FROM_ENV = "COST_ATTRIBUTION_ALERT_EMAIL_FROM"
ALERT_MIN_SEVERITY_ENV = "COST_ATTRIBUTION_ALERT_MIN_SEVERITY"


def get(name: str, default: str = "") -> str:
    """The variable's value, or the default when it is unset or empty."""
    return os.environ.get(name) or default


def is_set(name: str) -> bool:
    return bool(os.environ.get(name))


@contextmanager
def overridden(values: Mapping[str, str]) -> Iterator[None]:
    """The variables set to `values` inside the block (for a subprocess started there, which
    takes this process's environment), then back to what they were."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dbt_target() -> str:
    return get(DBT_TARGET_ENV, DEFAULT_DBT_TARGET)


def memory_limit() -> str:
    return get(MEMORY_LIMIT_ENV, DEFAULT_MEMORY_LIMIT)


def memory_budget() -> str:
    return get(MEMORY_BUDGET_ENV, DEFAULT_MEMORY_BUDGET)


def ingest_chunk_spans(default: int) -> int:
    raw = get(INGEST_CHUNK_ENV)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{INGEST_CHUNK_ENV}={raw!r}: not a whole number. Fix: set it to spans per chunk, "
                         f"e.g. {default}") from None


def flag(name: str, meaning_when_true: str, meaning_when_false: str) -> bool:
    """A true/false variable (true, false, 1 or 0, any case; unset: false). Anything else is
    refused with the variable, the value and what each choice means, rather than read as
    false (STARTTLS off because someone wrote `yes`)."""
    raw = get(name, "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise ValueError(f"{name}={raw!r}: not true or false. Fix: set it to true ({meaning_when_true}) "
                         f"or false ({meaning_when_false})")
    return raw in ("true", "1")


def dbt_busy_time() -> bool:
    return flag(DBT_BUSY_TIME_ENV, "span models compute busy time for every day",
                "only when work_measure is 'busy'")


def smtp_starttls() -> bool:
    return flag(SMTP_STARTTLS_ENV, "upgrade the SMTP connection with STARTTLS", "send over the plain connection")


def cost_threshold_usd() -> float:
    raw = get(COST_THRESHOLD_ENV)
    try:
        return float(raw) if raw else DEFAULT_COST_THRESHOLD_USD
    except ValueError:
        raise ValueError(f"{COST_THRESHOLD_ENV}={raw!r}: not a number. Fix: set it to a USD amount, e.g. 10000") from None


def dagster_url() -> str:
    return get(DAGSTER_URL_ENV, DEFAULT_DAGSTER_URL)
