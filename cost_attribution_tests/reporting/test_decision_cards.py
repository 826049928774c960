"""The top of the HTML report on hand-built frames: a decision card per non-control cell with
both costs, intervals, share of the bill, cost per business point and net value; the A/A
cell in the calibration section only; every chart with axis labels; escaped names."""

from __future__ import annotations

import datetime as dt
import json
import re

import polars as pl
import pytest

from cost_attribution.reporting import html_report
from cost_attribution.reporting.report import decision_entry, owner_view

AS_OF = dt.date(2026, 3, 28)


def _service(name: str, significant: bool, cost: float, low: float, high: float, delta: float = 20.0) -> dict:
    return {"service": name, "delta_pct": delta, "ci_low_pct": delta - 10, "ci_high_pct": delta + 10,
            "work_delta_pct": delta, "work_ci_low_pct": delta - 10, "work_ci_high_pct": delta + 10,
            "mde_pct": 14.0, "work_mde_pct": 14.0, "priced_on": "work", "q_value": 1e-4 if significant else 0.7,
            "significant": significant, "cost_model": "ml", "incremental_cost_usd_30d": cost, "ci_low_usd_30d": low,
            "ci_high_usd_30d": high, "owner": f"team-{name}"}


def _experiment(experiment_id: str, cell: str, cost: float, low: float, high: float, services: list[dict],
                metrics: list[dict], flags: list[dict] | None = None) -> dict:
    return {"experiment_id": experiment_id, "cell": cell, "control_cell": "control",
            "incremental_cost_usd_30d": cost, "ci_low_usd_30d": low, "ci_high_usd_30d": high,
            "bill_change_usd_30d": cost * 0.8, "bill_ci_low_usd_30d": low * 0.8, "bill_ci_high_usd_30d": high * 0.8,
            "treated_share": {"mean_pct": 20.0, "now_pct": 25.0}, "services": services, "flags": flags or [],
            "business_metrics": metrics}


def _report() -> dict:
    hours = {"metric": "streaming_hours", "delta_pct": 0.7, "ci_low_pct": 0.2, "ci_high_pct": 1.2}
    experiments = [
        _experiment("prefetch", "treatment", 5277.0, 3210.0, 7161.0, [_service("recs", True, 5277.0, 3210.0, 7161.0)],
                    [hours], [{"kind": "deprecated_dependency", "service": "recs", "detail": "+43%"}]),
        _experiment("three<b>", "b", 400.0, -1600.0, 2500.0, [_service("search", False, 0.0, -1600.0, 2500.0)],
                    [{"metric": "search_success", "delta_pct": 1.1, "ci_low_pct": 0.5, "ci_high_pct": 1.7}]),
        _experiment("three<b>", "c", -2365.0, -4225.0, -602.0, [_service("search", True, -2365.0, -4225.0, -602.0, -30.0)],
                    [hours]),
        _experiment("aa-calibration", "treatment", 0.0, -2103.0, 2102.0, [_service("recs", False, 0.0, -2103.0, 2102.0)],
                    [hours]),
    ]
    projections = pl.DataFrame({
        "experiment_id": ["prefetch", "three<b>", "three<b>", "aa-calibration"],
        "cell": ["treatment", "b", "c", "treatment"], "service": ["recs", "search", "search", "recs"],
        "baseline_cost_usd_30d": [13_000.0, 1200.0, 1200.0, 13_000.0], "peak_requests_per_hour": [130.0, 100.0, 70.0, 100.0],
        "delta_used": [0.43, 0.0, -0.3, 0.0],
    })
    registry = pl.DataFrame({"service": ["recs", "search"], "scaling": ["autoscale"] * 2,
                             "capacity_requests_per_hour": [None, None], "observed_peak": [120.0, 120.0],
                             "driver": ["cpu_seconds", "requests"]})
    history = pl.DataFrame({
        "as_of": [AS_OF - dt.timedelta(days=d) for d in (2, 1, 0)] * 4,
        "experiment_id": ["prefetch"] * 3 + ["three<b>"] * 6 + ["aa-calibration"] * 3,
        "cell": ["treatment"] * 3 + ["b"] * 3 + ["c"] * 3 + ["treatment"] * 3,
        "incremental_cost_usd_30d": [4000.0, 5000.0, 5277.0, 0.0, 300.0, 400.0, -1000.0, -2000.0, -2365.0, 0.0, 0.0, 0.0],
        "ci_low_usd_30d": [0.0, 2000.0, 3210.0, -3000, -2000, -1600, -5000, -4500, -4225, -4000, -3000, -2103],
        "ci_high_usd_30d": [9000.0, 8000.0, 7161.0, 3000, 2800, 2500, 2000, 500, -602, 4000, 3000, 2102],
    })
    owners = {"recs": "team-recs", "search": "team-search"}
    for e in experiments:
        e["decision"] = decision_entry(
            e, projections=projections, registry_peaks=registry, capacity=pl.DataFrame(), total_bill=27_899.0,
            owners=owners, meta={"kind": "aa" if e["experiment_id"] == "aa-calibration" else "ab", "owner": "growth"},
            history=history, values_per_point={"streaming_hours": 5000.0},
        )
    return {"as_of": AS_OF.isoformat(), "experiments": experiments, "owners": owner_view(experiments, owners),
            "services": [], "trace_completeness": {"overall": 0.9, "services": [], "broken_edges": []},
            "data_quality": {"quarantined": {}, "unattributed_cost_usd": 0.0}}


