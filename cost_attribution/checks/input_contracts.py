"""Input contracts: Great Expectations suites on the landing-zone tables, as Dagster
asset checks on the ingest assets.

The loaders in ingest/catalogs.py already quarantine rows they cannot type; these
suites state what the *typed* tables promise to everything downstream (keys present
and unique, FOCUS vocabulary, non-negative volumes, sensible timestamps). A failed
contract does not stop the run (the check is not blocking): it is an ERROR-severity
evaluation that the alert sensor forwards to the platform team, with the failing
expectations (name, column, observed value, unexpected count) in the check metadata.

A table bigger than CONTRACT_CHUNK_ROWS is narrowed in SQL first (suspect_rows): for
each expectation, DuckDB selects every row it could fail on (a superset: a null, a value
outside the set or range or at its edge, a repeated key), and GE judges those rows plus
SUSPECT_SAMPLE_ROWS of the others, instead of every row (1.7M allocations: 0.2 s against
1.2-1.4 s). The counts are the whole table's, because no row outside the
suspects can fail; a contract with an expectation that has no such SQL (a regex: Python's
and DuckDB's dialects differ) is validated on every row.

Memory is bounded by CONTRACT_CHUNK_ROWS, not by the table: what GE reads is validated
in chunks read from DuckDB one at a time, and the chunk results are merged into one
(see merge_results). Every expectation is row-level except uniqueness, so the chunks
partition the rows by a hash of the contract's unique key: the rows of a repeated key
always share a chunk, and per-chunk uniqueness is whole-table uniqueness. The result is
exact, not a sample. Only the columns the expectations name are read, and the one query
that orders the rows by part runs inside DuckDB's memory limit (it spills beyond it).

Great Expectations is imported lazily: it takes seconds to import, and loading the
code location (webserver, daemon, every run worker) must not pay for it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.warehouse import qualified, quote_ident, read_frame, table_exists

CHECK_NAME = "input_contract"

# Rows Great Expectations validates at a time: the bound on the check's Python memory. GE
# holds a chunk as a polars frame, a pandas frame and its own copies, about 0.6 KB a row of
# raw.allocations. On 5M allocation rows (peak RSS of a process at 0.46 GB with Dagster and
# GE imported, wall time of the check): 100,000 rows
# 1.06 GB 14.9 s; 250,000 1.14 GB 12.4 s; 1,000,000 1.58 GB 12.0 s; one chunk (before)
# 2.38 GB 11.8 s. 250,000 is the knee: GE's fixed cost per chunk (~0.1 s) is paid 20 times
# for 5M rows, and the chunk stays near 150 MB.
CONTRACT_CHUNK_ROWS = 250_000
# Expectations that compare rows with each other; every other one judges a row alone.
UNIQUENESS = {"ExpectCompoundColumnsToBeUnique": "column_list", "ExpectColumnValuesToBeUnique": "column"}
# The table is split by hash into parts of about chunk_rows / PARTS_PER_CHUNK rows, and
# consecutive whole parts are packed into each chunk: chunks come out nearly full.
PARTS_PER_CHUNK = 8
# Failing values kept per expectation in the check's metadata.
SAMPLE_SIZE = 5
# Rows no expectation can fail on that GE still reads beside a big table's suspects: a
# frame of real rows for the dtype expectations, and never an empty one.
SUSPECT_SAMPLE_ROWS = 1000
# The kwargs that name the columns an expectation reads.
COLUMN_ARGUMENTS = ("column", "column_list", "column_A", "column_B")

# FOCUS 1.x ChargeCategory vocabulary.
FOCUS_CHARGE_CATEGORIES = ["Usage", "Purchase", "Tax", "Credit", "Adjustment"]
# Timestamps before this are parse accidents (epoch 0, two-digit years), not billing history.
EARLIEST_SENSIBLE = dt.datetime(2000, 1, 1)
NUMERIC_TYPES = ["float64", "Float64", "int64", "Int64", "float32", "int32"]

Expectation = tuple[str, dict[str, Any]]  # (GE expectation class name, kwargs)


@dataclass(frozen=True)
class InputContract:
    asset: str
    table: str
    description: str
    # Built at check time from the warehouse: some value sets come from other tables.
    expectations: Callable[[Any], list[Expectation]]
    # Columns cast to naive UTC before validation: GE compares datetimes, not zones.
    timestamp_columns: tuple[str, ...] = field(default_factory=tuple)


def _not_null(*columns: str) -> list[Expectation]:
    return [("ExpectColumnValuesToNotBeNull", {"column": c}) for c in columns]


def _sensible_time(column: str) -> Expectation:
    # Evaluated when the check runs: "now" must move with the deployment.
    latest = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=2)
    return ("ExpectColumnValuesToBeBetween", {"column": column, "min_value": EARLIEST_SENSIBLE, "max_value": latest})


def focus_costs_expectations(conn) -> list[Expectation]:
    return [
        *_not_null("charge_period_start", "charge_period_end", "charge_category", "effective_cost", "billing_currency"),
        ("ExpectColumnValuesToBeInSet", {"column": "charge_category", "value_set": FOCUS_CHARGE_CATEGORIES}),
        ("ExpectColumnValuesToBeInTypeList", {"column": "effective_cost", "type_list": NUMERIC_TYPES}),
        ("ExpectColumnValuesToBeInTypeList", {"column": "billed_cost", "type_list": NUMERIC_TYPES}),
        ("ExpectColumnValuesToMatchRegex", {"column": "billing_currency", "regex": r"^[A-Z]{3}$"}),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "charge_period_end", "column_B": "charge_period_start", "or_equal": False},
        ),
        _sensible_time("charge_period_start"),
    ]


def allocations_expectations(conn) -> list[Expectation]:
    known = []
    if table_exists(conn, "raw.experiments"):
        known = read_frame(conn, "SELECT experiment_id FROM raw.experiments")["experiment_id"].to_list()
    return [
        *_not_null("experiment_id", "member_id", "cell", "allocated_at"),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["experiment_id", "member_id"]}),
        ("ExpectColumnValuesToBeInSet", {"column": "experiment_id", "value_set": known}),
        _sensible_time("allocated_at"),
    ]


def usage_metrics_expectations(conn) -> list[Expectation]:
    return [
        *_not_null("hour", "service", "requests"),
        ("ExpectColumnValuesToBeInTypeList", {"column": "requests", "type_list": NUMERIC_TYPES}),
        ("ExpectColumnValuesToBeBetween", {"column": "requests", "min_value": 0}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["hour", "service"]}),
        _sensible_time("hour"),
    ]


def experiments_expectations(conn) -> list[Expectation]:
    return [
        *_not_null("experiment_id", "control_cell", "cells"),
        ("ExpectColumnValuesToBeUnique", {"column": "experiment_id"}),
        # A comma-separated list with at least two cells: one control, one to compare.
        ("ExpectColumnValuesToMatchRegex", {"column": "cells", "regex": r"^[^,]+(?:,[^,]+)+$"}),
    ]


def services_expectations(conn) -> list[Expectation]:
    return [
        *_not_null("service", "deprecated"),
        ("ExpectColumnValuesToBeUnique", {"column": "service"}),
        ("ExpectColumnValuesToBeInSet", {"column": "deprecated", "value_set": [True, False]}),
        ("ExpectColumnValuesToBeBetween", {"column": "tier", "min_value": 0, "max_value": 10}),
    ]


CONTRACTS = [
    InputContract("focus_costs", "raw.focus_costs", "FOCUS 1.x cost rows", focus_costs_expectations,
                  ("charge_period_start", "charge_period_end")),
    InputContract("allocations", "raw.allocations", "member -> experiment cell", allocations_expectations,
                  ("allocated_at",)),
    InputContract("usage_metrics", "raw.usage_metrics", "hourly request counts", usage_metrics_expectations, ("hour",)),
    InputContract("experiments", "raw.experiments", "experiment catalog", experiments_expectations),
    InputContract("services", "raw.services", "service catalog", services_expectations),
]


@dataclass
class ContractResult:
    success: bool
    evaluated: int
    failures: list[dict]


def _ephemeral_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In memory, no usage statistics leaving the machine, no progress bars in the run logs.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _pandas_frame(frame: pl.DataFrame, timestamp_columns: tuple[str, ...]):
    """The frame GE validates. Timestamps become datetime64[ns]: GE compares that dtype
    vectorized, but any other (polars hands over datetime64[us]) one Python call a row
    (1.7M allocations: most of the check's time). A column with a value outside the ns
    range (years 1678-2261) keeps its dtype, so such values are still reported as they are."""
    import pandas as pd

    pdf = frame.to_pandas()
    for column in timestamp_columns:
        if column in pdf.columns and pd.api.types.is_datetime64_dtype(pdf[column].dtype):
            try:
                pdf[column] = pdf[column].astype("datetime64[ns]")
            except (OverflowError, pd.errors.OutOfBoundsDatetime):
                continue
    return pdf


class _Validator:
    """One GE context, suite and dataframe asset, validating frame after frame."""

    def __init__(self, expectations: list[Expectation], suite_name: str, timestamp_columns: tuple[str, ...] = ()):
        import great_expectations as gx
        import great_expectations.expectations as gxe

        self.timestamp_columns = timestamp_columns
        self.context = _ephemeral_context()
        self.suite = gx.ExpectationSuite(name=suite_name)
        for name, kwargs in expectations:
            self.suite.add_expectation(getattr(gxe, name)(**kwargs))
        self.source = self.context.data_sources.add_pandas(f"{suite_name}_source")
        self.batches = self.source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("whole_table")

    def validate(self, frame: pl.DataFrame) -> ContractResult:
        for column in self.timestamp_columns:
            if column in frame.columns and isinstance(frame.schema[column], pl.Datetime):
                if frame.schema[column].time_zone:
                    frame = frame.with_columns(pl.col(column).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
        batch = self.batches.get_batch(batch_parameters={"dataframe": _pandas_frame(frame, self.timestamp_columns)})
        outcome = batch.validate(self.suite)
        return ContractResult(success=bool(outcome.success), evaluated=len(outcome.results),
                              failures=[_failure(r) for r in outcome.results if not r.success])

    def close(self) -> None:
        # gx.get_context keeps its context for the whole process, and the context its data
        # sources: the last validated frame would stay referenced for the rest of the run,
        # beside dbt's DuckDB.
        self.context.data_sources.delete(self.source.name)


def _failure(result) -> dict:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    details = result.result or {}
    return {
        "expectation": config.type,
        "column": _column(kwargs),
        "observed_value": _jsonable(details.get("observed_value")),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_sample": _jsonable((details.get("partial_unexpected_list") or [])[:SAMPLE_SIZE]),
        # An expectation that raised (missing column, wrong type) fails with the reason.
        "exception": (result.exception_info or {}).get("exception_message")
        if isinstance(result.exception_info, dict) else None,
    }


def validate_frame(frame: pl.DataFrame, expectations: list[Expectation], suite_name: str,
                   timestamp_columns: tuple[str, ...] = ()) -> ContractResult:
    """Run one GE suite on a frame; return the failing expectations in a plain form."""
    return validate_chunks([frame], expectations, suite_name, timestamp_columns)


def validate_chunks(chunks, expectations: list[Expectation], suite_name: str,
                    timestamp_columns: tuple[str, ...] = ()) -> ContractResult:
    """One GE suite over frames that together are the table (each a complete group of
    rows for any unique key), merged into one result (merge_results). Only one frame is
    alive at a time when `chunks` is an iterator."""
    validator = _Validator(expectations, suite_name, timestamp_columns)
    results = []
    try:
        for chunk in chunks:
            results.append(validator.validate(chunk))
            del chunk  # not alive while the next one is read
    finally:
        validator.close()
    return merge_results(results, expectations)


def merge_results(results: list[ContractResult], expectations: list[Expectation]) -> ContractResult:
    """The chunks' results as the whole table's. success: every chunk's; per failing
    expectation (in suite order): unexpected_count summed over the chunks, the first
    SAMPLE_SIZE unexpected values in chunk order, the first exception, and the
    observed_value of the failing chunks: their one value when they agree (a dtype, say),
    else the list of their distinct values in chunk order. One chunk's result is only put
    in suite order (GE reports in an order of its own)."""
    merged: dict[str, list[dict]] = {}
    for result in results:
        for failure in result.failures:
            merged.setdefault(_failure_key(failure["expectation"], failure["column"]), []).append(failure)
    order = [_failure_key(_snake(name), _column(kwargs)) for name, kwargs in expectations]
    failures = []
    for key in sorted(merged, key=lambda k: order.index(k) if k in order else len(order)):
        parts = merged[key]
        observed = []
        for part in parts:
            if part["observed_value"] not in observed:
                observed.append(part["observed_value"])
        counts = [p["unexpected_count"] for p in parts if p["unexpected_count"] is not None]
        failures.append({
            "expectation": parts[0]["expectation"],
            "column": parts[0]["column"],
            "observed_value": observed[0] if len(observed) == 1 else observed,
            "unexpected_count": sum(counts) if counts else None,
            "unexpected_sample": [v for p in parts for v in p["unexpected_sample"]][:SAMPLE_SIZE],
            "exception": next((p["exception"] for p in parts if p["exception"]), None),
        })
    return ContractResult(success=all(r.success for r in results), evaluated=len(expectations), failures=failures)


def _failure_key(expectation: str, column: Any) -> str:
    return json.dumps([expectation, column], default=str)


def _snake(name: str) -> str:
    """GE's type of an expectation class: ExpectColumnValuesToBeUnique -> expect_column_values_to_be_unique."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _column(kwargs: dict) -> Any:
    """The column(s) a failure names, from an expectation's kwargs."""
    return kwargs.get("column") or kwargs.get("column_list") or [kwargs.get("column_A"), kwargs.get("column_B")]


def uniqueness_key(name: str, kwargs: dict) -> list[str]:
    """The columns a uniqueness expectation (one of UNIQUENESS) keeps unique."""
    key = kwargs[UNIQUENESS[name]]
    return [key] if isinstance(key, str) else list(key)


def unique_key(contract: str, expectations: list[Expectation]) -> list[str]:
    """The columns every uniqueness expectation's key contains: chunks split by a hash of
    them keep each key's rows together. [] when nothing is unique (any split is exact)."""
    keys = [uniqueness_key(name, kwargs) for name, kwargs in expectations if name in UNIQUENESS]
    if not keys:
        return []
    common = [column for column in keys[0] if all(column in key for key in keys)]
    if not common:
        raise ValueError(f"input contract {contract}: its uniqueness expectations share no column ({keys}), so no "
                         "split keeps every repeated key in one chunk. Fix: validate one of them in SQL, or give "
                         "them a common column.")
    return common


def validated_columns(conn, table: str, expectations: list[Expectation]) -> list[str]:
    """The table's columns the expectations name (all of them if one names none): the only
    ones GE reads, so the only ones worth reading. A named column the table lacks stays
    missing, and its expectation fails as it would on the whole table."""
    named: set[str] = set()
    for _, kwargs in expectations:
        columns = [kwargs[a] for a in COLUMN_ARGUMENTS if a in kwargs]
        if not columns:
            named = set()
            break
        named.update(c for value in columns for c in ([value] if isinstance(value, str) else value))
    present = [row[0] for row in conn.execute(f"SELECT * FROM {qualified(table)} LIMIT 0").description]
    return [c for c in present if c in named] if named else present


# The temporary table a big table's suspect rows (and the sample beside them) are written to.
SUSPECTS_TABLE = "_contract_suspects"
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}


