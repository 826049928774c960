"""Input hygiene for the experiment statistics: clean rows in, quarantine rows (with a reason) out.

Dirty rows never crash the analysis and are never dropped silently: every row
that cannot be used is returned in a quarantine frame with `reason`, and
`compare_cells` warns with the counts.
"""

from __future__ import annotations

import polars as pl

QUARANTINE_SCHEMA = {"source": pl.String, "experiment_id": pl.String, "member_id": pl.String,
                     "service": pl.String, "reason": pl.String}


def require_columns(df: pl.DataFrame, name: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing required column(s) {missing}; has {df.columns}")


def _quarantine(df: pl.DataFrame, source: str, reason: str) -> pl.DataFrame:
    return df.select(
        pl.lit(source).alias("source"),
        *[(pl.col(c).cast(pl.String) if c in df.columns else pl.lit(None, pl.String)).alias(c)
          for c in ("experiment_id", "member_id", "service")],
        pl.lit(reason).alias("reason"),
    )


def clean_allocations(allocations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deduplicate allocations; quarantine members allocated to more than one cell of one experiment.

    A member seen in two cells has no well-defined treatment, so it is excluded
    from both cells' denominators (and its usage is quarantined downstream).
    """
    require_columns(allocations, "allocations", ["experiment_id", "member_id", "cell"])
    a = allocations.select(pl.col("experiment_id", "member_id", "cell").cast(pl.String))
    null_rows = a.filter(pl.any_horizontal(pl.all().is_null()))
    a = a.drop_nulls().unique()
    n_cells = a.group_by("experiment_id", "member_id").agg(pl.col("cell").n_unique().alias("n_cells"))
    conflicted = n_cells.filter(pl.col("n_cells") > 1).select("experiment_id", "member_id")
    clean = a.join(conflicted, on=["experiment_id", "member_id"], how="anti")
    quarantine = pl.concat([
        _quarantine(null_rows, "allocations", "null experiment_id, member_id or cell"),
        _quarantine(conflicted, "allocations", "member allocated to more than one cell of the experiment"),
    ])
    return clean, quarantine


def clean_usage(member_usage: pl.DataFrame, allocations: pl.DataFrame, value_column: str = "requests",
                source: str = "member_usage") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attach each usage row to its member's allocated cell; quarantine what cannot be attributed.

    `allocations` must already be clean.  Rows of one member/service are summed
    (a member's usage may arrive split by day).  The allocation's cell is the
    truth; a usage row claiming another cell is quarantined rather than guessed.
    Returns (experiment_id, cell, member_id, service, value_column) and quarantine rows.
    """
    require_columns(member_usage, source, ["experiment_id", "member_id", "service", value_column])
    u = member_usage.select(
        pl.col("experiment_id", "member_id", "service").cast(pl.String),
        *( [pl.col("cell").cast(pl.String).alias("claimed_cell")] if "cell" in member_usage.columns else [] ),
        pl.col(value_column).cast(pl.Float64, strict=False),
    )
    bad_key = u.filter(pl.any_horizontal(pl.col("experiment_id", "member_id", "service").is_null()))
    u = u.filter(~pl.any_horizontal(pl.col("experiment_id", "member_id", "service").is_null()))
    v = pl.col(value_column)
    bad_value = u.filter(v.is_null() | v.is_nan() | v.is_infinite() | (v < 0))
    u = u.filter(v.is_not_null() & v.is_finite() & (v >= 0))

    joined = u.join(allocations, on=["experiment_id", "member_id"], how="left")
    unallocated = joined.filter(pl.col("cell").is_null())
    joined = joined.filter(pl.col("cell").is_not_null())
    parts = [
        _quarantine(bad_key, source, "null experiment_id, member_id or service"),
        _quarantine(bad_value, source, f"{value_column} is null, NaN, infinite or negative"),
        _quarantine(unallocated, source, "member not (unambiguously) allocated to this experiment"),
    ]
    if "claimed_cell" in joined.columns:
        wrong_cell = joined.filter(pl.col("claimed_cell").is_not_null() & (pl.col("claimed_cell") != pl.col("cell")))
        joined = joined.filter(pl.col("claimed_cell").is_null() | (pl.col("claimed_cell") == pl.col("cell")))
        parts.append(_quarantine(wrong_cell, source, "usage cell differs from the member's allocated cell"))
    clean = (joined.group_by("experiment_id", "cell", "member_id", "service")
             .agg(pl.col(value_column).sum()))
    return clean, pl.concat(parts)
