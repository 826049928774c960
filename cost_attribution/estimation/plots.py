"""Cost-vs-volume plot of each service's history with its fitted cost model."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cost_attribution.estimation.models import FittedCostModel
from cost_attribution.plots import figure_to_base64, plt

MAX_PANELS = 12


def cost_model_plot(history: pl.DataFrame, models: list[FittedCostModel]) -> str:
    """A grid of panels (at most MAX_PANELS services, the most expensive first)."""
    spend = history.group_by("service").agg(pl.col("cost").sum()).sort("cost", descending=True)
    chosen = [m for m in sorted(models, key=lambda m: spend["service"].to_list().index(m.service)
                                if m.service in spend["service"].to_list() else 1 << 30)][:MAX_PANELS]
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, model in zip(axes.flat, chosen):
        points = history.filter(pl.col("service") == model.service)
        volume = points["requests"].to_numpy()
        ax.scatter(volume, points["cost"].to_numpy(), s=4, alpha=0.4, color="#7f7f7f", label="hourly history")
        if volume.size:
            grid = np.linspace(0, volume.max() * 1.6, 200)
            ax.plot(grid, model.predict(grid), color="#1f77b4", label=f"{model.cost_model} ({model.kind})")
            ax.axvline(volume.max(), color="#d62728", linestyle=":", linewidth=1, label="historical peak")
        ax.set_title(f"{model.service} · {model.scaling}" + (" · drift" if model.drift_detected else ""), fontsize=9)
        ax.set_xlabel("requests / hour", fontsize=8)
        ax.set_ylabel("USD / hour", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    return figure_to_base64(fig)