class _NoSql(Exception):
    """An expectation (or its column) whose failing rows SQL cannot pick out exactly."""


def _suspect_condition(name: str, kwargs: dict, types: dict[str, str]) -> tuple[str, list]:
    """SQL true for every row `name` could fail on (more is harmless: GE judges them), and
    its parameters. Nulls, NaN and infinities are always suspects (pandas counts NaN as
    missing, and a null changes a column's dtype); so do values at a range's bounds, and
    within a day of a datetime bound (a time zone cannot move a value further)."""

    def column(key: str) -> str:
        if kwargs.get(key) not in types:
            raise _NoSql  # a missing column: GE reports it, reading the whole table
        return quote_ident(kwargs[key])

    def odd(key: str) -> str:
        q = column(key)
        return f"{q} IS NULL" + (f" OR isnan({q}) OR isinf({q})" if types[kwargs[key]] in _FLOAT_TYPES else "")

    if name in ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeInTypeList"):
        return odd("column"), []
    if name == "ExpectColumnValuesToBeInSet":
        values = list(kwargs["value_set"])
        if not values:
            return "true", []
        return f"{odd('column')} OR NOT list_contains(?, {column('column')})", [values]
    if name == "ExpectColumnValuesToBeBetween":
        condition, params = odd("column"), []
        day = dt.timedelta(days=1)
        for bound, op, shift in (("min_value", "<=", day), ("max_value", ">=", -day)):
            value = kwargs.get(bound)
            if value is not None:
                condition += f" OR {column('column')} {op} ?"
                params.append(value + shift if isinstance(value, dt.datetime) else value)
        return condition, params
    if name == "ExpectColumnPairValuesAToBeGreaterThanB":
        return f"{odd('column_A')} OR {odd('column_B')} OR NOT ({column('column_A')} > {column('column_B')})", []
    raise _NoSql


