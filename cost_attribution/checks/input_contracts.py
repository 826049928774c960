"""Input contracts: Great Expectations suites on the landing-zone tables, as Dagster
asset checks on the ingest assets.

The loaders in ingest/catalogs.py already quarantine rows they cannot type; these
suites state what the *typed* tables promise to everything downstream (keys present
and unique, FOCUS vocabulary, non-negative volumes, sensible timestamps). A failed
contract does not stop the run (the check is not blocking): it is an ERROR-severity
evaluation that the alert sensor forwards to the platform team, with the failing
expectations (name, column, observed value, unexpected count) in the check metadata.

Great Expectations is imported lazily: it takes seconds to import, and loading the
code location (webserver, daemon, every run worker) must not pay for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from cost_attribution.warehouse import read_frame, table_exists

CHECK_NAME = "input_contract"

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


def validate_frame(frame: pl.DataFrame, expectations: list[Expectation], suite_name: str,
                   timestamp_columns: tuple[str, ...] = ()) -> ContractResult:
    """Run one GE suite on a frame; return the failing expectations in a plain form."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    for column in timestamp_columns:
        if column in frame.columns and isinstance(frame.schema[column], pl.Datetime):
            if frame.schema[column].time_zone:
                frame = frame.with_columns(pl.col(column).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    context = _ephemeral_context()
    suite = gx.ExpectationSuite(name=suite_name)
    for name, kwargs in expectations:
        suite.add_expectation(getattr(gxe, name)(**kwargs))
    source = context.data_sources.add_pandas(f"{suite_name}_source")
    try:
        batch = (
            source.add_dataframe_asset(suite_name)
            .add_batch_definition_whole_dataframe("whole_table")
            .get_batch(batch_parameters={"dataframe": _pandas_frame(frame, timestamp_columns)})
        )
        outcome = batch.validate(suite)
    finally:
        # gx.get_context keeps its context for the whole process, and the context its data
        # sources: the validated frame (1.7M allocations: ~300 MB) would stay referenced for
        # the rest of the run, beside dbt's DuckDB.
        context.data_sources.delete(source.name)
    failures = []
    for result in outcome.results:
        if result.success:
            continue
        config = result.expectation_config
        kwargs = dict(config.kwargs)
        details = result.result or {}
        failures.append(
            {
                "expectation": config.type,
                "column": kwargs.get("column") or kwargs.get("column_list")
                or [kwargs.get("column_A"), kwargs.get("column_B")],
                "observed_value": _jsonable(details.get("observed_value")),
                "unexpected_count": details.get("unexpected_count"),
                "unexpected_sample": _jsonable((details.get("partial_unexpected_list") or [])[:5]),
                # An expectation that raised (missing column, wrong type) fails with the reason.
                "exception": (result.exception_info or {}).get("exception_message")
                if isinstance(result.exception_info, dict) else None,
            }
        )
    return ContractResult(success=bool(outcome.success), evaluated=len(outcome.results), failures=failures)


def _failures_markdown(failures: list[dict]) -> str:
    if not failures:
        return "_all expectations met_"
    lines = ["| expectation | column | observed | unexpected |", "|---|---|---|---|"]
    for f in failures:
        lines.append(f"| {f['expectation']} | {f['column']} | {f['observed_value']} | {f['unexpected_count']} |")
    return "\n".join(lines)


def evaluate_contract(contract: InputContract, conn) -> dg.AssetCheckResult:
    if not table_exists(conn, contract.table):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{contract.table} does not exist: the ingest asset wrote nothing",
            metadata={"failed_expectations": dg.MetadataValue.json([{"expectation": "table_exists",
                                                                        "column": None, "observed_value": None,
                                                                        "unexpected_count": None}])},
        )
    frame = read_frame(conn, f"SELECT * FROM {contract.table}")
    expectations = contract.expectations(conn)
    result = validate_frame(frame, expectations, contract.asset, contract.timestamp_columns)
    names = sorted({f"{f['expectation']}({f['column']})" for f in result.failures})
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if result.success else f"{contract.table} breaks its contract: {', '.join(names)}",
        metadata={
            "rows": frame.height,
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
