"""Small landing-zone files: experiments.yaml, services.yaml, allocations, business metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cost_attribution.simulator.call_graph import TREATMENT
from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population


def write_experiments_yaml(path: Path, config: WorldConfig) -> None:
    lines = ["experiments:"]
    for exp in config.experiments:
        lines += [
            f"  - id: {exp.id}",
            f'    name: "{exp.name}"',
            "    control_cell: control",
            "    cells: [control, treatment]",
            f"    start: {config.experiment_start.isoformat()}",
            f"    owner: {exp.owner}",
        ]
    path.write_text("\n".join(lines) + "\n")


def write_services_yaml(path: Path, config: WorldConfig) -> None:
    lines = ["services:"]
    for svc in config.services:
        lines += [
            f"  - name: {svc.name}",
            f"    owner: {svc.owner}",
            f"    deprecated: {'true' if svc.deprecated else 'false'}",
            f"    tier: {svc.tier}",
        ]
    path.write_text("\n".join(lines) + "\n")


def allocations_frame(config: WorldConfig, population: Population) -> pl.DataFrame:
    frames = []
    for x, exp in enumerate(config.experiments):
        members = np.flatnonzero(population.cells[:, x] >= 0)
        frames.append(pl.DataFrame({
            "member_id": population.member_ids[members],
            "experiment_id": exp.id,
            "cell": np.where(population.cells[members, x] == TREATMENT, "treatment", "control"),
            "allocated_at": pl.Series(population.allocated_at[members, x].astype("datetime64[ms]"))
            .dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }))
    return pl.concat(frames)


def business_metrics_frame(config: WorldConfig) -> pl.DataFrame:
    rows = [
        {"experiment_id": exp.id, "cell": "treatment", "metric": metric, "delta_pct": delta,
         "ci_low_pct": round(delta - half, 3), "ci_high_pct": round(delta + half, 3)}
        for exp in config.experiments for metric, delta, half in exp.business_metrics
    ]
    schema = {"experiment_id": pl.String, "cell": pl.String, "metric": pl.String, "delta_pct": pl.Float64,
              "ci_low_pct": pl.Float64, "ci_high_pct": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