def suspect_rows(conn, table: str, expectations: list[Expectation], columns: list[str]) -> int | None:
    """Write SUSPECTS_TABLE: `columns` of every row of `table` some expectation could fail
    on (a null key or one that repeats for uniqueness, _suspect_condition for the rest),
    then up to SUSPECT_SAMPLE_ROWS other rows (none sharing a key with a suspect, so no row
    is read twice). Its row count, or None (nothing left behind) when an expectation has
    no such SQL: the caller then validates every row."""
    types = {row[0]: row[1] for row in conn.execute(f"DESCRIBE {qualified(table)}").fetchall()}
    conditions, params, keys = [], [], []
    try:
        for name, kwargs in expectations:
            if kwargs.get("mostly", 1) != 1 or kwargs.get("row_condition"):
                raise _NoSql  # judged as a share of (some of) the rows: GE needs every row
            if name in UNIQUENESS:
                key = uniqueness_key(name, kwargs)
                if any(k not in types for k in key):
                    raise _NoSql
                keys.append([quote_ident(k) for k in key])
                continue
            condition, values = _suspect_condition(name, kwargs, types)
            conditions.append(condition)
            params += values
    except _NoSql:
        return None
    source, suspects = qualified(table), quote_ident(SUSPECTS_TABLE)
    # A condition that comes out null (a null compared) counts as suspect.
    suspect = " OR ".join(f"coalesce({c}, true)" for c in conditions) or "false"
    null_key = " OR ".join(f"{q} IS NULL" for key in keys for q in key) or "false"

    def matches(other: str, key: list[str]) -> str:
        return " AND ".join(f"{other}.{q} = t.{q}" for q in key)

    repeated = "".join(
        f" OR EXISTS (SELECT 1 FROM (SELECT {', '.join(key)} FROM {source} GROUP BY ALL HAVING count(*) > 1) AS d "
        f"WHERE {matches('d', key)})" for key in keys)
    apart = "".join(f" AND NOT EXISTS (SELECT 1 FROM {suspects} AS s WHERE {matches('s', key)})" for key in keys)
    selected = ", ".join(f"t.{quote_ident(c)}" for c in columns)
    try:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {suspects} AS SELECT {selected} FROM {source} AS t "
                     f"WHERE {suspect} OR {null_key}{repeated}", params)
        conn.execute(f"INSERT INTO {suspects} SELECT {selected} FROM {source} AS t "
                     f"WHERE NOT ({suspect}) AND NOT ({null_key}){apart} LIMIT {int(SUSPECT_SAMPLE_ROWS)}", params)
    except duckdb.Error:  # a bound or set of another type than the column: GE says what is wrong
        conn.execute(f"DROP TABLE IF EXISTS {suspects}")
        return None
    return conn.execute(f"SELECT count(*) FROM {suspects}").fetchall()[0][0]