@pytest.fixture(scope="module")
def rendered():
    report = _report()
    figures = []
    real = html_report.figure_to_base64

    def capture(fig):
        figures.append([(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes])
        return real(fig)

    mp = pytest.MonkeyPatch()
    mp.setattr(html_report, "figure_to_base64", capture)
    try:
        page = html_report.render_html(report, universes=pl.DataFrame(), history=pl.DataFrame(), models={},
                                       capacity=pl.DataFrame(), window="2026-03-01..2026-03-28")
    finally:
        mp.undo()
    return report, page, figures


def _cards(page: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r'<article class="card"[^>]*data-cell="([^"]+)".*?</article>',
                                                       page, re.S)}


def test_each_non_control_cell_has_a_decision_card(rendered):
    report, page, _ = rendered
    cards = _cards(page)
    assert set(cards) == {"prefetch:treatment", "three&lt;b&gt;:b", "three&lt;b&gt;:c"}  # A/A is not a decision
    for card in cards.values():
        for text in ("Cost versus not shipping", "Change on the bill", "95% interval", "per year",
                     "of the whole bill", "Cost per +1% of it"):
            assert text in card
    prefetch = cards["prefetch:treatment"]
    assert "+$5,277" in prefetch and "[+$3,210, +$7,161]" in prefetch and "+$64,204 per year" in prefetch
    assert "likely between $3,210 and $7,161 more per 30 days" in prefetch
    assert "41% of the bill of the services it moves" in prefetch and "19% of the whole bill" in prefetch
    assert "+$7,539 per 30 days" in prefetch  # cost per +1% of streaming hours
    d = report["experiments"][0]["decision"]["business"][0]
    assert f"{d['p_net_positive'] * 100:.0f}%" in prefetch and "at $5,000 per point" in prefetch
    assert "Leans on a deprecated service" in prefetch and "Talk to team-recs." in prefetch
    assert "indistinguishable from $0 at this traffic" in cards["three&lt;b&gt;:b"]
    assert "detectable from about 14.0% change in search&#39;s load" in cards["three&lt;b&gt;:b"]
    assert "likely saves between $602 and $4,225" in cards["three&lt;b&gt;:c"]
    assert "Adds cost" in prefetch and "Saves money" in cards["three&lt;b&gt;:c"]
    assert "Cannot tell from $0 yet" in cards["three&lt;b&gt;:b"] and '<b class="">+$400</b>' in cards["three&lt;b&gt;:b"]
    assert page.index('id="decisions"') < page.index('id="summary"') < page.index('id="calibration"')


