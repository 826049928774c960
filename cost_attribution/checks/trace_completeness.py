"""Trace completeness: can the day's traces be trusted to attribute volume?

Pure functions over the dbt models `service_coverage` and `trace_edges`, plus the
asset-check specs the `trace_completeness` asset reports on. The coverage gate fails
(ERROR, alerting) when too little work reaches a member, but it does not block: the
day's deltas and projections still run on the part that is attributable (relative
changes stay unbiased when tags are lost alike in every cell; less data widens the
intervals by itself) and the report flags the day. Only an empty or truncated
delivery (trace_volume) blocks the report.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass

import dagster as dg
import polars as pl

COVERAGE_GATE = "trace_coverage_gate"
BROKEN_EDGES = "broken_trace_edges"
ORPHAN_PARENTS = "orphan_parent_rate"
MEMBER_TAGS = "member_tag_coverage"
VOLUME_RECONCILIATION = "sampling_volume_reconciliation"
TRACE_VOLUME = "trace_volume"
# The day's span count is compared with the median of up to this many previous days.
TRACE_VOLUME_LOOKBACK_DAYS = 7

# A caller->callee edge is broken when most of the caller's calls find no callee
# SERVER span in the trace while most of the callee's work arrives as anonymous roots.
BROKEN_EDGE_UNMATCHED_SHARE = 0.5
BROKEN_EDGE_ANONYMOUS_SHARE = 0.5
MAX_ORPHAN_PARENT_RATE = 0.05
MIN_MEMBER_TAG_COVERAGE = 0.9
# Traced volume (sum of 1/p) is a fixed fraction of metrics volume when sampling is
# corrected right; a service off the common ratio by more than this is suspect.
MAX_VOLUME_DEVIATION = 0.25


def completeness_check_specs(asset_key: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            TRACE_VOLUME,
            asset=asset_key,
            blocking=True,
            description="ERROR (blocks the day's deltas, projections and report) when the day has no SERVER spans, or fewer "
            "than AnalysisSettings.min_day_span_ratio of the median of the previous days: an incomplete delivery must "
            "not replace the last good report (report.json stays at its as-of day).",
        ),
        dg.AssetCheckSpec(
            COVERAGE_GATE,
            asset=asset_key,
            description="ERROR (alerts; does not block) when the share of adjusted SERVER work that reaches a member "
            "falls under AnalysisSettings.min_trace_coverage: the day's estimates still run on the attributable "
            "part, with the intervals that leaves, and the report flags low_trace_coverage_day.",
        ),
        dg.AssetCheckSpec(
            BROKEN_EDGES,
            asset=asset_key,
            description="WARN naming each caller -> callee edge that drops trace context (a blind spot).",
        ),
        dg.AssetCheckSpec(
            ORPHAN_PARENTS,
            asset=asset_key,
            description=f"WARN when more than {MAX_ORPHAN_PARENT_RATE:.0%} of spans point at a parent that never arrived.",
        ),
        dg.AssetCheckSpec(
            VOLUME_RECONCILIATION,
            asset=asset_key,
            description="WARN when a service's sampling-corrected traced volume is off the common traced/metrics "
            f"ratio by more than {MAX_VOLUME_DEVIATION:.0%} (wrong sampling probabilities, lost spans, or traffic "
            "the traced population does not represent).",
        ),
        dg.AssetCheckSpec(
            MEMBER_TAGS,
            asset=asset_key,
            description=f"WARN when under {MIN_MEMBER_TAG_COVERAGE:.0%} of root requests carry enduser.id/user.id.",
        ),
    ]


@dataclass
class Completeness:
    services: pl.DataFrame  # service, adjusted_requests, coverage, anonymous_root_share, orphan_rate
    broken_edges: pl.DataFrame  # caller, callee, client_spans, unmatched_share, callee_anonymous_share
    overall_coverage: float | None
    orphan_parent_rate: float | None
    member_tag_coverage: float | None


def _ratio(num: float, den: float) -> float | None:
    return None if not den else float(num) / float(den)


def summarize(coverage: pl.DataFrame, edges: pl.DataFrame) -> Completeness:
    """coverage: rows of service_coverage (any number of days); edges: rows of trace_edges."""
    services = (
        coverage.group_by("service")
        .agg(
            pl.col("server_spans").sum(),
            pl.col("adjusted_requests").sum(),
            pl.col("attributed_requests").sum(),
            pl.col("root_requests").sum(),
            pl.col("anonymous_root_requests").sum(),
            pl.col("spans_with_parent").sum(),
            pl.col("orphan_spans").sum(),
        )
        .with_columns(
            (pl.col("attributed_requests") / pl.col("adjusted_requests")).alias("coverage"),
            (pl.col("anonymous_root_requests") / pl.col("adjusted_requests")).alias("anonymous_root_share"),
            pl.when(pl.col("spans_with_parent") > 0)
            .then(pl.col("orphan_spans") / pl.col("spans_with_parent"))
            .alias("orphan_rate"),
        )
        .sort("service")
    )
    edge_totals = (
        edges.group_by("caller", "callee")
        .agg(pl.col("client_spans").sum(), pl.col("client_requests").sum(), pl.col("unmatched_client_spans").sum())
        .with_columns((pl.col("unmatched_client_spans") / pl.col("client_spans")).alias("unmatched_share"))
    )
    broken = (
        edge_totals.join(
            services.select(pl.col("service").alias("callee"), pl.col("anonymous_root_share").alias("callee_anonymous_share")),
            on="callee",
            how="left",
        )
        .filter(
            (pl.col("unmatched_share") >= BROKEN_EDGE_UNMATCHED_SHARE)
            & (pl.col("callee_anonymous_share").fill_null(0.0) >= BROKEN_EDGE_ANONYMOUS_SHARE)
        )
        .sort("caller", "callee")
        .select("caller", "callee", "client_spans", "client_requests", "unmatched_share", "callee_anonymous_share")
    )
    totals = services.select(pl.all().exclude("service").sum()) if services.height else None
    overall = orphan = member_tags = None
    if totals is not None:
        row = totals.row(0, named=True)
        overall = _ratio(row["attributed_requests"], row["adjusted_requests"])
        orphan = _ratio(row["orphan_spans"], row["spans_with_parent"])
        if row["root_requests"]:
            member_tags = 1.0 - row["anonymous_root_requests"] / row["root_requests"]
    return Completeness(services, broken, overall, orphan, member_tags)


def volume_reconciliation(coverage: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """Per service: adjusted traced requests vs the metrics' full request count.

    Traces come from a sample of members, so traced volume is a fraction of production;
    with sampling corrected (1/p) that fraction is the same for every service. The
    median ratio estimates it; each service's deviation from it is the check."""
    joined = (
        coverage.group_by("service")
        .agg(pl.col("adjusted_requests").sum().alias("traced_requests"))
        .join(metrics.group_by("service").agg(pl.col("requests").sum().alias("metrics_requests")), on="service")
        .filter((pl.col("traced_requests") > 0) & (pl.col("metrics_requests") > 0))
        .with_columns((pl.col("metrics_requests") / pl.col("traced_requests")).alias("metrics_per_traced"))
    )
    if joined.is_empty():
        return joined.with_columns(pl.lit(None, pl.Float64).alias("deviation"))
    scale = joined["metrics_per_traced"].median()
    return joined.with_columns((scale / pl.col("metrics_per_traced") - 1.0).alias("deviation")).sort("service")


