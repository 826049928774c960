"""The HTML report: content from real cost models and projections, rendered in headless Chromium."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cost_attribution.estimation.capacity import capacity_plan
from cost_attribution.estimation.models import fit_all, project_incremental_cost
from cost_attribution.reporting.html_report import change_point, render_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AS_OF = dt.date(2026, 3, 28)
END = dt.datetime(2026, 3, 29, tzinfo=dt.timezone.utc)
HOURS = 28 * 24


def _history() -> pl.DataFrame:
    """Two autoscaling services; `recs` moves to a pricier instance type 2 days before the end."""
    rng = np.random.default_rng(5)
    t = np.arange(HOURS)
    hours = [END - dt.timedelta(hours=HOURS - int(h)) for h in t]
    frames = []
    for service, level, per_instance, price in (("metadata", 4e6, 5e5, 0.5), ("recs", 2e6, 3e5, 1.0)):
        requests = level * (1 + 0.5 * np.sin(2 * np.pi * t / 24)) * rng.lognormal(0, 0.03, HOURS)
        instances = np.maximum(2, np.ceil(requests / per_instance))
        unit = np.full(HOURS, price)
        sku = np.array(["a"] * HOURS, dtype=object)
        if service == "recs":
            unit[t >= HOURS - 48] = price * 1.4
            sku[t >= HOURS - 48] = "b"
        frames.append(pl.DataFrame({"service": service, "hour": hours, "requests": requests, "cost": instances * unit,
                                    "instances": instances.astype(int), "sku": sku.tolist(), "unit_cost": unit}))
    return pl.concat(frames)


def _inputs():
    history = _history()
    models = {m.service: m for m in fit_all(history, END)}
    deltas = {"metadata": (0.35, 0.14, 0.57), "recs": (0.44, 0.17, 0.71)}
    universes, services = [], []
    for service, (delta, low, high) in deltas.items():
        hourly = history.filter(pl.col("service") == service)
        extra, base, cf = project_incremental_cost(models[service], hourly["requests"].to_numpy(), delta)
        universes.append(pl.DataFrame({"experiment_id": "prefetch", "cell": "treatment", "service": service,
                                       "hour": hourly["hour"], "baseline_cost": base, "counterfactual_cost": cf}))
        services.append({
            "service": service, "delta_pct": delta * 100, "ci_low_pct": low * 100, "ci_high_pct": high * 100,
            "p_value": 1e-4, "q_value": 2e-4, "significant": True, "cost_model": models[service].cost_model,
            "incremental_cost_usd_30d": round(extra * 30 / 28, 2), "ci_low_usd_30d": 1000.0, "ci_high_usd_30d": 9000.0,
            "trace_coverage": 0.98,
            "latency": {"p50_delta_pct": 2.9, "p50_ci_low_pct": -1.9, "p50_ci_high_pct": 8.4, "p95_delta_pct": 0.2,
                        "p95_ci_low_pct": -0.9, "p95_ci_high_pct": 1.3},
        })
    total = round(sum(s["incremental_cost_usd_30d"] for s in services), 2)
    report = {
        "as_of": AS_OF.isoformat(),
        "experiments": [
            {"experiment_id": "prefetch", "cell": "treatment", "control_cell": "control",
             "incremental_cost_usd_30d": total, "ci_low_usd_30d": 3816.0, "ci_high_usd_30d": 23829.0,
             "services": services,
             "flags": [{"kind": "cost_over_threshold", "service": None, "detail": f"projected +${total:,.0f}"},
                       {"kind": "new_dependency", "service": "profile", "detail": "treatment adds the edge search -> profile"}],
             "business_metrics": [{"metric": "streaming_hours", "delta_pct": 0.7, "ci_low_pct": 0.2, "ci_high_pct": 1.2}]},
            {"experiment_id": "a<a>", "cell": "treatment", "control_cell": "control", "incremental_cost_usd_30d": 0.0,
             "ci_low_usd_30d": -6894.0, "ci_high_usd_30d": 7238.0, "services": [], "flags": [], "business_metrics": []},
        ],
        "services": [{"service": s, "scaling": m.scaling, "cost_model": m.cost_model, "drift_detected": m.drift_detected,
                      "model_error_pct": m.model_error_pct, "kind": m.kind} for s, m in models.items()],
        "trace_completeness": {"overall": 0.93, "services": [{"service": "metadata", "coverage": 0.99}],
                               "broken_edges": [{"caller": "images", "callee": "cdn"}]},
        "data_quality": {"quarantined": {"malformed_lines": 4}, "unattributed_cost_usd": 1234.5},
    }
    plan = capacity_plan(history, pl.DataFrame({"experiment_id": ["prefetch"] * 2, "cell": ["treatment"] * 2,
                                                "service": list(deltas), "delta": [d[0] for d in deltas.values()],
                                                "ci_low": [d[1] for d in deltas.values()],
                                                "ci_high": [d[2] for d in deltas.values()], "significant": [True, True]}))
    return report, pl.concat(universes), history, models, plan


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, dict, dict]:
    report, universes, history, models, plan = _inputs()
    text = render_html(report, universes=universes, history=history, models=models, capacity=plan,
                       window="2026-03-01..2026-03-28")
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(text, encoding="utf-8")
    return path, report, models


def test_page_is_self_contained_and_ordered(page):
    path, report, models = page
    text = path.read_text()
    assert not re.search(r"""(src|href)=["']https?:""", text)  # no network
    assert "<script src" not in text and "<link" not in text
    exp = report["experiments"][0]
    headline = f"+${exp['incremental_cost_usd_30d']:,.0f}"
    # The experiment cost comes first, before any chart.
    assert text.index(headline) < text.index("data:image/png;base64,")
    assert text.count("data:image/png;base64,") == 4  # two universes + two fits
    assert "streaming_hours" in text and "new_dependency" in text
    assert "a&lt;a&gt;" in text and "a<a>" not in text.split("report-json")[0]  # escaped
    # The drifted model's change point is found and annotated.
    assert models["recs"].drift_detected and change_point(models["recs"]) is not None
    assert f"model: {models['metadata'].cost_model}" in text or models["metadata"].kind in text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(page, tmp_path):
    path, report, _ = page
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    shot = tmp_path / "report.png"
    run = subprocess.run([CHROMIUM, *flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)]
    assert not errors, errors
    assert shot.exists() and shot.stat().st_size > 50_000
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    # Blue (the counterfactual / model colour) is painted: the charts and interval marks rendered.
    blue = (pixels[..., 2] > 0.8) & (pixels[..., 0] < 0.3) & (pixels[..., 1] < 0.55)
    assert blue.sum() > 500

    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    exp = report["experiments"][0]
    assert f"+${exp['incremental_cost_usd_30d']:,.0f}" in dom.stdout
    assert "[+$3,816, +$23,829]" in dom.stdout
    assert "streaming_hours <b>+0.70%</b>" in dom.stdout
    assert dom.stdout.count("<img") == 4