def test_calibration_section_holds_the_aa_experiment(rendered):
    _, page, _ = rendered
    section = page[page.index('id="calibration"'):page.index('id="owners"')]
    assert 'data-cell="aa-calibration:treatment"' in section and "Clean: indistinguishable from $0" in section
    assert "aa-calibration" not in page[page.index('id="summary"'):page.index('id="calibration"')]


def test_charts_have_axis_labels_and_the_strip_has_ticks(rendered):
    _, page, figures = rendered
    assert len(figures) == 3  # one history chart per decision card
    assert all(x and y for axes in figures for x, y in axes)
    axis = re.search(r'<svg class="axis".*?</svg>', page, re.S).group(0)
    assert len(re.findall(r"<text[^>]*>[^<]*\$[^<]*</text>", axis)) >= 3


def test_glossary_owner_view_and_embedded_json(rendered):
    report, page, _ = rendered
    assert 'href="#glossary"' in page and 'id="glossary"' in page and "<dt>CUPED</dt>" in page
    owners = page[page.index('id="owners"'):]
    assert "team-recs" in owners and "team-search" in owners
    embedded = re.search(r'<script type="application/json" id="report-json">(.*?)</script>', page, re.S).group(1)
    assert "<b>" not in embedded and json.loads(embedded) == report


def test_projection_calibration_section_only_once_cells_shipped(rendered):
    report, page, _ = rendered
    assert 'id="projection-calibration"' not in page and "#projection-calibration" not in page
    shipped = {**report, "calibration": {
        "shipped_cells": 2, "coverage": 0.5, "mean_signed_error_usd_30d": -900.0, "mean_signed_error_pct": -45.0,
        "mean_signed_error_ci_pct": None, "systematic_bias": True, "missed": ["three<b>:c"],
        "cells": [
            {"experiment_id": "prefetch", "cell": "treatment", "ship_date": "2026-03-20", "decision_as_of": "2026-03-19",
             "projected_usd_30d": 5000.0, "projected_ci_low_usd_30d": 3000.0, "projected_ci_high_usd_30d": 7000.0,
             "realized_usd_30d": 5400.0, "realized_ci_low_usd_30d": 4100.0, "realized_ci_high_usd_30d": 6700.0,
             "error_pct": -7.4, "verdict": "on_target"},
            {"experiment_id": "three<b>", "cell": "c", "ship_date": "2026-03-22", "decision_as_of": "2026-03-21",
             "projected_usd_30d": 0.0, "projected_ci_low_usd_30d": -500.0, "projected_ci_high_usd_30d": 500.0,
             "realized_usd_30d": 2400.0, "realized_ci_low_usd_30d": 1800.0, "realized_ci_high_usd_30d": 3000.0,
             "error_pct": -100.0, "verdict": "under_projected"},
        ]}}
    page = html_report.render_html(shipped, universes=pl.DataFrame(), history=pl.DataFrame(), models={},
                                   capacity=pl.DataFrame(), window="2026-03-01..2026-03-28")
    section = page[page.index('id="projection-calibration"'):page.index('id="owners"')]
    assert '<a href="#projection-calibration">' in page
    rows = dict(re.findall(r'<tr data-cell="([^"]+)">(.*?)</tr>', section, re.S))
    assert set(rows) == {"prefetch:treatment", "three&lt;b&gt;:c"}  # autoescaped, never raw markup
    on_target, missed = rows["prefetch:treatment"], rows["three&lt;b&gt;:c"]
    assert "+$5,000" in on_target and "[+$3,000, +$7,000]" in on_target and "+$5,400" in on_target
    assert "on target" in on_target and 'class="flag"' not in on_target
    assert "2026-03-22" in missed and "[+$1,800, +$3,000]" in missed and "-100%" in missed
    assert '<span class="flag">under-projected</span>' in missed
    assert "Coverage of the projected intervals: 50%" in section and "mean signed error -45%" in section
    assert '<span class="flag">systematic bias</span>' in section