# The as-of summary over the experiments' window (asset trace_completeness_as_of), read by the report.
AS_OF_TABLES = {
    "services": "main.completeness_services",
    "broken_edges": "main.completeness_broken_edges",
    "reconciliation": "main.completeness_reconciliation",
    "days": "main.completeness_days",
}


def as_of_frames(coverage: pl.DataFrame, edges: pl.DataFrame, metrics: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The frames of AS_OF_TABLES over any number of days of coverage, edges and metrics
    (`days`: each trace day's share of adjusted SERVER work that reaches a member)."""
    summary = summarize(coverage, edges)
    days = (coverage.group_by("dt")
            .agg((pl.col("attributed_requests").sum() / pl.col("adjusted_requests").sum()).alias("coverage"))
            .sort("dt"))
    return {"services": summary.services, "broken_edges": summary.broken_edges,
            "reconciliation": volume_reconciliation(coverage, metrics), "days": days}


def overall_coverage(services: pl.DataFrame) -> float | None:
    """Share of all services' adjusted requests that reach a member (summarize's services)."""
    if not services.height:
        return None
    return _ratio(services["attributed_requests"].sum(), services["adjusted_requests"].sum())


def check_results(
    summary: Completeness, min_coverage: float, asset_key: str, reconciliation: pl.DataFrame | None = None
) -> list[dg.AssetCheckResult]:
    """The four completeness checks for one day."""
    blind = summary.services.filter(pl.col("coverage") < min_coverage)["service"].to_list()
    overall = summary.overall_coverage
    gate_passed = overall is None or overall >= min_coverage
    edges = [f"{r['caller']} -> {r['callee']}" for r in summary.broken_edges.iter_rows(named=True)]
    return [
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=COVERAGE_GATE,
            passed=gate_passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None
            if gate_passed
            else f"only {overall:.1%} of adjusted SERVER work reaches a member (threshold {min_coverage:.0%}); "
            f"low-coverage services: {', '.join(blind) or 'none'}",
            metadata={
                "overall_coverage": overall if overall is not None else float("nan"),
                "threshold": min_coverage,
                "services_below_threshold": dg.MetadataValue.json(blind),
                "no_spans": overall is None,
            },
        ),
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=BROKEN_EDGES,
            passed=not edges,
            severity=dg.AssetCheckSeverity.WARN,
            description=("trace context is dropped on: " + "; ".join(edges)) if edges else None,
            metadata={"broken_edges": dg.MetadataValue.json(edges), "blind_services": dg.MetadataValue.json(blind)},
        ),
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=ORPHAN_PARENTS,
            passed=summary.orphan_parent_rate is None or summary.orphan_parent_rate <= MAX_ORPHAN_PARENT_RATE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"orphan_parent_rate": summary.orphan_parent_rate if summary.orphan_parent_rate is not None else 0.0},
        ),
        _reconciliation_result(reconciliation, asset_key),
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=MEMBER_TAGS,
            passed=summary.member_tag_coverage is None or summary.member_tag_coverage >= MIN_MEMBER_TAG_COVERAGE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "member_tag_coverage": summary.member_tag_coverage if summary.member_tag_coverage is not None else 1.0
            },
        ),
    ]


