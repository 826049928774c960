"""Blind spots: coverage, broken edges, orphans and the blocking gate."""

import polars as pl

from cost_attribution.checks import trace_completeness as tc


def _coverage(rows):
    cols = ["service", "server_spans", "adjusted_requests", "attributed_requests", "root_requests",
            "anonymous_root_requests", "spans_with_parent", "orphan_spans"]
    return pl.DataFrame([dict(zip(cols, r)) for r in rows])


def _edges(rows):
    cols = ["caller", "callee", "client_spans", "client_requests", "unmatched_client_spans"]
    return pl.DataFrame([dict(zip(cols, r)) for r in rows])


COVERAGE = _coverage([
    # service, spans, adjusted, attributed, roots, anonymous roots, with parent, orphans
    ("gateway", 100, 10_000.0, 10_000.0, 10_000.0, 0.0, 0, 0),
    ("images", 50, 5_000.0, 5_000.0, 0.0, 0.0, 50, 0),
    ("cdn", 40, 4_000.0, 0.0, 4_000.0, 4_000.0, 0, 0),
    ("search", 10, 1_000.0, 900.0, 0.0, 0.0, 10, 1),
])
EDGES = _edges([
    ("gateway", "images", 50, 5_000.0, 0),
    ("images", "cdn", 40, 4_000.0, 40),  # every call misses its callee: context dropped
    ("gateway", "search", 10, 1_000.0, 1),  # one lost span is noise, not a broken edge
])


def test_coverage_and_broken_edge():
    summary = tc.summarize(COVERAGE, EDGES)
    coverage = dict(summary.services.select("service", "coverage").iter_rows())
    assert coverage == {"cdn": 0.0, "gateway": 1.0, "images": 1.0, "search": 0.9}
    assert summary.broken_edges.select("caller", "callee").rows() == [("images", "cdn")]
    assert summary.overall_coverage == 15_900 / 20_000
    assert summary.orphan_parent_rate == 1 / 60
    assert summary.member_tag_coverage == 10_000 / 14_000


def test_gate_passes_above_threshold_and_warns_on_the_edge():
    results = {r.check_name: r for r in tc.check_results(tc.summarize(COVERAGE, EDGES), 0.5, "trace_completeness")}
    assert results[tc.COVERAGE_GATE].passed
    assert not results[tc.BROKEN_EDGES].passed
    assert "images -> cdn" in results[tc.BROKEN_EDGES].description


def test_gate_fails_below_threshold_naming_the_services():
    results = {r.check_name: r for r in tc.check_results(tc.summarize(COVERAGE, EDGES), 0.9, "trace_completeness")}
    gate = results[tc.COVERAGE_GATE]
    assert not gate.passed
    assert "cdn" in gate.description and "79.5%" in gate.description


def test_a_day_without_spans_does_not_block():
    empty = tc.summarize(COVERAGE.clear(), EDGES.clear())
    results = {r.check_name: r for r in tc.check_results(empty, 0.5, "trace_completeness")}
    assert results[tc.COVERAGE_GATE].passed
    assert results[tc.COVERAGE_GATE].metadata["no_spans"].value is True


def test_volume_reconciliation_flags_the_service_off_the_common_ratio():
    metrics = pl.DataFrame({
        "service": ["gateway", "images", "cdn", "search"],
        # 100x the traced volume, except search whose sampling rate was misreported
        "requests": [1_000_000.0, 500_000.0, 400_000.0, 300_000.0],
    })
    table = tc.volume_reconciliation(COVERAGE, metrics)
    deviation = dict(table.select("service", "deviation").iter_rows())
    assert deviation["gateway"] == 0.0
    assert deviation["search"] < -0.6
    result = tc._reconciliation_result(table, "trace_completeness")
    assert not result.passed and "search" in result.description


def test_the_as_of_frames_hold_what_the_report_reads():
    """trace_completeness_as_of stores these frames; the report's overall coverage is
    recomputed from the stored services exactly as summarize computes it."""
    import datetime as dt

    metrics = pl.DataFrame({"service": ["gateway", "images"], "requests": [100_000, 50_000]})
    day, thin = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    coverage = pl.concat([COVERAGE.with_columns(dt=pl.lit(day)),
                          COVERAGE.filter(pl.col("service") == "cdn").with_columns(dt=pl.lit(thin))])
    frames = tc.as_of_frames(coverage, EDGES, metrics)
    assert set(frames) == set(tc.AS_OF_TABLES)
    assert frames["days"].rows() == [(day, 15_900 / 20_000), (thin, 0.0)]
    frames = tc.as_of_frames(COVERAGE.with_columns(dt=pl.lit(day)), EDGES, metrics)
    assert frames["broken_edges"].select("caller", "callee").rows() == [("images", "cdn")]
    assert frames["reconciliation"]["service"].to_list() == ["gateway", "images"]
    assert tc.overall_coverage(frames["services"]) == tc.summarize(COVERAGE, EDGES).overall_coverage == 15_900 / 20_000
    assert tc.overall_coverage(frames["services"].clear()) is None
