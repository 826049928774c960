"""Small landing-zone files: experiments.yaml, services.yaml, allocations, business metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population


def write_experiments_yaml(path: Path, config: WorldConfig) -> None:
    lines = ["experiments:"]
    for exp in config.experiments:
        lines += [
            f"  - id: {exp.id}",
            f'    name: "{exp.name}"',
            f"    control_cell: {exp.control_cell}",
            f"    cells: [{', '.join(exp.cell_names)}]",
        ]
        if not exp.even_weights:
            lines.append(f"    weights: [{', '.join(f'{w:g}' for w in exp.cell_weights)}]")
        if exp.kind != "ab":
            lines.append(f"    kind: {exp.kind}")
        if exp.shipped is not None:
            lines.append(f"    shipped: {{cell: {exp.shipped.cell}, date: {config.ship_date_of(exp).isoformat()}}}")
        lines += [
            f"    start: {config.start_of(exp).isoformat()}",
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
            "cell": np.array(exp.cell_names)[population.cells[members, x]],
            "allocated_at": pl.Series(population.allocated_at[members, x].astype("datetime64[ms]"))
            .dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }, schema=dict.fromkeys(("member_id", "experiment_id", "cell", "allocated_at"), pl.String)))
    return pl.concat(frames)


def business_metrics_frame(config: WorldConfig) -> pl.DataFrame:
    rows = [
        {"experiment_id": exp.id, "cell": cell.name, "metric": metric, "delta_pct": delta,
         "ci_low_pct": round(delta - half, 3), "ci_high_pct": round(delta + half, 3)}
        for exp in config.experiments for cell in exp.treatment_cells for metric, delta, half in cell.business_metrics
    ]
    schema = {"experiment_id": pl.String, "cell": pl.String, "metric": pl.String, "delta_pct": pl.Float64,
              "ci_low_pct": pl.Float64, "ci_high_pct": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
