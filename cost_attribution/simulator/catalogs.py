"""Small landing-zone files: experiments.yaml, services.yaml, allocations, business metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import yaml

from cost_attribution.simulator.config import WorldConfig
from cost_attribution.simulator.population import Population


def _write_yaml(path: Path, document: dict) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None))


def write_experiments_yaml(path: Path, config: WorldConfig) -> None:
    entries = []
    for exp in config.experiments:
        entry = {"id": exp.id, "name": exp.name, "control_cell": exp.control_cell, "cells": list(exp.cell_names)}
        if not exp.even_weights:
            entry["weights"] = [float(w) for w in exp.cell_weights]
        if exp.kind != "ab":
            entry["kind"] = exp.kind
        if exp.shipped is not None:
            entry["shipped"] = {"cell": exp.shipped.cell, "date": config.ship_date_of(exp)}
        entry |= {"start": config.start_of(exp), "owner": exp.owner}
        entries.append(entry)
    _write_yaml(path, {"experiments": entries})


def write_services_yaml(path: Path, config: WorldConfig) -> None:
    services = [{"name": s.name, "owner": s.owner, "deprecated": bool(s.deprecated), "tier": s.tier} for s in config.services]
    _write_yaml(path, {"services": services})


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