def _reconciliation_result(reconciliation: pl.DataFrame | None, asset_key: str) -> dg.AssetCheckResult:
    if reconciliation is None or reconciliation.is_empty():
        return dg.AssetCheckResult(
            asset_key=asset_key, check_name=VOLUME_RECONCILIATION, passed=True, severity=dg.AssetCheckSeverity.WARN,
            metadata={"services_compared": 0},
        )
    off = reconciliation.filter(pl.col("deviation").abs() > MAX_VOLUME_DEVIATION)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=VOLUME_RECONCILIATION,
        passed=off.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(
            f"{r['service']}: traced volume {r['deviation']:+.0%} vs the common ratio" for r in off.iter_rows(named=True)
        )
        or None,
        metadata={
            "services_compared": reconciliation.height,
            "median_metrics_per_traced_request": float(reconciliation["metrics_per_traced"].median()),
        },
    )


def trace_volume_result(day: dt.date, counts: dict[dt.date, int], min_ratio: float, asset_key: str) -> dg.AssetCheckResult:
    """Blocking check: is the day's SERVER span count (counts[day], 0 if absent) plausible
    next to the median of the previous TRACE_VOLUME_LOOKBACK_DAYS days in `counts`?"""
    spans = counts.get(day, 0)
    previous = [n for d, n in sorted(counts.items()) if d < day][-TRACE_VOLUME_LOOKBACK_DAYS:]
    median = statistics.median(previous) if previous else None
    if spans == 0:
        problem = f"{day}: the day has no SERVER spans"
    elif median and spans < min_ratio * median:
        problem = (f"{day}: only {spans:,} SERVER spans, {spans / median:.0%} of the median {median:,.0f} of the "
                   f"previous {len(previous)} days (threshold {min_ratio:.0%})")
    else:
        problem = None
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=TRACE_VOLUME,
        passed=problem is None,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if problem is None else f"{problem}: the day looks incompletely delivered, so its report is "
        "not published and the last good report stays. Fix: deliver the day's missing trace files (see "
        "span_quarantine for files that were not read) and rerun.",
        metadata={"spans": spans, "median_previous_days": float("nan") if median is None else float(median),
                  "previous_days": len(previous), "min_ratio": min_ratio},
    )
