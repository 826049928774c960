"""Small PNG plots for Dagster metadata (embedded as base64 markdown images)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: the plots are rendered into metadata, never shown
# Titles and labels carry names from the landing zone: `$HOST_$PORT` is a service name,
# not mathtext (parsing it raises and would fail the report).
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402


def figure_to_base64(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