@contextmanager
def _rows_to_judge(conn, table: str, rows: int, expectations: list[Expectation], columns: list[str],
                   chunk_rows: int) -> Iterator[tuple[str, int]]:
    """(relation, rows) Great Expectations reads: `table` itself, or, when it has more
    than chunk_rows rows and SQL can pick out its suspects, SUSPECTS_TABLE (suspect_rows),
    dropped afterwards."""
    suspects = suspect_rows(conn, table, expectations, columns) if rows > chunk_rows else None
    if suspects is None:
        yield table, rows
        return
    try:
        yield SUSPECTS_TABLE, suspects
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(SUSPECTS_TABLE)}")


def table_chunks(conn, table: str, rows: int, key: list[str], chunk_rows: int = CONTRACT_CHUNK_ROWS,
                 columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """`table` as frames of at most `chunk_rows` rows, one alive at a time (beside the
    batches of the next). A bigger table is streamed from one query sorted by part
    (hash(key) % k, or rowid % k without a key; DuckDB sorts within its memory limit and
    spills beyond it), cut only where the part changes, so the rows of a key share a frame.
    Only a part bigger than chunk_rows (a key repeated about that often) makes a bigger frame."""
    source = qualified(table)
    selected = ", ".join(quote_ident(c) for c in columns) if columns else "*"
    if rows <= chunk_rows:
        yield read_frame(conn, f"SELECT {selected} FROM {source}")
        return
    # The divisor typed: an untyped parameter makes DuckDB's modulo several times slower.
    part = f"hash({', '.join(quote_ident(c) for c in key)}) % CAST(? AS UBIGINT)" if key else "rowid % CAST(? AS BIGINT)"
    parts = math.ceil(rows * PARTS_PER_CHUNK / chunk_rows)
    reader = conn.sql(f"SELECT {selected}, {part} AS _part FROM {source} ORDER BY _part", params=[parts]).to_arrow_reader(
        max(1, chunk_rows // PARTS_PER_CHUNK))
    pending: list[pl.DataFrame] = []
    for batch in reader:
        pending.append(pl.from_arrow(batch))
        if sum(frame.height for frame in pending) <= chunk_rows:
            continue
        buffered = pl.concat(pending)
        while buffered.height > chunk_rows:
            # The first row that does not fit: its whole part goes to the next chunk.
            cut = int(buffered["_part"].search_sorted(buffered["_part"][chunk_rows], side="left"))
            if cut == 0:  # one part alone is bigger than a chunk: it is the chunk
                cut = int(buffered["_part"].search_sorted(buffered["_part"][0], side="right"))
            yield buffered.head(cut).drop("_part")
            buffered = buffered.slice(cut)
        pending = [buffered]
    if pending:
        yield pl.concat(pending).drop("_part")


def _failures_markdown(failures: list[dict]) -> str:
    if not failures:
        return "_all expectations met_"
    lines = ["| expectation | column | observed | unexpected |", "|---|---|---|---|"]
    for f in failures:
        lines.append(f"| {f['expectation']} | {f['column']} | {f['observed_value']} | {f['unexpected_count']} |")
    return "\n".join(lines)


def evaluate_contract(contract: InputContract, conn, chunk_rows: int = CONTRACT_CHUNK_ROWS) -> dg.AssetCheckResult:
    if not table_exists(conn, contract.table):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{contract.table} does not exist: the ingest asset wrote nothing",
            metadata={"failed_expectations": dg.MetadataValue.json([{"expectation": "table_exists",
                                                                        "column": None, "observed_value": None,
                                                                        "unexpected_count": None}])},
        )
    expectations = contract.expectations(conn)
    (rows,) = conn.execute(f"SELECT count(*) FROM {qualified(contract.table)}").fetchall()[0]
    columns = validated_columns(conn, contract.table, expectations)
    key = unique_key(contract.asset, expectations)
    with _rows_to_judge(conn, contract.table, rows, expectations, columns, chunk_rows) as (source, read):
        chunks = table_chunks(conn, source, read, key, chunk_rows, columns)
        result = validate_chunks(chunks, expectations, contract.asset, contract.timestamp_columns)
    names = sorted({f"{f['expectation']}({f['column']})" for f in result.failures})
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if result.success else f"{contract.table} breaks its contract: {', '.join(names)}",
        metadata={
            "rows": rows,
            # Fewer than `rows` when SQL picked out every row that could fail (suspect_rows).
            "rows_read_by_great_expectations": read,
            "expectations_evaluated": result.evaluated,
            "expectations_failed": len(result.failures),
            "failed_expectations": dg.MetadataValue.json(result.failures),
            "failures": dg.MetadataValue.md(_failures_markdown(result.failures)),
        },
    )


def _build_check(contract: InputContract) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=contract.asset,
        name=CHECK_NAME,
        description=f"Great Expectations suite on {contract.table} ({contract.description}): "
        "keys, vocabularies, ranges, uniqueness, types.",
        # Reads the DuckDB file: must not run beside a writer of another process.
        pool="warehouse",
        blocking=False,
    )
    def _check(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            return evaluate_contract(contract, conn)

    return _check


def build_input_contract_checks() -> list[dg.AssetChecksDefinition]:
    return [_build_check(c) for c in CONTRACTS]
